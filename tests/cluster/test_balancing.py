"""Automatic migration on real mosd nodes (127.x, one virtual CPU each, gossip every second):
processes started at one node spread by themselves, favour the faster node, come home when
their system calls cost more away than the CPU they gain there, and stay where the rules
say they stay — with their outputs byte-identical to a native run."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.programs import BIN, wait_until

pytestmark = pytest.mark.cluster

INTERVAL = 1.0
#: the FAQ's CPU loop, made to end when a file appears (each round looks for it): the output
#: does not depend on how long it ran, so it can be compared with a native run
STOPPABLE = ('BEGIN { while ((getline line < "%s") <= 0) { for (j = 0; j < 200000; j++) s += j %% 7; '
             'close("%s") } print "done" }')


def awk_until(stop: Path) -> list[str]:
    return ["awk", STOPPABLE % (stop, stop)]


def placement(cluster, nodes: int) -> list[int]:
    """How many of node 1's processes run on each node (index 0: node 1)."""
    numbers = {cluster.ip(k): k for k in range(1, nodes + 1)}
    counts = collections.Counter()
    for row in cluster.client(1).call("processes")["processes"]:
        if row["home"] is None:
            counts[1 if row["where"] in ("here", "leaving", "starting") else numbers.get(row["where"], 0)] += 1
    return [counts[k] for k in range(1, nodes + 1)]


def moves(cluster) -> int:
    return sum(row["nmigs"] for row in cluster.client(1).call("processes")["processes"] if row["home"] is None)


def automatic(cluster, k: int) -> dict:
    return cluster.client(k).call("localstatus")["processes"]["automatic"]


@pytest.fixture
def start(tmp_path, spawn):
    """``start(cluster, argv, name)``: ``mosrun argv`` at node 1, its output in ``name``."""
    def run(cluster, argv: list[str], name: str, *options: str) -> subprocess.Popen:
        env = {**cluster.env(1), "LANG": "C.UTF-8", "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        with open(tmp_path / name, "wb") as out, open(tmp_path / f"{name}.err", "wb") as err:
            return spawn("mosrun", *options, *argv, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                         stdout=out, stderr=err)
    return run


def native(argv: list[str], cwd: Path) -> bytes:
    return subprocess.run(argv, capture_output=True, cwd=cwd, timeout=60, check=True).stdout


def test_cpu_jobs_started_at_one_node_spread_and_spread_again_when_half_end(local_cluster, start, tmp_path):
    cluster = local_cluster(nodes=4, interval=INTERVAL, balancing=True)
    cluster.converged()
    short, long = tmp_path / "short.stop", tmp_path / "long.stop"
    jobs = [start(cluster, awk_until(short), f"short{i}") for i in range(4)]
    jobs += [start(cluster, awk_until(long), f"long{i}") for i in range(2)]
    jobs += [start(cluster, ["mostestload", "-t", "0"], f"load{i}") for i in range(2)]
    began = time.monotonic()
    wait_until(lambda: placement(cluster, 4) == [2, 2, 2, 2], timeout=60, what="8 jobs to spread 2 per node")
    spread_after = time.monotonic() - began
    first_moves = moves(cluster)
    assert first_moves <= 8, f"{first_moves} moves to spread 8 jobs from one node over 4 (6 are needed)"
    time.sleep(3 * INTERVAL)                     # spread, it stays spread
    assert placement(cluster, 4) == [2, 2, 2, 2]

    short.write_text("stop\n")
    for job in jobs[:4]:
        assert job.wait(timeout=60) == 0
    wait_until(lambda: placement(cluster, 4) == [1, 1, 1, 1], timeout=60, what="the 4 left to spread again")
    assert moves(cluster) - first_moves <= 4     # at most 2 are needed; some ended on the moved ones' nodes
    counted = automatic(cluster, 1)["out"] + sum(automatic(cluster, k)["out"] for k in (2, 3, 4))
    assert counted >= 6 and automatic(cluster, 1)["on"]

    long.write_text("stop\n")
    for job in jobs[4:6]:
        assert job.wait(timeout=60) == 0
    alone = subprocess.Popen(["mostestload", "-t", "0"], env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    time.sleep(1)
    alone.send_signal(signal.SIGTERM)
    for job in jobs[6:]:
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=60) == alone.wait(timeout=60)       # as natively: SIGTERM ends it
    done = native(awk_until(long), tmp_path)
    for name in [f"short{i}" for i in range(4)] + [f"long{i}" for i in range(2)]:
        assert (tmp_path / name).read_bytes() == done == b"done\n"
        assert (tmp_path / f"{name}.err").read_bytes() == b""
    assert spread_after < 60
