"""How ``mosmigrate`` (and mosd) reach the supervisor of a process, and only it.

The supervisor of a process is its tracer (``TracerPid`` in ``/proc/PID/status``), so
``mosmigrate {pid}`` needs no daemon to find it. Each supervisor listens on an abstract
Unix socket; one JSON request per connection, one JSON answer. The rule of mosmigrate(1)
— "if you can kill it, then you are also allowed to migrate/affect it" — is checked with
the caller's credentials (``SO_PEERCRED``): root, or the process's own user.

Abstract socket names belong to whoever binds them first, with no permission check, and
pids are predictable. With a fixed name per supervisor pid any user could bind the names
of the next pids in advance: the real supervisor could not listen, and its user's
requests (root's too) went to the squatter, who answered ``ok`` with nothing done. So:

* The supervisor listens on ``\\0mosix/supervisor/PID/<128 random bits>``: nobody can bind
  that name first, so nobody can keep a supervisor from listening.
* A client (:func:`request`) looks in ``/proc/net/unix`` for the listeners named
  ``\\0mosix/supervisor/PID/…`` (anyone may bind names there as well) and, before it sends
  a byte, reads each one's credentials: ``SO_PEERCRED`` on a connected socket gives the
  pid and euid its listener had when it called ``listen()``, and the kernel records them —
  no other process can have the tracer's pid. The listener must be the tracer (pid), of
  the tracer's user (against a listener made by a process whose pid has since been
  reused), and afterwards the process must still be traced by it. Any other listener gets
  nothing and is never believed.

The supervisor's single loop also serves the calls its processes away from home forward
to it, so no client may hold that loop. The caller's credentials are checked at accept,
before a byte is read: a user who may affect none of the supervisor's processes (not
root, not their owner) is disconnected at once. The others' requests are read as their
bytes arrive, never waited for (:class:`Incoming`), within :data:`REQUEST_WITHIN` seconds
and :data:`MAX_REQUEST` bytes, and at most :data:`MAX_PENDING` at a time.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import socket
import struct
import time
from collections.abc import Callable

import attrs

from mosix_core.errors import MosixError
from mosix_core.linux import procfs
from mosix_core.mosrun.move import Move

MAX_REQUEST = 4096
#: seconds a client has to send its whole request (a tool sends it at once)
REQUEST_WITHIN = 5.0
#: requests arriving at the same time; past that the oldest is dropped
MAX_PENDING = 16
PREFIX = "mosix/supervisor/"
#: ``__SO_ACCEPTCON`` in the Flags column of /proc/net/unix: a listening socket
_LISTENING = 0x10000
_STREAM = 1


def listen(supervisor_pid: int) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        server.bind(f"\0{PREFIX}{supervisor_pid}/{secrets.token_hex(16)}".encode())
        server.listen(16)
    except OSError:
        server.close()
        raise
    server.setblocking(False)
    return server


@attrs.frozen
class Credentials:
    pid: int
    uid: int
    gid: int


def peer_credentials(conn: socket.socket) -> Credentials:
    """The other end's credentials: for a client, as it connected; for a listener, as it
    called listen()."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Credentials(*struct.unpack("3i", creds))


def peer_uid(conn: socket.socket) -> int:
    return peer_credentials(conn).uid


def may_affect(uid: int, pid: int) -> bool:
    """mosmigrate(1): "if you can kill it, then you are also allowed to migrate/affect it"."""
    if uid == 0:
        return True
    try:
        real, _, saved, _ = procfs.status_fields(pid)["Uid"].split()
    except (OSError, KeyError, ValueError):
        return False
    return str(uid) in (real, saved)


def parse_request(line: bytes) -> dict:
    try:
        request = json.loads(line)
    except RecursionError:  # "[[[[…": deep enough for json's own limit
        raise ValueError("request nested too deeply") from None
    if not isinstance(request, dict):
        raise ValueError("request is not an object")
    return request


