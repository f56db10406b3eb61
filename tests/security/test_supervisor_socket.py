"""Issue 17, items 5 and 6: the supervisor's control socket (what mosmigrate talks to).

Item 5: the supervisor read a request with a blocking 2 s recv, again for as long as bytes
came, in the single loop that also serves the calls its processes forward from away: any
user trickling a byte a second into another user's supervisor stalled that user's
process. Now a client who may affect none of its processes is cut off at accept, before a
byte is read, and the others' requests are read only as their bytes arrive.

Item 6: the socket's name was ``\\0mosix/supervisor/PID``: any user could bind the names of
the next pids first, receive other users' (and root's) requests and answer them ``ok``.
Now the name has a random part nobody can bind first, and a client believes only a
listener whose credentials (``SO_PEERCRED``) are the tracer's.

Every attack is made by a real unprivileged user (``attacker``) against the supervisor of
a real ``mosrun`` started by another one (``victim``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.programs import BIN, lines
from tests.helpers.users import User, as_user, world_readable

#: one forwarded stat and one forwarded write a line, about a hundred lines a second
CALLING = """\
import os, select
n = 0
while True:
    os.stat(".")
    print(n, flush=True)
    n += 1
    select.select([], [], [], 0.01)
"""
#: connect to every listener of supervisor PID (either naming scheme), send "{" and then a
#: byte every INTERVAL s for SECONDS s; one JSON line at connection, one at the end with
#: how each connection ended: "reset"/"pipe" (closed with our bytes unread), "eof",
#: "answered" (the supervisor read our bytes and replied) or "open"
TRICKLE = r"""
import errno, json, socket, sys, time
tracer, seconds, interval = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
prefix = f"@mosix/supervisor/{tracer}"
names = []
for line in open("/proc/net/unix", "rb").read().decode(errors="replace").splitlines()[1:]:
    fields = line.split(None, 7)
    if len(fields) == 8 and (fields[7] == prefix or fields[7].startswith(prefix + "/")):
        names.append("\0" + fields[7][1:])
conns = []
for name in names:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(name)
    conns.append(s)
start = time.monotonic()
print(json.dumps({"connected": len(conns)}), flush=True)
ends = [None] * len(conns)
next_byte, first = start, True
while time.monotonic() < start + seconds and None in ends:
    for i, s in enumerate(conns):
        if ends[i] is not None:
            continue
        try:
            if time.monotonic() >= next_byte:
                s.send(b"{" if first else b" ")
            data = s.recv(4096, socket.MSG_DONTWAIT)
            how = "answered" if data else "eof"
        except BlockingIOError:
            continue
        except OSError as err:
            how = {errno.ECONNRESET: "reset", errno.EPIPE: "pipe"}.get(err.errno, errno.errorcode.get(err.errno))
        ends[i] = {"how": how, "after": round(time.monotonic() - start, 2)}
    if time.monotonic() >= next_byte:
        next_byte, first = next_byte + interval, False
    time.sleep(0.02)
print(json.dumps({"ends": [e or {"how": "open"} for e in ends]}), flush=True)
"""
#: bind both names of the next COUNT pids (the old ``\0mosix/supervisor/N`` and the
#: predictable part of the new one), answer every connection {"ok": true}; at the end
#: (stdin closed) one JSON line: the pid range, the connections and every byte received
SQUAT = r"""
import json, os, resource, selectors, socket, sys, time
count = int(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
first = int(sys.argv[2]) if len(sys.argv) > 2 else int(open("/proc/sys/kernel/ns_last_pid").read()) + 1
sel = selectors.DefaultSelector()
bound = 0
for n in range(first, first + count):
    for name in (f"\0mosix/supervisor/{n}", f"\0mosix/supervisor/{n}/0"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(name)
            s.listen(64)
        except OSError:
            s.close()
            continue
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, "listener")
        bound += 1
sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
print(json.dumps({"first": first, "last": first + count - 1, "bound": bound}), flush=True)
connections, received = 0, []
while True:
    for key, _ in sel.select():
        if key.data == "stdin":
            print(json.dumps({"connections": connections, "received": received}), flush=True)
            sys.exit(0)
        try:
            conn, _ = key.fileobj.accept()
        except BlockingIOError:
            continue
        connections += 1
        conn.settimeout(1.0)
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        if data:
            received.append(data.decode(errors="replace"))
            try:
                conn.sendall(b'{"ok": true}\n')
            except OSError:
                pass
        conn.close()
"""
#: a tracer that is no MOSIX supervisor: it traces "sleep 60" and prints its pid
TRACER = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
pid = os.fork()
if pid == 0:
    libc.ptrace(0, 0, None, None)                  # PTRACE_TRACEME
    os.execv("/bin/sleep", ["sleep", "60"])
os.waitpid(pid, 0)                                  # stopped at its exec
libc.ptrace(7, pid, None, None)                     # PTRACE_CONT
print(pid, flush=True)
os.waitpid(pid, 0)
"""


def wait_until(condition, timeout: float = 30.0, what: str = "condition", errors: Path | None = None):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            said = errors.read_text(errors="replace") if errors is not None and errors.exists() else ""
            raise AssertionError(f"timed out waiting for {what}" + (f"; its errors: {said}" if said else ""))
        time.sleep(0.02)
    return result


def tracer_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("TracerPid:"))


