"""The process table through the control socket (mosrun's Session), and the tools
reading it — mosps, moskillall, mostimeof — with real daemons and real processes."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
from typer.testing import CliRunner

from mosix_core.cli import moskillall
from mosix_core.cli import mosps as mosps_cli
from mosix_core.daemon.client import Session
from mosix_core.errors import DaemonUnavailable, MosixError

pytestmark = pytest.mark.cluster

NOBODY = 65534


@pytest.fixture
def node(local_cluster):
    cluster = local_cluster(nodes=1, interval=0.2)
    # As /etc/mosix and its var: users reach the socket (see as_nobody for the parents).
    for directory in (cluster.etc(1), cluster.etc(1) / "var"):
        os.chmod(directory, os.stat(directory).st_mode | 0o711)
    return cluster


def rows(cluster) -> dict[int, dict]:
    return {p["pid"]: p for p in cluster.client(1).call("processes")["processes"]}


def table(text: str) -> list[dict[str, str]]:
    """A ps-style listing as dicts (the last column may hold spaces)."""
    lines = text.splitlines()
    headers = lines[0].split()
    return [dict(zip(headers, line.split(None, len(headers) - 1))) for line in lines[1:]]


def as_nobody(fn: Callable[[], object], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``fn`` in a forked child as user nobody, in ``cwd`` (no exec: the
    interpreter lives under /root, which nobody may not enter); its exit status and
    output. The child starts in ``cwd`` so relative paths need no search permission
    on its parents: a concurrent pytest may make /tmp/pytest-of-root 0700 again."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 0
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout, sys.stderr = os.fdopen(1, "w", closefd=False), os.fdopen(2, "w", closefd=False)
                os.chdir(cwd)
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                fn()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 99
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess([], os.waitstatus_to_exitcode(status), out.read(), err.read())


def nobody_calls(fn: Callable[[], object], cwd: Path) -> object:
    """``fn()``'s JSON-able result, called as nobody in ``cwd``."""
    result = as_nobody(lambda: print(json.dumps(fn())), cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def stat_state(pid: int) -> str:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2]


# -- the protocol ---------------------------------------------------------------------------------------
def test_session_noreply_register_update_and_row_lifetimes(node, spawn):
    etc = node.etc(1)
    a, b, c = spawn(), spawn(), spawn()
    session = Session(etc).open()
    # no-reply requests write nothing back: the next line read is the ping's own reply
    assert session.send("register", pid=a.pid, where="starting", options="-b -m500")
    assert session.send("update", pid=a.pid, where="127.1.2.3", nmigs=1)
    assert session.send("update", pid=a.pid, frozen="bogus")  # refused, silently
    assert session.send("frobnicate")  # unknown op, silently
    assert session.request("ping")["pid"] == node.client(1).call("ping")["pid"]
    row = rows(node)[a.pid]
    assert (row["where"], row["nmigs"], row["frozen"], row["options"]) == ("127.1.2.3", 1, "-", "-b -m500")
    assert row["command"] == "sleep 30" and row["uid"] == 0
    with pytest.raises(MosixError, match="frozen must be"):
        session.request("update", pid=a.pid, frozen="bogus")
    session.request("update", pid=a.pid, frozen="M", queue="3/1/0", remote_utime=2)
    assert {k: rows(node)[a.pid][k] for k in ("frozen", "queue", "remote_utime")} == {
        "frozen": "M",
        "queue": "3/1/0",
        "remote_utime": 2.0,
    }

    # re-registering: one row, one pidfd — the daemon's descriptors do not pile up
    mosd = node.client(1).call("ping")["pid"]
    fds = len(os.listdir(f"/proc/{mosd}/fd"))
    for _ in range(30):
        session.send("register", pid=b.pid, command="mosrun -e busy")
    session.request("ping")
    assert len(os.listdir(f"/proc/{mosd}/fd")) <= fds + 1
    assert rows(node)[b.pid]["command"] == "mosrun -e busy"

    # unregister is idempotent
    assert session.request("unregister", pid=b.pid)["removed"] is True
    assert session.request("unregister", pid=b.pid)["removed"] is False
    assert b.pid not in rows(node)

    # a row registered anew over another connection survives the first one's end
    other = Session(etc).open()
    session.send("register", pid=c.pid)
    other.request("register", pid=c.pid, where="leaving")
    # the process's exit removes its row
    session.request("register", pid=b.pid)
    b.kill()
    b.wait()
    node.wait_until(lambda: b.pid not in rows(node), what="the exited process's row to go")
    # the supervisor's connection closing removes the rows registered over it
    session.close()
    node.wait_until(lambda: a.pid not in rows(node), what="the closed session's rows to go")
    assert rows(node)[c.pid]["where"] == "leaving"
    other.close()
    node.wait_until(lambda: not rows(node), what="the other session's row to go")
    assert a.poll() is None and c.poll() is None  # only rows went, not processes

    # rows registered by one-shot calls (not a supervisor's connection) stay
    node.client(1).call("register", pid=a.pid)
    time.sleep(0.2)
    assert a.pid in rows(node)