@attrs.define(eq=False)
class Incoming:
    """A connection whose request is still arriving: read when the loop sees bytes, never
    waited for."""

    conn: socket.socket
    uid: int
    deadline: float
    data: bytearray = attrs.field(factory=bytearray)

    def read(self) -> dict | None:
        """What has arrived: the request once its line is whole, None until then;
        ValueError (or OSError) when it will never be one."""
        try:
            chunk = self.conn.recv(MAX_REQUEST + 1 - len(self.data))
        except (BlockingIOError, InterruptedError):
            return None
        if not chunk:
            raise ValueError("the connection ended before the request did")
        self.data += chunk
        line, newline, _ = self.data.partition(b"\n")
        if newline:
            return parse_request(bytes(line))
        if len(self.data) > MAX_REQUEST:
            raise ValueError("request too long")
        return None

    def late(self, now: float) -> bool:
        return now >= self.deadline


def answer(conn: socket.socket, reply: dict) -> None:
    try:
        conn.sendall(json.dumps(reply).encode() + b"\n")
    except OSError:
        pass  # a client that went away, or one that does not read (never waited for)


def supervisor_of(pid: int) -> int:
    """The pid of the mosrun supervisor tracing ``pid``; MosixError if it is no MOSIX process."""
    try:
        tracer = int(procfs.status_fields(pid).get("TracerPid", "0"))
    except OSError:
        raise MosixError(f"{pid}: No such process") from None
    if tracer == 0:
        raise MosixError(f"{pid}: not a MOSIX process")
    return tracer


def listening_names(supervisor_pid: int) -> list[bytes]:
    """Every listening stream socket named ``\\0mosix/supervisor/PID/…`` (anyone's)."""
    prefix = f"@{PREFIX}{supervisor_pid}/".encode()
    try:
        with open("/proc/net/unix", "rb") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return []
    names = []
    for line in lines:
        fields = line.split(None, 7)  # Num RefCount Protocol Flags Type St Inode Path
        if len(fields) == 8 and fields[7].startswith(prefix) and fields[4] == b"%04X" % _STREAM:
            try:
                listening = int(fields[3], 16) & _LISTENING
            except ValueError:
                continue
            if listening:
                names.append(b"\0" + fields[7][1:])
    return names


def _uids(pid: int) -> set[int]:
    try:
        return {int(uid) for uid in procfs.status_fields(pid)["Uid"].split()}
    except (OSError, KeyError, ValueError):
        return set()


def connect(pid: int, supervisor: int, deadline: float) -> socket.socket:
    """A connection to ``supervisor``'s own listener (see the module's docstring), on which
    nothing has been sent yet. A listener whose backlog is full is tried again until
    ``deadline`` (the real one may just be busy)."""
    uids = _uids(supervisor)
    while True:
        busy = False
        for name in listening_names(supervisor):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            try:
                conn.connect(name)
                listener = peer_credentials(conn)
            except BlockingIOError:
                busy = True
                conn.close()
                continue
            except OSError:
                conn.close()
                continue
            if listener.pid == supervisor and listener.uid in uids:
                if supervisor_of(pid) != supervisor:  # it ended, and its pid was taken again
                    conn.close()
                    raise MosixError(f"{pid}: not a MOSIX process")
                conn.setblocking(True)
                return conn
            conn.close()
        if not busy:
            raise MosixError(f"{pid}: not a MOSIX process")
        if time.monotonic() >= deadline:
            raise MosixError(f"{pid}: its supervisor does not answer")
        time.sleep(0.05)


