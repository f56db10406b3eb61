"""Migration between real nodes (tests/cluster/, on a LocalCluster or an nscluster): a
CPU-bound awk loop to move, a process's row in ``mosd``'s table, moving it with
mosmigrate, and the scenarios that run on both kinds of cluster."""

from __future__ import annotations

import signal
import subprocess

from tests.helpers.programs import lines, wait_until

# awk printing a line every 200,000 steps, COUNT (the %d) lines, then exit status 3
AWK = (
    "BEGIN { for (i = 0; i < %d; i++) { for (j = 0; j < 200000; j++) s += j %% 7; "
    'printf "%%d %%d\\n", i, s; fflush() } exit 3 }'
)


def row(cluster, k: int = 1) -> dict | None:
    """Node ``k``'s first process of its own (not a guest), as ``mosd`` lists it."""
    rows = [p for p in cluster.client(k).call("processes")["processes"] if not p.get("home")]
    return rows[0] if rows else None


def guests(cluster, k: int) -> list[dict]:
    """The guests node ``k`` hosts."""
    return [p for p in cluster.client(k).call("processes")["processes"] if p.get("home")]


def migrate(cluster, pid: int, where: str) -> None:
    done = cluster.run(1, "mosmigrate", str(pid), where)
    assert done.returncode == 0, done.stderr


def migrate_fails(cluster, pid: int, where: str, message: str) -> None:
    """mosmigrate waits for the move's outcome: a failure is its exit status 1 and the
    manual's message."""
    done = cluster.run(1, "mosmigrate", str(pid), where)
    assert done.returncode == 1 and done.stderr.endswith(f": {message}\n"), done.stderr


def where_is(cluster, expected: str) -> None:
    # a start or a move takes a second when idle; a busy CI machine (load 3x its CPUs) took 30 s
    wait_until(lambda: (r := row(cluster)) is not None and r["where"] == expected, 90, what=f"WHERE = {expected}")


# -- scenarios run on both kinds of cluster (test_migration.py, test_migration_namespaces.py) ---------
def awk_moves_out_on_and_home(cluster, mosrun, tmp_path) -> None:
    """The FAQ's awk loop moved 2 -> 3 -> home -> 3 -> home: the same output as natively."""
    program = AWK % 300
    out = tmp_path / "out.txt"
    proc = mosrun("awk", program, out=out)
    pid = wait_until(lambda: row(cluster), what="the process row")["pid"]
    wait_until(lambda: lines(out) >= 10, what="10 lines")
    for where, expected in (
        ("2", cluster.ip(2)),
        ("3", cluster.ip(3)),
        ("home", "here"),
        ("3", cluster.ip(3)),
        ("home", "here"),
    ):
        before = lines(out)
        migrate(cluster, pid, where)
        where_is(cluster, expected)
        if where != "home":
            assert [g["origpid"] for g in guests(cluster, int(where))] == [pid]
        wait_until(lambda: lines(out) >= before + 20, what="progress after the move")
    assert row(cluster)["nmigs"] == 5
    assert proc.wait(timeout=120) == 3
    native = subprocess.run(["awk", program], capture_output=True, env=mosrun.env, timeout=120)
    assert out.read_bytes() == native.stdout
    assert (tmp_path / "stderr.txt").read_bytes() == b""


SIGNALS = """\
import ctypes, os, select, signal, sys
libc = ctypes.CDLL(None)
signal.signal(signal.SIGUSR1, lambda *_: print("usr1 at", libc.open(b"/proc/self/whereami", 0), flush=True))
print("start", flush=True)
while True:
    select.select([], [], [], 0.01)
"""


def signals_sent_home_reach_the_process_away(cluster, mosrun, tmp_path) -> None:
    """SIGUSR1 sent to the pid at home runs the handler away; SIGTERM ends it with -15."""
    (tmp_path / "sig.py").write_text(SIGNALS)
    out = tmp_path / "out.txt"
    proc = mosrun("/usr/bin/python3", "sig.py", out=out)
    pid = wait_until(lambda: row(cluster), what="the process row")["pid"]
    wait_until(lambda: lines(out) >= 1, what="the start")
    migrate(cluster, pid, "2")
    where_is(cluster, cluster.ip(2))
    cluster.kill(1, pid, signal.SIGUSR1)  # pid: as the home node numbers it
    wait_until(lambda: b"usr1 at 2\n" in out.read_bytes(), what="the handler, away on node 2")
    cluster.kill(1, pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == -15
    wait_until(lambda: not guests(cluster, 2), what="the guest to go")