def test_session_without_mosd_and_after_mosd_dies(node, spawn, tmp_path):
    lonely = Session(tmp_path)
    with pytest.raises(DaemonUnavailable):
        lonely.open()
    assert not lonely.try_open() and lonely.send("register", pid=1) is False
    session = Session(node.etc(1)).open()
    proc = spawn()
    assert session.send("register", pid=proc.pid)
    session.request("ping")
    node.stop(1)
    # the broken connection makes the session inert: no exception reaches the caller
    results = [session.send("update", pid=proc.pid, nmigs=k) for k in range(50)]
    assert results[-1] is False and not session.connected and session.broken
    with pytest.raises(DaemonUnavailable):
        session.request("ping")
    assert proc.poll() is None


def test_a_user_may_change_only_their_own_rows(node, spawn):
    etc = node.etc(1)
    mine = spawn()  # root's
    theirs = spawn("sleep", "30", user=NOBODY, group=NOBODY, extra_groups=[])
    node.client(1).call("register", pid=mine.pid)

    def attempts() -> None:
        session = Session(Path(".")).open()
        out = {}
        for name, op, args in [
            ("update_root", "update", {"pid": mine.pid, "frozen": "M"}),
            ("unregister_root", "unregister", {"pid": mine.pid}),
            ("register_root", "register", {"pid": mine.pid}),
            ("register_own", "register", {"pid": theirs.pid, "nmigs": 2}),
            ("update_own", "update", {"pid": theirs.pid, "frozen": "P"}),
            ("fake_guest", "register", {"pid": theirs.pid, "home": "10.1.1.1", "origpid": 7}),
        ]:
            try:
                out[name] = session.request(op, **args)
            except MosixError as err:
                out[name] = str(err)
        print(json.dumps(out))

    result = as_nobody(attempts, etc)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    for name in ("update_root", "unregister_root", "register_root"):
        assert "not yours" in out[name], out
    assert out["register_own"] == {"pid": theirs.pid}
    assert out["update_own"]["changed"] == ["frozen"]
    assert "only the Super-User" in out["fake_guest"]
    assert rows(node)[mine.pid]["frozen"] == "-"
    # nobody's session ended: its row went with it; root's stays
    assert set(rows(node)) == {mine.pid}


# -- mosps ------------------------------------------------------------------------------------------
@pytest.fixture
def populated(node, spawn):
    """Four root processes: one at home, one away (frozen, migrated), a queue
    driver and a guest; node numbers 1-4 in userview.map."""
    base = node.ip(1)
    prefix = base.rsplit(".", 1)[0]
    (node.etc(1) / "userview.map").write_text(f"1 {base} 4\n")
    home, away, queue, guest = (spawn() for _ in range(4))
    session = Session(node.etc(1)).open()
    session.send("register", pid=home.pid)
    session.send("register", pid=away.pid, where=f"{prefix}.3", frozen="M", nmigs=3)
    session.send("register", pid=queue.pid, queue="5/2/1", options="-S2")
    session.send("register", pid=guest.pid, home="127.0.0.1", origpid=4242)
    session.request("ping")
    yield {"home": home.pid, "away": away.pid, "queue": queue.pid, "guest": guest.pid, "prefix": prefix}
    session.close()


def mosps(node, *args: str) -> list[dict[str, str]]:
    """mosps's listing: its command line in-process (as the entry point parses it,
    ps for real), to keep the many cases quick; a few tests below run the tool."""
    result = CliRunner().invoke(mosps_cli.app, mosps_cli.rewrite([*args, "--etc", str(node.etc(1))]))
    assert result.exit_code == 0, (result.output, result.exception)
    return table(result.stdout)