def request(pid: int, op: str, timeout: float = 10.0, **args) -> dict:
    """Send ``op`` about process ``pid`` to its supervisor; its answer."""
    deadline = time.monotonic() + timeout
    supervisor = supervisor_of(pid)
    if not may_affect(os.geteuid(), pid):
        # the supervisor would hang up on us unheard (it checks the same credentials)
        raise MosixError(f"{pid}: Operation not permitted")
    conn = connect(pid, supervisor, deadline)
    data = b""
    try:
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        conn.sendall(json.dumps({"op": op, "pid": pid, **args}).encode() + b"\n")
        while not data.endswith(b"\n") and len(data) <= MAX_REQUEST:
            conn.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = conn.recv(MAX_REQUEST)
            if not chunk:
                break
            data += chunk
    except OSError as err:
        raise MosixError(f"{pid}: {err.strerror or err}") from None
    finally:
        conn.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise MosixError(f"{pid}: no answer from its supervisor") from None
    if not isinstance(reply, dict):
        raise MosixError(f"{pid}: no answer from its supervisor")
    if "error" in reply:
        raise MosixError(f"{pid}: {reply['error']}")
    return reply


class ControlServer:
    """The supervisor's listener: requests are read as their bytes arrive and handed to
    ``handle(request, uid)``, whose answer is a dict, or a :class:`Move` answered when it
    is over (mosmigrate waits for a move's outcome). ``may_ask(uid)``: whether that user
    may affect any of the supervisor's processes (else the connection is closed unheard)."""

    def __init__(
        self,
        selector: selectors.BaseSelector,
        may_ask: Callable[[int], bool],
        handle: Callable[[dict, int], dict | Move],
    ) -> None:
        self.sock = listen(os.getpid())
        self.selector = selector
        self._may_ask = may_ask
        self._handle = handle
        self._incoming: list[Incoming] = []  # requests still arriving, oldest first
        selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def _accept(self) -> None:
        """A new client. This loop also serves the calls forwarded from away, so no client may
        hold it: a user who may affect none of our processes is cut off before a byte is read,
        and the others' requests are read only as their bytes arrive."""
        for _ in range(MAX_PENDING * 4):  # the whole backlog: strangers must not fill it
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                uid = peer_uid(conn)
            except OSError:
                uid = None
            if uid is not None and self._may_ask(uid):
                self._arriving(conn, uid)
            else:
                conn.close()

    def _arriving(self, conn, uid: int) -> None:
        """Read ``conn``'s request as it comes; the late and the surplus ones are dropped."""
        conn.setblocking(False)
        now = time.monotonic()
        for incoming in [i for i in self._incoming if i.late(now)]:
            self._answer_control(incoming, {"error": "bad request: not sent in time"})
        if len(self._incoming) >= MAX_PENDING:
            self._answer_control(self._incoming[0], {"error": "bad request: too many at once"})
        incoming = Incoming(conn, uid, now + REQUEST_WITHIN)
        self._incoming.append(incoming)
        self.selector.register(conn, selectors.EVENT_READ, lambda: self._control_arrives(incoming))

    def _control_arrives(self, incoming: Incoming) -> None:
        try:
            req = incoming.read()
            if req is None:
                if not incoming.late(time.monotonic()):
                    return
                raise ValueError("not sent in time")
            reply = self._handle(req, incoming.uid)
        except (OSError, ValueError) as err:
            reply = {"error": f"bad request: {err}"}
        if isinstance(reply, Move):
            self._answer_when_over(incoming, reply)
        else:
            self._answer_control(incoming, reply)

    def _answer_when_over(self, incoming: Incoming, move: Move) -> None:
        """The request is whole: no longer "arriving" (nor late); its answer is the
        move's outcome."""
        self._incoming.remove(incoming)
        self.selector.unregister(incoming.conn)

        def when_over(over: Move) -> None:
            with incoming.conn:
                answer(incoming.conn, {"ok": True} if over.failure is None else {"error": over.failure})

        move.wait(when_over)

    def _answer_control(self, incoming: Incoming, reply: dict) -> None:
        self._incoming.remove(incoming)
        self.selector.unregister(incoming.conn)
        with incoming.conn:
            answer(incoming.conn, reply)


__all__ = [
    "listen",
    "request",
    "connect",
    "supervisor_of",
    "listening_names",
    "may_affect",
    "peer_credentials",
    "peer_uid",
    "parse_request",
    "Incoming",
    "ControlServer",
    "answer",
    "REQUEST_WITHIN",
    "MAX_PENDING",
    "MAX_REQUEST",
]