def rate(path: Path, seconds: float) -> float:
    before = lines(path)
    time.sleep(seconds)
    return (lines(path) - before) / seconds


def user_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """What a user's commands need besides their login environment: the C locale (see
    mosix_core.mosrun.rules), and the code under test when PYTHONPATH chooses it."""
    env = {"LANG": "C.UTF-8", **(extra or {})}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def python(user: User, script: str, *args: str, **kwargs) -> subprocess.Popen:
    return as_user(user, [sys.executable, "-c", script, *args], env=user_env(), popen=True, text=True, **kwargs)


def victim_mosrun(victim: User, env: dict[str, str], *argv: str, out: Path) -> subprocess.Popen:
    with open(out, "wb") as stdout, open(victim.home / "stderr.txt", "ab") as stderr:
        return as_user(
            victim,
            [str(BIN / "mosrun"), *argv],
            env=user_env(env),
            popen=True,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )


def mosmigrate(user: User | None, env: dict[str, str], pid: int, action: str) -> subprocess.CompletedProcess:
    argv = [str(BIN / "mosmigrate"), str(pid), action]
    if user is None:  # root
        return subprocess.run(argv, env={**os.environ, **user_env(env)}, capture_output=True, text=True, timeout=60)
    return as_user(user, argv, env=user_env(env), text=True)


def still(path: Path, seconds: float) -> bool:
    before = lines(path)
    time.sleep(seconds)
    return lines(path) == before


@pytest.fixture
def away(local_cluster, victim):
    """The victim's CALLING program, started with mosrun on node 1 of a 3-node cluster and
    moved to node 2 by the victim's own mosmigrate: (its pid, its output)."""
    cluster = local_cluster(nodes=3, interval=0.2)
    world_readable(cluster.root)
    env = {"MOSIX_ETC": str(cluster.etc(1))}
    (victim.home / "calling.py").write_text(CALLING)
    out = victim.home / "out.txt"
    proc = victim_mosrun(victim, env, "/usr/bin/python3", "calling.py", out=out)
    try:
        wait_until(lambda: lines(out) >= 20, what="the program's first lines", errors=victim.home / "stderr.txt")
        done = mosmigrate(victim, env, proc.pid, "2")
        assert done.returncode == 0, done.stderr
        wait_until(
            lambda: any(
                p["pid"] == proc.pid and p["where"] == cluster.ip(2)
                for p in cluster.client(1).call("processes")["processes"]
            ),
            what="the process on node 2",
        )
        yield (
            proc.pid,
            out,
            lambda: any(
                p["pid"] == proc.pid and p["where"] == cluster.ip(2)
                for p in cluster.client(1).call("processes")["processes"]
            ),
        )
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.cluster
@pytest.mark.parametrize("who", ["attacker", "victim"])
def test_a_trickling_client_does_not_slow_the_calls_forwarded_home(away, who, request):
    """Item 5: a client sending a byte a second to the supervisor of a process away from
    home — another user's, or even the owner's own slow one — leaves its forwarded calls
    running at their rate; another user's connection is closed before a byte of it is read."""
    pid, out, still_away = away
    client = request.getfixturevalue(who)
    baseline = rate(out, 3.0)
    assert baseline >= 5, f"the process is hardly calling ({baseline:.1f} lines/s)"
    trickler = python(client, TRICKLE, str(tracer_of(pid)), "6", "1.0", stdout=subprocess.PIPE)
    try:
        started = json.loads(trickler.stdout.readline())
        assert started["connected"] >= 1, "the supervisor's socket was not found"
        during = rate(out, 4.0)
        ends = json.loads(trickler.stdout.readline())["ends"]
    finally:
        trickler.kill()
        trickler.wait()
    assert still_away(), "the process came home: its calls were not forwarded all along"
    assert during >= 0.4 * baseline, f"{during:.1f} lines/s while trickled, {baseline:.1f} before"
    if who == "attacker":
        assert all(end["how"] in ("reset", "pipe") and end["after"] < 3 for end in ends), ends