def test_mosps_columns_filters_and_node_names(node, populated):
    p = populated
    out = node.run(1, "mosps")  # the real tool, once
    assert out.returncode == 0, out.stderr
    listed = {int(r["PID"]): r for r in table(out.stdout)}
    assert set(listed) == {p["home"], p["away"], p["queue"], p["guest"]}
    assert list(listed[p["home"]]) == ["PID", "WHERE", "FROM", "FRZ", "TTY", "CMD"]
    assert (listed[p["home"]]["WHERE"], listed[p["home"]]["FROM"], listed[p["home"]]["FRZ"]) == ("here", "here", "-")
    assert (listed[p["away"]]["WHERE"], listed[p["away"]]["FRZ"]) == ("3", "M")  # a userview number
    assert (listed[p["guest"]]["WHERE"], listed[p["guest"]]["FROM"], listed[p["guest"]]["FRZ"]) == (
        "here",
        "127.0.0.1",
        "N/A",
    )  # not in userview.map

    assert {int(r["PID"]) for r in mosps(node, "-L")} == {p["home"], p["away"], p["queue"]}
    assert [int(r["PID"]) for r in mosps(node, "-O")] == [p["away"]]
    guests = mosps(node, "-V")
    assert [(int(r["PID"]), r["ORIGPID"], r["FROM"]) for r in guests] == [(p["guest"], "4242", "127.0.0.1")]
    assert "WHERE" not in guests[0] and "FRZ" not in guests[0]
    queues = mosps(node, "-S")
    assert [(int(r["PID"]), r["TOTAL"], r["DONE"], r["FAIL"]) for r in queues] == [(p["queue"], "5", "2", "1")]

    extra = {int(r["PID"]): r for r in mosps(node, "-n", "-P")}
    assert list(extra[p["away"]])[:6] == ["PID", "ORIGPID", "WHERE", "FROM", "FRZ", "NMIGS"]
    assert (extra[p["away"]]["NMIGS"], extra[p["away"]]["ORIGPID"]) == ("3", "N/A")
    assert (extra[p["guest"]]["NMIGS"], extra[p["guest"]]["ORIGPID"]) == ("N/A", "4242")

    assert {r["WHERE"] for r in mosps(node, "-O", "-I")} == {f"{p['prefix']}.3"}
    assert {r["FROM"] for r in mosps(node, "-V", "-h")} == {"localhost"}
    assert {r["FROM"] for r in mosps(node, "-V", "-M")} == {"localhost"}

    as_json = json.loads(node.run(1, "mosps", "--json", "-O").stdout)
    assert [(r["pid"], r["where"], r["nmigs"], r["display"]["WHERE"]) for r in as_json] == [
        (p["away"], f"{p['prefix']}.3", 3, "3")
    ]
    assert json.loads(node.run(1, "mosps", "--json", "-S").stdout)[0]["options"] == "-S2"


def test_mosps_with_ps_options(node, populated):
    p = populated
    full = {int(r["PID"]): r for r in mosps(node, "-ef")}
    assert list(full[p["home"]]) == ["UID", "PID", "PPID", "WHERE", "FROM", "FRZ", "TTY", "CMD"]
    assert full[p["home"]]["UID"] == "root" and full[p["home"]]["CMD"] == "sleep 30"
    assert int(full[p["home"]]["PPID"]) == os.getpid()
    # mosps's own flags may share a '-' with ps's
    assert list(mosps(node, "-efn")[0])[3:7] == ["WHERE", "FROM", "FRZ", "NMIGS"]
    user = {int(r["PID"]): r for r in mosps(node, "aux")}
    assert list(user[p["away"]]) == ["USER", "PID", "WHERE", "FROM", "FRZ", "TTY", "COMMAND"]
    assert user[p["away"]]["WHERE"] == "3"
    assert [int(r["PID"]) for r in mosps(node, "-p", str(p["queue"]))] == [p["queue"]]
    assert [int(r["PID"]) for r in mosps(node, f"-p{p['away']}", "-L")] == [p["away"]]
    assert list(mosps(node, "-l")[0])[:4] == ["UID", "PID", "PPID", "NI"]
    threads = mosps(node, "-T", "-p", str(p["home"]))
    assert [(int(r["PID"]), int(r["SPID"])) for r in threads] == [(p["home"], p["home"])]
    bad = node.run(1, "mosps", "-z")
    assert bad.returncode == 1 and "unsupported ps option '-z'" in bad.stderr and "Traceback" not in bad.stderr

    # an ordinary user sees their own processes, unless a ps option asks for everyone's
    here, etc = Path("."), node.etc(1)
    assert nobody_calls(lambda: mosps_cli.listing(here, []), etc) == []
    everyone = nobody_calls(lambda: [r["pid"] for r in mosps_cli.listing(here, [mosps_cli.PsOption("A", True)])], etc)
    assert set(everyone) == {p["home"], p["away"], p["queue"], p["guest"]}


