"""Losing nothing to a fault (beyond MOSIX, which kills the process in every case here).

* A cut link is not a death sentence: the guest waits, frozen, and goes on when home
  makes the link again through the node's mosd; calls in flight at the cut are
  neither lost nor made twice, so a program writing a counter home ends with exactly
  a native run's output.
* A link that stays cut past ``link_grace`` (mosd.conf), or a node that dies, ends
  the stay away: a process with a checkpoint is recovered from its last one, at home
  ("recovered from checkpoint N after {computer} died"), and ends as a native run
  does; one without is killed with the manual's "Lost communication with {computer}".

The cuts are real: ``ip link set eth0 down`` in the namespace of a node of an
nscluster (each node has its own network stack), longer than TCP takes to give up on
the connection (about 11 s), so the connection itself is lost, not just delayed.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import nscluster
from tests.helpers.migration import guests, migrate, row, where_is
from tests.helpers.programs import BIN, lines, wait_until

pytestmark = pytest.mark.cluster

#: how long the link stays cut: past the ~11 s in which TCP gives a cut connection up
#: (keepalive and TCP_USER_TIMEOUT), so the connection home is lost for good
CUT = 17.0

COUNTER = """\
import select, sys
n = int(sys.argv[1])
with open("count.txt", "w") as out:
    for i in range(n):
        out.write(f"{i} {i * i % 7919}\\n")
        out.flush()
        select.select([], [], [], 0.01)
print("counted", n, flush=True)
"""

#: checkpoints itself now and then while at home (its offset in count.txt is in each
#: checkpoint, so what it wrote after the last one is written again, the same)
CHECKPOINTED = """\
import ctypes, os, select, sys
libc = ctypes.CDLL(None)
n, every = int(sys.argv[1]), int(sys.argv[2])
with open("count.txt", "w") as out:
    for i in range(n):
        out.write(f"{i} {i * i % 7919}\\n")
        out.flush()
        if i % every == every - 1 and not libc.open(b"/proc/self/whereami", 0):
            libc.open(b"/proc/self/checkpoint", 1 | os.O_CREAT)
        select.select([], [], [], 0.01)