def test_a_squatter_of_the_next_names_receives_nothing(victim, attacker):
    """Item 6: the attacker binds the names of the next pids before the victim starts
    mosrun; root's and the victim's requests still reach the real supervisor (the process
    really freezes and continues), and the squatter receives not a byte."""
    squatter = python(attacker, SQUAT, "1000", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        squatted = json.loads(squatter.stdout.readline())
        assert squatted["bound"] >= 1000, squatted
        (victim.home / "calling.py").write_text(CALLING)
        (victim.home / "freeze").mkdir(exist_ok=True)
        os.chown(victim.home / "freeze", victim.uid, victim.gid)
        env = {"MOSIX_ETC": str(victim.home / "no-etc"), "FREEZE_DIR": str(victim.home / "freeze")}
        out = victim.home / "out.txt"
        proc = victim_mosrun(victim, env, "/usr/bin/python3", "calling.py", out=out)
        try:
            wait_until(lambda: lines(out) >= 20, what="the program's first lines", errors=victim.home / "stderr.txt")
            assert squatted["first"] <= tracer_of(proc.pid) <= squatted["last"], "the squatted pids went by"
            done = mosmigrate(None, env, proc.pid, "freeze")  # root's request
            assert done.returncode == 0, done.stderr
            wait_until(
                lambda: still(out, 0.5), timeout=20, what="the process to freeze", errors=victim.home / "stderr.txt"
            )
            done = mosmigrate(victim, env, proc.pid, "continue")
            assert done.returncode == 0, done.stderr
            before = lines(out)
            wait_until(lambda: lines(out) >= before + 20, timeout=20, what="the process to continue")
            done = mosmigrate(victim, env, proc.pid, "freeze")
            assert done.returncode == 0, done.stderr
            wait_until(
                lambda: still(out, 0.5), timeout=20, what="the process to freeze", errors=victim.home / "stderr.txt"
            )
        finally:
            proc.kill()
            proc.wait()
        summary = json.loads(squatter.communicate(timeout=30)[0])
    finally:
        squatter.kill()
        squatter.wait()
    assert summary["received"] == [], summary


def test_a_fake_supervisor_is_not_believed(victim, attacker):
    """Item 6: a process traced by something that is no MOSIX supervisor, and the attacker
    listening on both of that tracer's names answering {"ok": true}: the victim's
    mosmigrate sends it nothing and fails (the old one took the answer and exited 0)."""
    tracer = python(victim, TRACER, stdout=subprocess.PIPE)
    squatter = pid = None
    try:
        pid = int(tracer.stdout.readline())
        squatter = python(attacker, SQUAT, "1", str(tracer.pid), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert json.loads(squatter.stdout.readline())["bound"] == 2
        assert tracer_of(pid) == tracer.pid
        done = mosmigrate(victim, {"MOSIX_ETC": str(victim.home / "no-etc")}, pid, "freeze")
        assert done.returncode != 0
        assert "not a MOSIX process" in done.stderr
        summary = json.loads(squatter.communicate(timeout=30)[0])
        assert summary["received"] == [], summary
    finally:
        for proc in (tracer, squatter):
            if proc is not None:
                proc.kill()
                proc.wait()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
