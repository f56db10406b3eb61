"""The automatic freezing policy of freeze.conf, run by a real mosd on real
processes under an artificial load (CPU-bound awk loops under mosrun).

A virtual node counts only its own MOSIX processes, so the load the policy sees is
the loops' CPU demand; frozen loops demand nothing. The kill-policy tests use a
1 MiB tmpfs as the only freezing directory.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mosix_core.cluster.resources import process_cpu_ticks
from tests.helpers.programs import BIN

pytestmark = pytest.mark.cluster

BURN = ["awk", "BEGIN { for (;;) x++ }"]
HOLD = """\
import random, select, sys
ballast = bytearray(random.Random(1).randbytes(1 << 20)) * int(sys.argv[1])
if len(sys.argv) > 2:
    import ctypes, os
    libc = ctypes.CDLL(None)
    print("freezable", libc.open(b"/proc/self/freezable", os.O_WRONLY | os.O_CREAT, 0), flush=True)
while True:
    sum(ballast[::4096])
    select.select([], [], [], 0.001)
"""


@pytest.fixture
def node(local_cluster, tmp_path):
    cluster = local_cluster(nodes=1, interval=0.2, cpus=2)
    cluster.freeze_dir = tmp_path / "freeze"
    cluster.freeze_dir.mkdir()
    return cluster


@pytest.fixture
def procs(node, tmp_path, spawn):
    """Start MOSIX processes on the node; all killed at teardown."""
    env = {**node.env(1), "LANG": "C.UTF-8", "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    env.pop("LC_ALL", None)
    env.pop("FREEZE_DIR", None)

    count = itertools.count()

    def start(*argv: str, options: tuple[str, ...] = ()) -> subprocess.Popen:
        with open(tmp_path / f"stderr.{next(count)}", "wb") as err:
            proc = spawn(
                "mosrun",
                *options,
                *argv,
                env=env,
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        proc.stderr_path = Path(err.name)
        return proc

    return start


def configure(node, policy: str, directory: Path | None = None) -> None:
    directory = directory or node.freeze_dir
    (node.etc(1) / "freeze.conf").write_text(f"{policy}\n{directory}\n")
    node.client(1).call("setpe")


def frz(node) -> dict[int, str]:
    return {p["pid"]: p["frozen"] for p in node.client(1).call("processes")["processes"]}


def wait_for(node, predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        state = frz(node)
        if predicate(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; FRZ: {state}")
        time.sleep(0.2)


def frozen_pids(state: dict[int, str], pids) -> set[int]:
    return {p for p in pids if state.get(p) == "A"}


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


def test_max_procs_freezes_the_excess_rotates_by_slice_and_unfreezes(node, procs):
    # units=processes, no RED mark, BLUE far up, max-procs 2, a 1-minute slice
    loops = [procs(*BURN) for _ in range(4)]
    pids = [p.pid for p in loops]
    wait_for(node, lambda s: all(pid in s for pid in pids), 30, "the loops registered")
    rows = node.client(1).call("processes")["processes"]
    newest = {r["pid"] for r in sorted(rows, key=lambda r: r["started"])[2:]}
    configure(node, "1 0 -1 100 -1 -1 0 2 1 1000000")
    state = wait_for(node, lambda s: len(frozen_pids(s, pids)) == 2, 30, "two frozen")
    first = frozen_pids(state, pids)
    assert first == newest  # the newest first
    assert all(rss_kb(pid) < 1024 for pid in first)
    status = node.run(1, "mosctl", "status")
    assert "Frozen: 2" in status.stdout, status.stdout
    listing = node.run(1, "mosps")
    assert sorted(line.split()[3] for line in listing.stdout.splitlines()[1:] if int(line.split()[0]) in pids) == [
        "-",
        "-",
        "A",
        "A",
    ], listing.stdout
    time.sleep(3)
    assert frozen_pids(frz(node), pids) == first  # stable: no flapping
    # the slice: after a minute a running loop and a frozen one change places
    state = wait_for(
        node,
        lambda s: frozen_pids(s, pids) not in (first, set()) and len(frozen_pids(s, pids)) == 2,
        100,
        "a time-slice rotation",
    )
    assert all(p.poll() is None for p in loops)
    # the running ones end: room under max-procs, so the frozen ones run again
    running = [p for p in loops if p.pid not in frozen_pids(state, pids)]
    for proc in running:
        proc.kill()
        proc.wait()
    left = [p.pid for p in loops if p not in running]
    wait_for(node, lambda s: all(s.get(pid) == "-" for pid in left), 30, "unfreezing")
    assert all(rss_kb(pid) > 0 for pid in left)


def cpu_share(pids, seconds: float = 3.0) -> float:
    """The CPUs the processes ``pids`` really get together (1.0: one whole CPU), measured
    as the daemon measures a virtual node's load: from their CPU time's growth."""

    def ticks() -> int:
        return sum(process_cpu_ticks(pid) or 0 for pid in pids)

    start, t0 = ticks(), time.monotonic()
    time.sleep(seconds)
    return (ticks() - start) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0)


def test_red_mark_freezes_until_min_keep_and_blue_mark_unfreezes(node, procs):
    # units=processes, RED and BLUE set from the CPU one loop really gets here (other
    # jobs may hold CPUs: the loops' share, and so the load the policy sees, is smaller
    # than the loops' number then), keep 2 running whatever the load
    loops = [procs(*BURN)]
    wait_for(node, lambda s: loops[0].pid in s, 30, "the first loop registered")
    one = cpu_share([loops[0].pid])
    assert one > 0.05, f"a CPU-bound loop got {one:.2f} of a CPU: the machine is too busy to test freezing"
    red, blue = one / 2, one / 8
    loops += [procs(*BURN) for _ in range(2)]
    pids = [p.pid for p in loops]
    configure(node, f"1 0 {red:.3f} {blue:.3f} -1 -1 2 -1 20 1000000")
    state = wait_for(node, lambda s: len(frozen_pids(s, pids)) == 1, 40, f"one frozen (RED {red:.3f}, BLUE {blue:.3f})")
    time.sleep(6)  # the load stays above RED: min-keep holds
    assert frozen_pids(frz(node), pids) == frozen_pids(state, pids)
    (frozen,) = frozen_pids(state, pids)
    running = [p for p in loops if p.pid != frozen]
    running[0].kill()
    running[0].wait()
    time.sleep(6)  # one loop's load: not below BLUE, stays frozen
    now = cpu_share([running[1].pid], 1.0)
    assert frz(node)[frozen] == "A", f"unfrozen with one loop running at {now:.2f} CPU (BLUE {blue:.3f})"
    running[1].kill()
    running[1].wait()
    wait_for(node, lambda s: s.get(frozen) == "-", 30, "unfreezing below BLUE")


def test_unfreezable_and_manually_frozen_processes(node, procs, tmp_path):
    script = tmp_path / "hold.py"
    script.write_text(HOLD)
    configure(node, "1 0 -1 100 -1 -1 0 0 20 1000000")  # max-procs 0: freeze all it may
    plain = procs(*BURN)
    minus_g = procs(*BURN, options=("-g",))
    asks = procs("python3", str(script), "1", "unfreezable")  # writes 0 to /proc/self/freezable
    wait_for(node, lambda s: s.get(plain.pid) == "A", 30, "the plain loop frozen")
    time.sleep(5)
    state = frz(node)
    assert state[minus_g.pid] == "-" and state[asks.pid] == "-"
    done = node.run(1, "mosmigrate", str(minus_g.pid), "freeze")  # a manual freeze is allowed
    assert done.returncode == 0, done.stderr
    wait_for(node, lambda s: s.get(minus_g.pid) == "M", 30, "the manual freeze")
    configure(node, "1 0 -1 100 -1 -1 0 -1 20 1000000")  # room for all: unfreeze
    wait_for(node, lambda s: s.get(plain.pid) == "-", 30, "the automatic one unfrozen")
    time.sleep(5)
    assert frz(node)[minus_g.pid] == "M"  # manual freezing is undone only manually
    assert "Frozen: 1" in node.run(1, "mosctl", "status").stdout
    done = node.run(1, "mosmigrate", str(minus_g.pid), "continue")
    assert done.returncode == 0, done.stderr
    wait_for(node, lambda s: s.get(minus_g.pid) == "-", 30, "the manual unfreeze")


@pytest.mark.parametrize("killing_mb", [0, 40])
def test_killing_policy_when_no_freezing_space(node, procs, tmp_path, small_tmpfs, killing_mb):
    script = tmp_path / "hold.py"
    script.write_text(HOLD)
    configure(node, f"1 0 -1 100 -1 -1 0 0 20 {killing_mb}", small_tmpfs)
    small = procs("python3", str(script), "1")
    large = procs("python3", str(script), "64")
    assert large.wait(timeout=60) == -signal.SIGKILL  # over killing-memory: killed
    assert "No space to freeze" in large.stderr_path.read_text()
    if killing_mb == 0:
        assert small.wait(timeout=60) == -signal.SIGKILL  # 0: every process that fails
        assert "No space to freeze" in small.stderr_path.read_text()
    else:
        deadline = time.monotonic() + 10
        while "No space to freeze" not in small.stderr_path.read_text():
            assert time.monotonic() < deadline, "the small process was never tried"
            time.sleep(0.2)
        time.sleep(9)  # tried again: not said again
        assert small.poll() is None and frz(node)[small.pid] == "-"  # kept alive, in memory
        assert small.stderr_path.read_text().count("No space to freeze") == 1
    assert os.listdir(small_tmpfs) == []