print("counted", n, flush=True)
"""


def expected_count(n: int) -> str:
    return "".join(f"{i} {i * i % 7919}\n" for i in range(n))


@functools.cache
def unavailable() -> str | None:
    return nscluster.unavailable()


@pytest.fixture
def make_cluster(tmp_path_factory):
    made = []

    def make(extra_conf: str) -> nscluster.NamespaceCluster:
        reason = unavailable()
        if reason:
            pytest.skip(f"no namespaced cluster on this machine: {reason}")
        cluster = nscluster.up(
            tmp_path_factory.mktemp("nscluster"),
            nodes=3,
            interval=0.2,
            shared=[tmp_path_factory.getbasetemp()],
            extra_conf=extra_conf,
        )
        made.append(cluster)
        cluster.converged()
        return cluster

    yield make
    for cluster in made:
        cluster.down()
        assert not cluster.leftovers()


def start(cluster, tmp_path: Path, *argv: str, out: str = "out.txt") -> subprocess.Popen:
    env = {**cluster.env(1), "LANG": "C.UTF-8", "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    env.pop("LC_ALL", None)
    with open(tmp_path / out, "wb") as stdout, open(tmp_path / "stderr.txt", "ab") as stderr:
        return cluster.spawn(
            1, ["mosrun", *argv], env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
        )


def link(cluster, k: int, state: str) -> None:
    done = cluster.exec(k, ["ip", "link", "set", "eth0", state])
    assert done.returncode == 0, done.stderr


def moved_to_2(cluster, tmp_path: Path, counted: Path, after: int) -> int:
    pid = wait_until(lambda: row(cluster), what="the process row")["pid"]
    wait_until(lambda: lines(counted) >= after, what=f"{after} lines at home")
    migrate(cluster, pid, "2")
    where_is(cluster, cluster.ip(2))
    before = lines(counted)
    wait_until(lambda: lines(counted) >= before + 50, what="progress away")
    return pid


def test_a_cut_link_freezes_the_guest_and_it_goes_on_when_the_link_is_back(make_cluster, tmp_path):
    # gossip would call the process home after 2 s of silence: here it must go on where it is
    cluster = make_cluster("dead_after = 300\n")
    (tmp_path / "counter.py").write_text(COUNTER)
    counted = tmp_path / "count.txt"
    proc = start(cluster, tmp_path, "/usr/bin/python3", "counter.py", "2500")
    moved_to_2(cluster, tmp_path, counted, after=20)
    link(cluster, 2, "down")
    time.sleep(1.0)
    frozen_at = lines(counted)
    time.sleep(CUT)
    assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()  # MOSIX: "Lost communication"
    assert lines(counted) == frozen_at  # nothing moved while the link was cut
    link(cluster, 2, "up")
    wait_until(lambda: lines(counted) >= frozen_at + 50, timeout=60, what="progress after the link came back")
    assert row(cluster)["where"] == cluster.ip(2)  # on where it was: the link was made again
    assert [g["origpid"] for g in guests(cluster, 2)] == [row(cluster)["pid"]]
    assert proc.wait(timeout=180) == 0, (tmp_path / "stderr.txt").read_text()
    assert counted.read_text() == expected_count(2500)  # no write lost, none made twice
    assert (tmp_path / "out.txt").read_text() == "counted 2500\n"
    assert (tmp_path / "stderr.txt").read_bytes() == b""  # the user saw only the pause
    wait_until(lambda: row(cluster) is None and not guests(cluster, 2), what="the guest to go")


def test_past_the_grace_period_a_process_is_recovered_from_its_checkpoint_or_killed(make_cluster, tmp_path):
    cluster = make_cluster("dead_after = 300\nlink_grace = 4\n")
    (tmp_path / "counter.py").write_text(COUNTER)
    (tmp_path / "checkpointed.py").write_text(CHECKPOINTED)
    plain_dir, saved_dir = tmp_path / "plain", tmp_path / "saved"
    plain_dir.mkdir()
    saved_dir.mkdir()
    saved = start(cluster, saved_dir, f"-C{saved_dir}/ckpt", "/usr/bin/python3", "../checkpointed.py", "2000", "100")
    wait_until(lambda: (saved_dir / "ckpt.2").exists(), timeout=60, what="two checkpoints at home")
    saved_pid = row(cluster)["pid"]
    plain = start(cluster, plain_dir, "/usr/bin/python3", "../counter.py", "100000")
    plain_pid = wait_until(
        lambda: [
            r for r in cluster.client(1).call("processes")["processes"] if not r.get("home") and r["pid"] != saved_pid
        ],
        what="the second row",
    )[0]["pid"]
    for count, pid in enumerate((saved_pid, plain_pid), start=1):  # one after the other
        migrate(cluster, pid, "2")
        wait_until(lambda: len(guests(cluster, 2)) == count, what=f"{count} on node 2")
        # a guest's row on node 2 comes when it starts arriving; home's says when it is there
        wait_until(
            lambda: any(
                r["pid"] == pid and r["where"] == cluster.ip(2)
                for r in cluster.client(1).call("processes")["processes"]
            ),
            what=f"process {pid} running on node 2",
        )
    checkpoints = sorted(p.name for p in saved_dir.iterdir() if p.name.startswith("ckpt."))
    last = max(int(name.split(".")[1]) for name in checkpoints)
    link(cluster, 2, "down")
    # TCP gives up after ~11 s, then 4 s of grace: the one is recovered, the other killed
    assert plain.wait(timeout=60) == -9
    assert (plain_dir / "stderr.txt").read_text() == f"MOSRUN: Lost communication with {cluster.ip(2)}\n"
    assert saved.wait(timeout=120) == 0, (saved_dir / "stderr.txt").read_text()
    assert (saved_dir / "stderr.txt").read_text() == (
        f"MOSRUN: recovered from checkpoint {last} after {cluster.ip(2)} died\n"
    )
    assert (saved_dir / "count.txt").read_text() == expected_count(2000)
    assert (saved_dir / "out.txt").read_text() == "counted 2000\n"


def test_a_node_that_dies_takes_no_checkpointed_process_with_it(make_cluster, tmp_path):
    cluster = make_cluster("link_grace = 3\n")
    (tmp_path / "checkpointed.py").write_text(CHECKPOINTED)
    counted = tmp_path / "count.txt"
    proc = start(cluster, tmp_path, f"-C{tmp_path}/ckpt", "/usr/bin/python3", "checkpointed.py", "2000", "100")
    wait_until(lambda: (tmp_path / "ckpt.2").exists(), timeout=60, what="two checkpoints at home")
    moved_to_2(cluster, tmp_path, counted, after=0)
    last = max(int(p.name.split(".")[1]) for p in tmp_path.iterdir() if p.name.startswith("ckpt."))
    away_at = lines(counted)
    os.kill(cluster.init(2), signal.SIGKILL)  # node 2 dies: mosd, guest host, guest, network
    assert proc.wait(timeout=120) == 0, (tmp_path / "stderr.txt").read_text()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert f"MOSRUN: recovered from checkpoint {last} after {cluster.ip(2)} died\n" in stderr
    assert "Lost communication" not in stderr
    assert away_at > 100 * last  # it had gone on past the checkpoint away
    assert counted.read_text() == expected_count(2000)
    assert (tmp_path / "out.txt").read_text() == "counted 2000\n"
