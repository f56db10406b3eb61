"""The process table and its fields, the Session's queueing, and the pure parts of
mosps, moskillall and mostimeof."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from mosix_core import paths
from mosix_core.cli import moskillall, mosps, mostimeof
from mosix_core.cluster.proctable import ProcessRecord, ProcessTable, checked_fields, parse_queue
from mosix_core.config.userview import UserView
from mosix_core.daemon.client import Session
from mosix_core.errors import MosixError


# -- fields ------------------------------------------------------------------------------------------
def test_checked_fields_accepts_and_normalises():
    raw = {
        "op": "register",
        "pid": 5,
        "where": "10.0.0.7",
        "frozen": "M",
        "nmigs": 2,
        "queue": "10/4/1",
        "options": "-b -m500",
        "remote_utime": 3,
        "command": "x" * 5000,
    }
    fields = checked_fields(raw)
    assert fields["where"] == "10.0.0.7" and fields["remote_utime"] == 3.0 and len(fields["command"]) == 4096
    assert "op" not in fields and "pid" not in fields
    assert checked_fields({"where": "starting", "queue": None, "remote_utime": None}) == {
        "where": "starting",
        "queue": None,
        "remote_utime": None,
    }


@pytest.mark.parametrize(
    "bad",
    [
        {"where": "mars"},
        {"where": 5},
        {"frozen": "X"},
        {"nmigs": -1},
        {"nmigs": True},
        {"nmigs": "3"},
        {"queue": "1/2"},
        {"queue": "3/2/3"},
        {"queue": "a/b/c"},
        {"options": "x" * 300},
        {"remote_utime": -1},
        {"remote_utime": float("nan")},
        {"command": 7},
    ],
)
def test_checked_fields_refuses(bad):
    with pytest.raises(ValueError):
        checked_fields(bad)


def test_queue_counts_and_record_json_round_trip():
    assert parse_queue("7/3/1") == (7, 3, 1)
    record = ProcessRecord(
        pid=3,
        uid=1000,
        command="a b",
        home=IPv4Address("10.0.0.2"),
        origpid=99,
        queue="7/3/1",
        options="-S4",
        remote_utime=1.5,
    )
    data = record.to_json()
    # the keys existing users read are still there, with the same meaning
    assert {"pid", "uid", "command", "home", "origpid", "where", "frozen", "nmigs", "queue", "started"} <= set(data)
    assert data["home"] == "10.0.0.2" and data["options"] == "-S4"
    again = ProcessRecord.from_json(json.loads(json.dumps({**data, "unknown_later_field": 1})))
    assert again == record and again.queue_counts == (7, 3, 1) and again.is_guest
    assert ProcessRecord(pid=1, uid=0, command="x", where="10.0.0.3").is_away
    assert not ProcessRecord(pid=1, uid=0, command="x", where="leaving").is_away
    assert record.apply({"nmigs": 0, "frozen": "A"}) == {"frozen": ("-", "A")}


# -- the table ---------------------------------------------------------------------------------------
def test_table_releases_each_row_once_and_replacement_is_safe():
    released: list[str] = []
    table = ProcessTable()
    first = ProcessRecord(pid=10, uid=0, command="first")
    second = ProcessRecord(pid=10, uid=0, command="second")
    table.add(first, release=lambda: released.append("first"))
    assert table.add(second, release=lambda: released.append("second")) is first
    assert released == ["first"] and table.get(10) is second
    # the first row's (stale) exit handler must not remove the second row
    assert table.discard(first) is False and table.get(10) is second and released == ["first"]
    assert table.discard(second) is True and released == ["first", "second"] and 10 not in table
    guest = ProcessRecord(pid=11, uid=0, command="g", home=IPv4Address("10.0.0.9"))
    table.add(guest, release=lambda: released.append("g"))
    assert [r.pid for r in table.guests()] == [11] and table.local() == []
    assert table.remove(11).pid == 11 and released[-1] == "g" and len(table) == 0
    assert table.remove(11) is None


# -- Session: queueing without blocking --------------------------------------------------------------
class FakeMosd:
    """A control socket that answers the first request and then reads only when told."""

    def __init__(self, etc: Path) -> None:
        paths.var_dir(etc).mkdir(parents=True)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(paths.control_socket(etc)))
        self.server.listen()
        self.conn: socket.socket | None = None
        self.received = b""
        self.reading = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        self.conn, _ = self.server.accept()
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        while b"\n" not in self.received:
            self.received += self.conn.recv(65536)
        self.conn.sendall(b'{"ok": true}\n')
        self.reading.wait()
        try:
            while chunk := self.conn.recv(65536):
                self.received += chunk
        except OSError:
            pass

    def close(self) -> None:
        self.reading.set()
        if self.conn is not None:
            try:
                self.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(5)
        if self.conn is not None:
            self.conn.close()
        self.server.close()


def test_session_queues_what_the_socket_does_not_take(tmp_path):
    mosd = FakeMosd(tmp_path)
    try:
        session = Session(tmp_path, timeout=5).open()
        session._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        started = time.monotonic()
        for k in range(3000):
            assert session.send("update", pid=k, nmigs=k, options="-b" * 20)
        assert time.monotonic() - started < 2.0  # never blocked on the full socket
        assert session.pending > 0 and session.flush() is False
        mosd.reading.set()
        deadline = time.monotonic() + 5
        while not session.flush() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert session.pending == 0
        session.close()
        mosd.thread.join(5)
        lines = [json.loads(line) for line in mosd.received.splitlines()]
        assert lines[0] == {"op": "supervise"}
        assert [line["pid"] for line in lines[1:]] == list(range(3000))
        assert all(line["noreply"] is True for line in lines[1:])
    finally:
        mosd.close()


def test_session_gives_up_when_mosd_stops_reading(tmp_path):
    mosd = FakeMosd(tmp_path)
    try:
        session = Session(tmp_path, max_queue=64 * 1024).open()
        results = [session.send("update", pid=k, options="x" * 200) for k in range(2000)]
        assert results[-1] is False and not session.connected and "not reading" in session.broken
        assert session.send("ping") is False
    finally:
        mosd.close()


# -- mosps ---------------------------------------------------------------------------------------------
def test_mosps_argv_split_and_interpretation():
    ps, rest = mosps.split_argv(["-efn", "-p", "12,13", "aux", "-LO", "--json", "--etc", "/x", "U", "root"])
    assert [o.encode() for o in ps] == ["-e", "-f", "-p=12,13", "a", "u", "x", "U=root"]
    assert rest == ["-n", "-L", "-O", "--json", "--etc", "/x"]
    assert mosps.rewrite(["-p7", "-V"]) == ["-V", "--ps", "-p=7"]
    with pytest.raises(MosixError, match="conflicting format options"):  # -f and u, as ps says
        mosps.interpret(ps)
    req = mosps.interpret([mosps.PsOption.decode(t) for t in ("-e", "-p=12,13", "a", "x", "U=root")])
    assert req.to_ps == ("ax", "-e", "-p", "12,13", "U", "root") and req.bsd and req.selects
    plain = mosps.interpret([mosps.PsOption.decode(t) for t in ("-f", "-l", "-w", "-H")])
    assert not plain.selects and plain.unix_format == {"f", "l"} and plain.width == 1 and plain.to_ps == ("-H",)
    with pytest.raises(MosixError, match="conflicting"):
        mosps.interpret([mosps.PsOption("f", True), mosps.PsOption("u", False)])
    with pytest.raises(MosixError, match="unsupported ps option 'z'"):
        mosps.interpret([mosps.PsOption("z", False)])
    with pytest.raises(MosixError, match="needs a list"):
        mosps.interpret(mosps.split_argv(["-p"])[0])


def test_mosps_node_display():
    view = UserView.parse("1 10.0.0.1 4\n", "userview.map")
    names = {"10.0.0.2": "alpha.example.org"}
    local = IPv4Address("10.0.0.1")
    shown = {style: mosps.Display(local, style, view, names.get) for style in ("numbers", "ip", "host", "short")}
    assert [shown[s].node("10.0.0.2") for s in shown] == ["2", "10.0.0.2", "alpha.example.org", "alpha"]
    assert {shown[s].node("10.0.0.1") for s in shown} == {"here"}  # always "here"
    assert {shown[s].node("leaving") for s in shown} == {"leaving"}
    assert shown["numbers"].node("10.9.9.9") == "10.9.9.9"  # not in userview.map
    assert shown["host"].node("10.0.0.3") == "10.0.0.3"  # no host name
    assert mosps.render(["PID", "WHERE", "CMD"], [["7", "here", "a b"], ["1234", "12", "c"]], None) == [
        " PID WHERE CMD",
        "   7 here  a b",
        "1234 12    c",
    ]


# -- moskillall and mostimeof ---------------------------------------------------------------------------
def test_moskillall_signals():
    assert moskillall.parse_signal("STOP") == signal.SIGTSTP == moskillall.parse_signal(str(int(signal.SIGSTOP)))
    assert moskillall.parse_signal("KILL") == 9 and moskillall.parse_signal("1") == signal.SIGHUP
    assert moskillall.parse_signal("STKFLT") == signal.SIGSTKFLT and moskillall.parse_signal("POLL") == signal.SIGIO
    for bad in ("SIGKILL", "kill", "0", "65", "", "RTMIN"):
        with pytest.raises(MosixError):
            moskillall.parse_signal(bad)
    assert moskillall.rewrite(["-9", "--etc", "/e"]) == ["--signal", "9", "--etc", "/e"]
    rows = [
        ProcessRecord(pid=1001, uid=1000, command="a"),
        ProcessRecord(pid=1002, uid=1001, command="b"),
        ProcessRecord(pid=1003, uid=1000, command="g", home=IPv4Address("10.0.0.2"), origpid=5),
        ProcessRecord(pid=os.getpid(), uid=0, command="me"),
    ]
    assert [r.pid for r in moskillall.targets(rows, 1000)] == [1001]
    assert [r.pid for r in moskillall.targets(rows, 0)] == [1001, 1002]


def test_mostimeof_time_of():
    me = os.getpid()
    while time.process_time() < 0.05:
        pass
    seconds, error = mostimeof.time_of(ProcessRecord(pid=me, uid=0, command="me"))
    assert error is None and seconds > 0
    assert mostimeof.time_of(None) == (None, "not a MOSIX process")
    guest = ProcessRecord(pid=me, uid=0, command="g", home=IPv4Address("10.0.0.2"), origpid=3)
    assert mostimeof.time_of(guest) == (None, "not a MOSIX process")
    away = ProcessRecord(pid=me, uid=0, command="a", where="10.0.0.3")
    assert mostimeof.time_of(away) == (None, "not available")
    away.remote_utime = 100.0
    total, error = mostimeof.time_of(away)
    assert error is None and 100.0 < total < 200.0
