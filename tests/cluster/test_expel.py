"""Getting rid of guests and calling our own processes back, between real mosd nodes
on 127.0.0.x: ``mosctl expel`` (every guest here goes home, and it returns when they
have), ``mosctl bring`` (every process of this home node comes back, and it returns
when they have), ``mosmigrate {pid} out`` (one guest, as this node lists it; the
Super-User only). The processes keep running at home and their output is byte for
byte that of a native run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from mosix_core.cluster.proctable import ProcessRecord, ProcessTable
from mosix_core.daemon import control_moves as control
from mosix_core.linux import procfs
from tests.helpers.migration import AWK, guests
from tests.helpers.programs import lines, wait_until

pytestmark = pytest.mark.cluster

# 128 MiB of data in the process: a move takes long enough for "returns only once
# they have moved" to be seen
BIG = 'big = "x"; for (k = 0; k < 27; k++) big = big big; '
NOBODY = 65534
# An ordinary user calling what a tool's command calls, or the daemon directly
# ("mosd:OP" and JSON arguments). Everything is imported before the uid changes (the interpreter's library
# may be readable by root only, in /root); pytest's tree is 0700, so the node's etc
# directory is reached relative to the working directory.
AS_NOBODY = """\
import json, os, sys
from pathlib import Path
from mosix_core.cli import mosctl, mosmigrate
from mosix_core.daemon.client import Client
os.chdir(sys.argv[1])
os.setgroups([])
os.setresgid({nobody}, {nobody}, {nobody})
os.setresuid({nobody}, {nobody}, {nobody})
what, args, etc = sys.argv[2], sys.argv[3:], Path(".")
try:
    if what == "mosmigrate":
        mosmigrate.mosmigrate(args[0], args[1], etc)
    elif what in ("expel", "bring"):
        getattr(mosctl, what)(etc, 10.0)
    else:                                   # "mosd:OP": the daemon's own check
        Client(etc).call(what.removeprefix("mosd:"), **json.loads(args[0]))
except Exception as err:
    print(f"{{type(err).__name__}}: {{err}}", file=sys.stderr)
    sys.exit(1)