# -- moskillall -------------------------------------------------------------------------------------
TSTP_CATCHER = """
import signal, sys, time
signal.signal(signal.SIGTSTP, lambda *_: print("TSTP", flush=True))
print("ready", flush=True)
time.sleep(30)
"""


def read_line(proc: subprocess.Popen, timeout: float = 5.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if ready else ""


def test_moskillall_signals_local_processes_and_converts_stop(node, spawn):
    # a process group of its own, with its parent (us) outside it: Linux discards SIGTSTP
    # sent to an orphaned process group, which CI's may be
    plain = spawn("sleep", "30", process_group=0)
    catcher = spawn(sys.executable, "-c", TSTP_CATCHER, stdout=subprocess.PIPE, text=True)
    guest = spawn()
    assert read_line(catcher) == "ready"
    session = Session(node.etc(1)).open()
    session.send("register", pid=plain.pid)
    session.send("register", pid=catcher.pid)
    session.send("register", pid=guest.pid, home="127.0.0.1", origpid=99)
    session.request("ping")

    # as nobody: none of these (root's) processes is theirs — nothing is signalled
    report = nobody_calls(lambda: attrs.asdict(moskillall.kill_all(Path("."), signal.SIGKILL)), node.etc(1))
    assert report == {"signalled": [], "gone": [], "failed": []}
    assert plain.poll() is None and catcher.poll() is None

    out = node.run(1, "moskillall", "-STOP")
    assert out.returncode == 0, out.stderr
    assert read_line(catcher) == "TSTP"  # SIGSTOP cannot be caught: it was SIGTSTP
    node.wait_until(lambda: stat_state(plain.pid) == "T", timeout=5, what="the plain process to stop")
    assert stat_state(guest.pid) != "T"  # guests are not signalled from here

    assert node.run(1, "moskillall", "-CONT").returncode == 0
    node.wait_until(lambda: stat_state(plain.pid) != "T", timeout=5, what="the plain process to continue")
    assert node.run(1, "moskillall", "-15").returncode == 0
    assert plain.wait(timeout=5) == -signal.SIGTERM and catcher.wait(timeout=5) == -signal.SIGTERM
    assert guest.poll() is None
    node.wait_until(lambda: set(rows(node)) == {guest.pid}, what="the killed processes' rows to go")

    for bad in ("-BOGUS", "-SIGTERM", "-99"):
        out = node.run(1, "moskillall", bad)
        assert out.returncode == 1 and ("unknown signal" in out.stderr or "no such signal" in out.stderr), out
        assert "Traceback" not in out.stderr


# -- mostimeof --------------------------------------------------------------------------------------
def test_mostimeof_reports_user_cpu_time(node, spawn):
    busy = spawn(sys.executable, "-c", "while True: pass")
    away = spawn()
    session = Session(node.etc(1)).open()
    session.send("register", pid=busy.pid)
    session.send("register", pid=away.pid, where="10.9.8.7")
    session.request("ping")

    def seconds() -> float:
        out = node.run(1, "mostimeof", str(busy.pid))
        assert out.returncode == 0, out.stderr
        pid, _, value = out.stdout.strip().partition(": ")
        assert int(pid) == busy.pid
        return float(value)

    node.wait_until(lambda: seconds() > 0.1, timeout=10, what="the busy process to accumulate CPU time")
    out = node.run(1, "mostimeof", str(away.pid), "1", "nonsense")
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"mostimeof: {away.pid}: not available",
        "mostimeof: 1: not a MOSIX process",
        "mostimeof: nonsense: not a process ID",
    ]
    session.request("update", pid=away.pid, remote_utime=12.5)
    report = json.loads(node.run(1, "mostimeof", "--json", str(away.pid), str(busy.pid)).stdout)
    assert report[0]["pid"] == away.pid and 12.5 <= report[0]["utime"] < 13 and report[0]["error"] is None
    assert report[1]["utime"] > 0.1
