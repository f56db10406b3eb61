"""Automatic migration on real mosd nodes (127.x, one virtual CPU each, gossip every second):
processes started at one node spread by themselves, favour the faster node, come home when
their system calls cost more away than the CPU they gain there, and stay where the rules
say they stay — with their outputs byte-identical to a native run."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import nscluster
from tests.helpers.programs import BIN, wait_until

pytestmark = pytest.mark.cluster

INTERVAL = 1.0
#: the FAQ's CPU loop, made to end when a file appears (each round looks for it): the output
#: does not depend on how long it ran, so it can be compared with a native run
STOPPABLE = (
    'BEGIN { while ((getline line < "%s") <= 0) { for (j = 0; j < 200000; j++) s += j %% 7; '
    'close("%s") } print "done" }'
)


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


def logged(cluster, k: int) -> list[dict]:
    """Node k's log, one record per line."""
    return [json.loads(line) for line in cluster.logs()[k].read_text().splitlines() if line.startswith("{")]


def moves(cluster) -> int:
    return sum(row["nmigs"] for row in cluster.client(1).call("processes")["processes"] if row["home"] is None)


def automatic(cluster, k: int) -> dict:
    return cluster.client(k).call("localstatus")["processes"]["automatic"]


@pytest.fixture
def start(tmp_path, spawn):
    """``start(cluster, argv, name, *options, node=1)``: ``mosrun options argv`` at node
    ``node``, its output in ``name``."""

    def run(cluster, argv: list[str], name: str, *options: str, node: int = 1) -> subprocess.Popen:
        env = {**cluster.env(node), "LANG": "C.UTF-8", "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        with open(tmp_path / name, "wb") as out, open(tmp_path / f"{name}.err", "wb") as err:
            return spawn(
                "mosrun", *options, *argv, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )

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
    time.sleep(3 * INTERVAL)  # spread, it stays spread
    assert placement(cluster, 4) == [2, 2, 2, 2]

    short.write_text("stop\n")
    for job in jobs[:4]:
        assert job.wait(timeout=60) == 0
    wait_until(lambda: placement(cluster, 4) == [1, 1, 1, 1], timeout=60, what="the 4 left to spread again")
    assert moves(cluster) - first_moves <= 4  # at most 2 are needed; some ended on the moved ones' nodes
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
        assert job.wait(timeout=60) == alone.wait(timeout=60)  # as natively: SIGTERM ends it
    done = native(awk_until(long), tmp_path)
    for name in [f"short{i}" for i in range(4)] + [f"long{i}" for i in range(2)]:
        assert (tmp_path / name).read_bytes() == done == b"done\n"
        assert (tmp_path / f"{name}.err").read_bytes() == b""
    assert spread_after < 60


def settled(cluster, nodes: int, condition, seconds: float = 3 * INTERVAL, timeout: float = 60, what: str = ""):
    """Wait until ``condition(placement)`` has held for ``seconds`` in a row."""
    since = None

    seen = []

    def steady() -> bool:
        nonlocal since
        seen[:] = [placement(cluster, nodes)]
        if not condition(seen[0]):
            since = None
            return False
        since = since or time.monotonic()
        return time.monotonic() - since >= seconds

    try:
        wait_until(steady, timeout=timeout, what=what or "the placement to settle")
    except AssertionError as err:
        raise AssertionError(f"{err} (last placement: {seen})") from None


def test_a_node_twice_as_fast_gets_about_twice_the_share(local_cluster, start, tmp_path):
    cluster = local_cluster(nodes=4, speeds=[10000, 20000, 10000, 10000], interval=INTERVAL, balancing=True)
    cluster.converged()
    stop = tmp_path / "stop"
    jobs = [start(cluster, awk_until(stop), f"job{i}") for i in range(8)]
    # capacities 1, 2, 1, 1: node 2 should run 3 or 4 of the 8, the others 1 or 2 each
    settled(
        cluster,
        4,
        lambda at: at[1] >= 3 and max(at[0], at[2], at[3]) <= 2 and sum(at) == 8,
        what="node 2 to run about twice the share of the others",
    )
    stop.write_text("stop\n")
    for i, job in enumerate(jobs):
        assert job.wait(timeout=60) == 0
        assert (tmp_path / f"job{i}").read_bytes() == b"done\n"


@pytest.mark.parametrize("hold, release", [("stay", "nostay"), ("lstay", "nolstay")])
def test_stay_and_lstay_hold_local_processes_and_their_nos_let_them_go(local_cluster, start, tmp_path, hold, release):
    cluster = local_cluster(nodes=2, interval=INTERVAL, balancing=True)
    cluster.converged()
    assert cluster.run(1, "mosctl", hold).returncode == 0
    stop = tmp_path / "stop"
    jobs = [start(cluster, awk_until(stop), f"job{i}") for i in range(4)]
    wait_until(lambda: placement(cluster, 2) == [4, 0], what="the jobs to start")
    time.sleep(8 * INTERVAL)  # unheld, 2 would have left within ~3 s
    assert placement(cluster, 2) == [4, 0] and moves(cluster) == 0
    assert cluster.run(1, "mosctl", release).returncode == 0
    settled(cluster, 2, lambda at: at == [2, 2], what=f"the jobs to spread once {hold} is lifted")
    stop.write_text("stop\n")
    assert [job.wait(timeout=60) for job in jobs] == [0] * 4


LOCKS_ITSELF = """\
import os, sys
fd = os.open("/proc/self/lock", os.O_WRONLY | os.O_CREAT, 1)
while not os.path.exists(sys.argv[1]):
    sum(range(200000))
print("done", flush=True)
"""


def test_locked_processes_never_move_by_themselves(local_cluster, start, tmp_path):
    cluster = local_cluster(nodes=2, interval=INTERVAL, balancing=True)
    cluster.converged()
    stop = tmp_path / "stop"
    locked = [
        start(cluster, awk_until(stop), "L0", "-L"),
        start(cluster, ["python3", "-c", LOCKS_ITSELF, str(stop)], "L1"),
    ]
    free = [start(cluster, awk_until(stop), f"free{i}") for i in range(4)]
    locked_pids = {job.pid for job in locked}
    # 6 jobs on 2 nodes: 3 move — never a locked one
    settled(cluster, 2, lambda at: at == [3, 3], what="the free jobs to spread")
    rows = {r["pid"]: r for r in cluster.client(1).call("processes")["processes"]}
    assert all(rows[pid]["where"] == "here" and rows[pid]["nmigs"] == 0 for pid in locked_pids)
    assert all(rows[pid]["locked"] for pid in locked_pids)
    stop.write_text("stop\n")
    for job in locked + free:
        assert job.wait(timeout=60) == 0


def test_a_blocked_node_receives_nothing(local_cluster, start, tmp_path):
    cluster = local_cluster(nodes=3, interval=INTERVAL, balancing=True)
    cluster.converged()
    assert cluster.run(2, "mosctl", "block").returncode == 0
    stop = tmp_path / "stop"
    jobs = [start(cluster, awk_until(stop), f"job{i}") for i in range(4)]
    settled(cluster, 3, lambda at: at == [2, 0, 2], what="the jobs to spread to node 3 only")
    assert not [d for d in logged(cluster, 2) if d.get("event") == "guest arrived"]
    stop.write_text("stop\n")
    assert [job.wait(timeout=60) for job in jobs] == [0] * 4


CHATTY = """\
import os, sys
with open("chat.txt", "w") as f:
    for i in range(int(sys.argv[1])):
        f.write(f"{i}\\n")
        f.flush()
print("done", flush=True)
"""


@pytest.mark.parametrize("cpujob", [False, True], ids=["comes-home", "-c-stays-away"])
def test_a_process_making_many_calls_away_comes_home_unless_it_is_a_cpu_job(local_cluster, start, tmp_path, cpujob):
    cluster = local_cluster(nodes=2, interval=INTERVAL, balancing=True)
    cluster.converged()
    options = ["-2"] + (["-c"] if cpujob else [])
    job = start(cluster, ["python3", "-c", CHATTY, "400000"], "chatty", *options)
    pid = job.pid
    wait_until(lambda: placement(cluster, 2) == [0, 1], what="the process to start on node 2")
    if cpujob:
        time.sleep(10 * INTERVAL)
        assert placement(cluster, 2) == [0, 1]
    else:
        wait_until(lambda: placement(cluster, 2) == [1, 0], timeout=30, what="the process to come home")
        decisions = [d for d in logged(cluster, 2) if d.get("event") == "automatic migration"]
        assert [(d["origpid"], d["to"], d["rule"]) for d in decisions] == [(pid, "home", "home")]
        assert "calls/s" in decisions[0]["reason"]
    assert job.wait(timeout=300) == 0
    assert (tmp_path / "chatty").read_bytes() == b"done\n"
    assert (tmp_path / "chat.txt").read_bytes() == "".join(f"{i}\n" for i in range(400000)).encode()


def test_a_node_whose_own_processes_need_it_sends_a_guest_on(local_cluster, start, tmp_path):
    cluster = local_cluster(nodes=3, interval=INTERVAL, balancing=True)
    cluster.converged()
    stop = tmp_path / "stop"
    # home (node 1) and node 2 each busy with two processes of their own that stay (-L)
    busy = [start(cluster, awk_until(stop), f"home{i}", "-L") for i in range(2)]
    busy += [start(cluster, awk_until(stop), f"two{i}", "-L", node=2) for i in range(2)]
    guest = start(cluster, awk_until(stop), "guest", "-2")
    # node 3 is idle: node 2 has home send its guest on there, not home (as loaded as node 2)
    wait_until(lambda: placement(cluster, 3)[2] == 1, timeout=60, what="the guest to move on to node 3")
    relocations = [d for d in logged(cluster, 1) if d.get("event") == "moving on at its node's request"]
    assert [(d["pid"], d["from"], d["to"]) for d in relocations] == [(guest.pid, cluster.ip(2), cluster.ip(3))]
    stop.write_text("stop\n")
    for job in busy + [guest]:
        assert job.wait(timeout=60) == 0
    assert (tmp_path / "guest").read_bytes() == b"done\n"


SIGNALLED = """\
import os, signal, sys
got = []
signal.signal(signal.SIGUSR1, lambda *_: got.append(1))
os.open("/proc/self/sigmig", os.O_WRONLY | os.O_CREAT, signal.SIGUSR1)
rounds = 0
while not os.path.exists(sys.argv[1]):
    sum(range(200000))
    rounds += 1
    if rounds == int(sys.argv[2]):
        os.open("/proc/self/migrate", os.O_WRONLY | os.O_CREAT, -1)     # decide now
print("migrated", len(got), flush=True)
"""


def test_minus_one_asks_for_a_decision_now_and_sigmig_follows_the_move(local_cluster, start, tmp_path):
    # no periodic decisions: only the program that writes -1 can move
    cluster = local_cluster(nodes=2, interval=INTERVAL)
    cluster.converged()
    stop = tmp_path / "stop"
    stays = start(cluster, ["python3", "-c", SIGNALLED, str(stop), "0"], "stays")
    # it asks at once, before mosd has measured it: the decision waits for the measurement
    asks = start(cluster, ["python3", "-c", SIGNALLED, str(stop), "1"], "asks")
    wait_until(lambda: placement(cluster, 2) == [1, 1], timeout=60, what="the process that asked to move")
    rows = {r["pid"]: r for r in cluster.client(1).call("processes")["processes"]}
    assert rows[asks.pid]["where"] == cluster.ip(2) and rows[stays.pid]["where"] == "here"
    assert automatic(cluster, 1)["out"] == 1 and not automatic(cluster, 1)["on"]
    stop.write_text("stop\n")
    assert asks.wait(timeout=60) == 0 and stays.wait(timeout=60) == 0
    assert (tmp_path / "asks").read_bytes() == b"migrated 1\n"
    assert (tmp_path / "stays").read_bytes() == b"migrated 0\n"


def set_memory(cluster, k: int, megabytes: int) -> None:
    """Node k gets ``megabytes`` of virtual memory (its mosd restarted)."""
    conf = cluster.etc(k) / "mosd.conf"
    conf.write_text(
        "".join(
            f"virtual_memory_mb = {megabytes}\n" if line.startswith("virtual_memory_mb") else line
            for line in conf.read_text().splitlines(keepends=True)
        )
    )
    cluster.stop(k)
    cluster.start(k)


def test_a_node_out_of_memory_pushes_a_process_to_a_node_with_what_it_needs(local_cluster, start, tmp_path):
    cluster = local_cluster(nodes=4, interval=INTERVAL, balancing=True, memory_mb=900)
    for k, megabytes in ((2, 300), (3, 300), (4, 2000)):
        set_memory(cluster, k, megabytes)
    cluster.converged()
    # alone on node 1, so the load never moves it: 700 MB of its 900 leave less than the
    # floor free; only node 4 has the 600 MB it says it needs (-m600)
    job = start(cluster, ["mostestload", "-t", "0", "-m", "700"], "big", "-m600")
    wait_until(lambda: placement(cluster, 4) == [0, 0, 0, 1], timeout=90, what="the process to go to node 4")
    decisions = [d for d in logged(cluster, 1) if d.get("event") == "automatic migration"]
    # (a move that fails is decided again later: always to node 4)
    assert decisions and {(d["to"], d["rule"]) for d in decisions} == {(cluster.ip(4), "memory")}
    job.send_signal(signal.SIGTERM)
    job.wait(timeout=60)


def test_the_spread_with_each_node_in_namespaces_of_its_own(tmp_path_factory, tmp_path):
    reason = nscluster.unavailable()
    if reason:
        pytest.skip(f"no namespaced cluster on this machine: {reason}")
    cluster = nscluster.up(
        tmp_path_factory.mktemp("nscluster"),
        nodes=4,
        interval=INTERVAL,
        balancing=True,
        shared=[tmp_path_factory.getbasetemp()],
    )
    try:
        cluster.converged()
        env = {**cluster.env(1), "LANG": "C.UTF-8", "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        stop = tmp_path / "stop"
        jobs = []
        for i in range(8):
            with open(tmp_path / f"job{i}", "wb") as out:
                jobs.append(
                    cluster.spawn(
                        1,
                        ["mosrun", *awk_until(stop)],
                        env=env,
                        cwd=tmp_path,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.DEVNULL,
                    )
                )
        settled(cluster, 4, lambda at: at == [2, 2, 2, 2], what="8 jobs to spread 2 per node")
        stop.write_text("stop\n")
        assert [job.wait(timeout=60) for job in jobs] == [0] * 8
        assert all((tmp_path / f"job{i}").read_bytes() == b"done\n" for i in range(8))
    finally:
        cluster.down()
    assert not cluster.leftovers()


def test_a_new_map_brings_home_what_it_no_longer_allows(local_cluster, start, tmp_path):
    # with automatic migration off: this is the configuration, not the balancer's policy
    cluster = local_cluster(nodes=3, interval=INTERVAL)
    cluster.converged()
    stop = tmp_path / "stop"
    job = start(cluster, awk_until(stop), "away", "-3")
    wait_until(lambda: placement(cluster, 3) == [0, 0, 1], timeout=60, what="the job to start on node 3")
    smaller = cluster.root / "two.map"
    smaller.write_text(f"{cluster.ip(1)} 2 p\n")
    assert cluster.run(1, "mossetpe", "-m", str(smaller)).returncode == 0
    wait_until(lambda: placement(cluster, 3) == [1, 0, 0], timeout=60, what="the job to come home")
    stop.write_text("stop\n")
    assert job.wait(timeout=60) == 0
    assert (tmp_path / "away").read_bytes() == b"done\n"