"""


def local_rows(cluster, k: int = 1) -> list[dict]:
    return [p for p in cluster.client(k).call("processes")["processes"] if not p.get("home")]


def where(cluster, pid: int) -> str | None:
    return next((r["where"] for r in local_rows(cluster) if r["pid"] == pid), None)


def tool(cluster, k: int, name: str, *args: str) -> subprocess.CompletedProcess:
    return cluster.run(k, name, *args, timeout=120)


FOREVER = 10**7
FULL = 1000  # lines (about 9 s natively): enough for every move to happen before the end


def awk(count: int, big: bool) -> str:
    return (AWK.replace("BEGIN { ", "BEGIN { " + BIG, 1) if big else AWK) % count


def start_away(cluster, mosrun, tmp_path, node: int, count: int = FULL, name: str = "out", big: bool = False) -> tuple:
    """An awk loop started at home (node 1), moved to ``node`` while it prints."""
    out = tmp_path / f"{name}.txt"
    proc = mosrun("awk", awk(count, big), out=out)
    proc.big = big
    pid = wait_until(lambda: proc.pid if where(cluster, proc.pid) == "here" else None, what="the process row")
    wait_until(lambda: lines(out) >= 5, what="5 lines")
    moved = tool(cluster, 1, "mosmigrate", str(pid), str(node))
    assert moved.returncode == 0, moved.stderr
    wait_until(lambda: where(cluster, pid) == cluster.ip(node), 60, what=f"the process on node {node}")
    before = lines(out)
    wait_until(lambda: lines(out) >= before + 10, what=f"progress on node {node}")
    return proc, pid, out


def finishes_as_native(proc, out: Path, count: int, mosrun, tmp_path) -> None:
    assert proc.wait(timeout=180) == 3
    native = subprocess.run(["awk", awk(count, proc.big)], capture_output=True, env=mosrun.env, timeout=180)
    assert out.read_bytes() == native.stdout
    assert (tmp_path / "stderr.txt").read_bytes() == b""


def stops_as_native(proc, out: Path, mosrun) -> None:
    """A FOREVER loop, killed: what it printed is what a native run prints."""
    proc.terminate()
    assert proc.wait(timeout=60) == -15
    printed = out.read_bytes()
    native = subprocess.run(
        ["awk", awk(printed.count(b"\n"), proc.big)], capture_output=True, env=mosrun.env, timeout=180
    )
    assert printed == native.stdout


def as_nobody(cluster, k: int, what: str, *args: str) -> subprocess.CompletedProcess:
    """As user nobody on node ``k``: ``mosmigrate PID ACTION``, ``expel``, ``bring``, or
    ``mosd:OP`` with its JSON arguments."""
    return subprocess.run(
        [sys.executable, "-c", AS_NOBODY.format(nobody=NOBODY), str(cluster.etc(k)), what, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LANG": "C.UTF-8"},
    )


LATE_LISTENER = """\
import signal, sys, time
sys.stdin.readline()
signal.signal(signal.SIGURG, lambda *_: sys.exit(7))
print("listening", flush=True)
time.sleep(30)
"""


def test_a_host_not_listening_yet_survives_the_signal_and_gets_it_again(spawn):
    """A guest host still receiving its guest has no handler: the signal is ignored
    (not fatal) and mosd sends it again; once one was heard, no more (out)."""
    listener = spawn(sys.executable, "-c", LATE_LISTENER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    record = ProcessRecord(pid=listener.pid, uid=0, command="host", home=IPv4Address("127.0.0.9"), origpid=1)
    table = ProcessTable()
    table.add(record)
    sender = control.HomeSender(table, [record], insist=False)
    try:
        sender.nudge()
        assert not sender.done()
        time.sleep(0.2)
        assert listener.poll() is None
        listener.stdin.write("go\n")
        listener.stdin.flush()
        assert listener.stdout.readline() == "listening\n"
        sender.nudge()
        assert listener.wait(timeout=10) == 7
        assert sender.done()
    finally:
        sender.close()


def test_expel_sends_the_guest_home_and_it_runs_on_there(cluster, mosrun, tmp_path):
    proc, pid, out = start_away(cluster, mosrun, tmp_path, 2, big=True)
    assert len(guests(cluster, 2)) == 1
    expelled = tool(cluster, 2, "mosctl", "expel", "--timeout", "60")
    assert expelled.returncode == 0, expelled.stderr
    assert guests(cluster, 2) == []  # it returned once the guest had gone
    wait_until(lambda: where(cluster, pid) == "here", what="the process back home")
    before = lines(out)
    wait_until(lambda: lines(out) >= before + 10, what="progress at home")
    assert next(r for r in local_rows(cluster) if r["pid"] == pid)["nmigs"] == 2
    finishes_as_native(proc, out, FULL, mosrun, tmp_path)


def test_expel_with_no_guests_returns_at_once_and_touches_no_other_node(cluster, mosrun, tmp_path):
    proc, pid, out = start_away(cluster, mosrun, tmp_path, 3, count=FOREVER)
    started = time.monotonic()
    expelled = tool(cluster, 2, "mosctl", "expel", "--timeout", "60")
    assert expelled.returncode == 0, expelled.stderr
    assert time.monotonic() - started < 10  # a tool's start-up, no waiting
    time.sleep(1.5)
    assert len(guests(cluster, 3)) == 1  # node 3's guest was none of node 2's business
    assert where(cluster, pid) == cluster.ip(3)
    stops_as_native(proc, out, mosrun)


def test_bring_calls_every_process_home(cluster, mosrun, tmp_path):
    first, pid1, out1 = start_away(cluster, mosrun, tmp_path, 2, count=FOREVER, name="first", big=True)
    second, pid2, out2 = start_away(cluster, mosrun, tmp_path, 3, count=FOREVER, name="second", big=True)
    brought = tool(cluster, 1, "mosctl", "bring", "--timeout", "60")
    assert brought.returncode == 0, brought.stderr
    assert where(cluster, pid1) == where(cluster, pid2) == "here"  # it returned once both were back
    wait_until(lambda: not guests(cluster, 2) and not guests(cluster, 3), what="the guest hosts to end")
    for _proc, out in ((first, out1), (second, out2)):
        before = lines(out)
        wait_until(lambda: lines(out) >= before + 5, what="progress at home")
    stops_as_native(first, out1, mosrun)
    stops_as_native(second, out2, mosrun)
    assert (tmp_path / "stderr.txt").read_bytes() == b""


def test_bring_with_nothing_away_returns_at_once(cluster):
    started = time.monotonic()
    brought = tool(cluster, 1, "mosctl", "bring", "--timeout", "60")
    assert brought.returncode == 0, brought.stderr
    assert time.monotonic() - started < 10


def guest_process(host_pid: int) -> int:
    """The guest process itself: the one its guest host traces."""
    guest = procfs.traced_child(host_pid)
    if guest is None:
        raise AssertionError(f"no process traced by guest host {host_pid}")
    return guest


@pytest.mark.parametrize("which", ["as mosps -V lists it", "the guest process itself"])
def test_mosmigrate_out_by_root_sends_the_guest_home(cluster, mosrun, tmp_path, which):
    proc, pid, out = start_away(cluster, mosrun, tmp_path, 2)
    listed = guests(cluster, 2)[0]
    assert listed["origpid"] == pid
    guest = listed["pid"] if which == "as mosps -V lists it" else guest_process(listed["pid"])
    sent = tool(cluster, 2, "mosmigrate", str(guest), "out")
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: where(cluster, pid) == "here", what="the process back home")
    wait_until(lambda: not guests(cluster, 2), what="the guest to go")
    finishes_as_native(proc, out, FULL, mosrun, tmp_path)


def test_mosmigrate_out_names_a_guest(cluster, mosrun, tmp_path):
    proc, pid, out = start_away(cluster, mosrun, tmp_path, 2, count=FOREVER)
    at_home = tool(cluster, 1, "mosmigrate", str(pid), "out")  # its home is node 1, not a guest there
    assert at_home.returncode == 1
    assert "not a guest process" in at_home.stderr
    assert where(cluster, pid) == cluster.ip(2)
    stops_as_native(proc, out, mosrun)


@pytest.fixture
def nobody_can_run_tools(cluster):
    if os.geteuid() != 0:
        pytest.skip("needs root, to act as both root and an ordinary user")
    probe = as_nobody(cluster, 1, "mosd:ping", "{}")
    if probe.returncode != 0:
        pytest.skip(f"an ordinary user cannot reach mosd here: {probe.stderr.strip()[-300:]}")


def test_an_ordinary_user_may_not_send_guests_away(cluster, mosrun, tmp_path, nobody_can_run_tools):
    proc, pid, out = start_away(cluster, mosrun, tmp_path, 2, count=FOREVER)
    guest = guests(cluster, 2)[0]["pid"]
    refused = [
        as_nobody(cluster, 2, "mosmigrate", str(guest), "out"),  # the tool's own check
        as_nobody(cluster, 2, "mosd:out", f'{{"pid": {guest}}}'),  # the daemon's
        as_nobody(cluster, 2, "expel"),
        as_nobody(cluster, 2, "mosd:expel", "{}"),
        as_nobody(cluster, 1, "bring"),
        as_nobody(cluster, 1, "mosd:bring", "{}"),
    ]
    for done in refused:
        assert done.returncode == 1
        assert "Permission denied: only the Super-User may do this" in done.stderr, done.stderr
    time.sleep(1.5)
    assert [g["pid"] for g in guests(cluster, 2)] == [guest]
    assert where(cluster, pid) == cluster.ip(2)
    # mosmigrate's rule for the other actions: "if you can kill it, you may migrate it"
    for action in ("home", "3", "freeze"):
        done = as_nobody(cluster, 1, "mosmigrate", str(pid), action)
        assert done.returncode == 1
        assert f"{pid}: Operation not permitted" in done.stderr, done.stderr
    time.sleep(1.0)
    assert where(cluster, pid) == cluster.ip(2)
    done = tool(cluster, 1, "mosmigrate", str(pid), "home")  # root may
    assert done.returncode == 0, done.stderr
    wait_until(lambda: where(cluster, pid) == "here", what="the process back home")
    before = lines(out)
    wait_until(lambda: lines(out) >= before + 5, what="progress at home")
    stops_as_native(proc, out, mosrun)
