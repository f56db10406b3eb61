"""The tools' side of the control socket (see ``mosix_core.daemon.control``).

``Client``: one request per connection, for the short-lived tools. ``Session``: one
persistent connection for ``mosrun``'s supervisor, with no-reply requests.

Typed: ``client.request(protocol.SomeRequest(...))`` returns the operation's reply
record (:mod:`mosix_core.daemon.protocol`); a session's :meth:`Session.tell` sends a
request record without waiting, :meth:`Session.ask` waits for its reply record.
Untyped, by name, for what still speaks the wire's dicts (the tests, and a few
callers: ``remote.home_link``, ``cli.mosmigrate``): ``call(op, **fields)`` and
``call_for_socket`` return the reply's fields as a dict, ``Session.send(op, **fields)``
queues a no-reply request, ``Session.request`` waits for the reply's fields. Either
way a refusal raises :class:`~mosix_core.errors.Refused` with the daemon's message
(the manual's), a bad request ProtocolError, anything else MosixError.
"""

from __future__ import annotations

import json
import os
import select
import socket
import time
from pathlib import Path
from typing import Any

from mosix_core import paths
from mosix_core.daemon import protocol
from mosix_core.errors import DaemonUnavailable, MosixError, Refused


class Client:
    """A connection to the local mosd, opened per call (tools are short-lived)."""

    def __init__(self, etc: Path, timeout: float = 10.0) -> None:
        self.etc = etc
        self.path = paths.control_socket(etc)
        self.timeout = timeout

    def request(self, request: Any) -> Any:
        """Send one request record; return its reply record. Raises Refused with the
        daemon's message when refused, DaemonUnavailable if mosd is not running."""
        op = protocol.op_of(request)
        return protocol.decode_reply(op, self._call(op, protocol.encode(request), want_fd=False)[0])

    def request_for_socket(self, request: Any) -> tuple[Any, socket.socket]:
        """A request whose reply comes with a connected socket (mosd passes it with
        SCM_RIGHTS: migrate_out, reattach): (the reply record, the socket)."""
        op = protocol.op_of(request)
        fields, sock = self._call(op, protocol.encode(request), want_fd=True)
        if sock is None:
            raise DaemonUnavailable("mosd did not hand over the connection")
        try:
            return protocol.decode_reply(op, fields), sock
        except BaseException:
            sock.close()
            raise

    def call(self, op: str, **args: Any) -> dict:
        """Send one request by name; return the reply's fields. Raises Refused with the
        daemon's message when refused, DaemonUnavailable if mosd is not running."""
        return self._call(op, args, want_fd=False)[0]

    def call_for_socket(self, op: str, **args: Any) -> tuple[dict, socket.socket | None]:
        """A request whose successful reply comes with a connected socket (mosd passes
        it with SCM_RIGHTS): (the reply's fields, the socket). Refused, it returns
        ``({"refused": message, **details}, None)`` — ``target``: the node that refused —
        as the supervisor reads a handshake's outcome."""
        try:
            return self._call(op, args, want_fd=True)
        except Refused as err:
            return {**err.details, "refused": str(err)}, None

    def _call(self, op: str, args: dict, *, want_fd: bool) -> tuple[dict, socket.socket | None]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        fds: list[int] = []
        try:
            try:
                sock.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError):
                raise DaemonUnavailable(f"MOSIX is not running on this node (no mosd at {self.path})") from None
            except OSError as err:
                raise DaemonUnavailable(f"cannot reach mosd at {self.path}: {err.strerror}") from None
            sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            data = b""
            while b"\n" not in data:
                # recvmsg throughout: a plain recv would drop a descriptor that came along
                chunk, got, _, _ = socket.recv_fds(sock, 65536, 1)
                fds += got
                if not chunk:
                    raise DaemonUnavailable("mosd closed the connection")
                data += chunk
            line, _, rest = data.partition(b"\n")
            reply = json.loads(line)
            if want_fd and isinstance(reply, dict) and reply.get("ok") is True and not fds:
                while not fds:
                    chunk, got, _, _ = socket.recv_fds(sock, 16, 1)
                    fds += got
                    if not chunk and not got:
                        raise DaemonUnavailable("mosd closed the connection before handing over")
        except TimeoutError:
            raise DaemonUnavailable("mosd did not answer in time") from None
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        finally:
            sock.close()
        try:
            fields = protocol.outcome(reply)
        except MosixError:
            for fd in fds:
                os.close(fd)
            raise
        handed = socket.socket(fileno=fds.pop(0)) if fds else None
        for fd in fds:
            os.close(fd)
        return fields, handed


class Session:
    """A supervisor's persistent connection to mosd (``mosrun`` uses one for all the
    processes it supervises, from inside an event loop).

    * :meth:`open` connects and declares the connection a supervisor's: every row
      registered over it is removed when it closes (the supervisor died). It raises
      DaemonUnavailable if mosd is not running; :meth:`try_open` returns False instead.
      Either way a session that is not open is *inert*: :meth:`send` does nothing.
    * :meth:`tell` (a request record) and :meth:`send` (a request by name) never
      wait: they queue the request with ``"noreply": true`` and
      writes what the socket takes without blocking. What the kernel did not take
      stays queued until the next send or :meth:`flush` (an event loop can call
      ``flush`` when :meth:`fileno` becomes writable while :attr:`pending` is
      non-zero). A broken connection, or more than ``max_queue`` bytes that mosd does
      not read, makes the session inert — no exception reaches the caller.
    * :meth:`ask` sends one request record and waits (at most ``timeout``) for its
      reply record (:meth:`request`: one by name, for its reply's fields); no-reply
      requests produce no reply lines, so the next line is this one's.
    """

    def __init__(self, etc: Path, timeout: float = 10.0, max_queue: int = 8 << 20) -> None:
        self.etc = etc
        self.path = paths.control_socket(etc)
        self.timeout = timeout
        self.max_queue = max_queue
        self._sock: socket.socket | None = None
        self._out = bytearray()
        self._in = bytearray()
        self.broken: str | None = None  # why a session that was open is inert now

    # -- opening and closing ---------------------------------------------------------------------
    def open(self) -> Session:
        if self._sock is not None:
            return self
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise DaemonUnavailable(f"MOSIX is not running on this node (no mosd at {self.path})") from None
        except OSError as err:
            sock.close()
            raise DaemonUnavailable(f"cannot reach mosd at {self.path}: {err.strerror or err}") from None
        sock.setblocking(False)
        self._sock, self.broken = sock, None
        self._out.clear()
        self._in.clear()
        self.ask(protocol.SuperviseRequest())  # raises DaemonUnavailable (and closes) if mosd does not answer
        return self

    def try_open(self) -> bool:
        """Open if mosd is there; False (an inert session) if it is not."""
        try:
            self.open()
        except MosixError:
            return False
        return True

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._out.clear()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _break(self, why: str) -> None:
        self.broken = why
        self.close()

    # -- without waiting -------------------------------------------------------------------------
    def tell(self, request: Any) -> bool:
        """Queue a no-reply request record (as :meth:`send` does one by name)."""
        return self.send(protocol.op_of(request), **protocol.encode(request))

    def send(self, op: str, **args: Any) -> bool:
        """Queue a no-reply request and write what can be written now. Returns False
        when the session is (or just became) inert."""
        if self._sock is None:
            return False
        self._out += json.dumps({"op": op, **args, "noreply": True}).encode() + b"\n"
        if len(self._out) > self.max_queue:
            self._break("mosd is not reading its control socket")
            return False
        self.flush()
        return self._sock is not None

    def flush(self) -> bool:
        """Write queued requests without blocking; True when nothing is left queued."""
        while self._out and self._sock is not None:
            try:
                sent = self._sock.send(self._out, socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as err:
                self._break(f"connection to mosd lost: {err.strerror or err}")
                return False
            del self._out[:sent]
        return not self._out

    @property
    def pending(self) -> int:
        """Bytes queued but not yet taken by the kernel."""
        return len(self._out)

    def fileno(self) -> int:
        return -1 if self._sock is None else self._sock.fileno()

    # -- waiting for a reply ---------------------------------------------------------------------
    def ask(self, request: Any) -> Any:
        """Send one request record and return its reply record (as :meth:`Client.request`)."""
        op = protocol.op_of(request)
        return protocol.decode_reply(op, self.request(op, **protocol.encode(request)))

    def request(self, op: str, **args: Any) -> dict:
        """Send one request by name and return its reply's fields (as :meth:`Client.call`)."""
        if self._sock is None:
            raise DaemonUnavailable(self.broken or "no session with mosd")
        self._out += json.dumps({"op": op, **args}).encode() + b"\n"
        deadline = time.monotonic() + self.timeout
        while not self.flush():
            if self._sock is None or not self._wait(select.POLLOUT, deadline):
                break
        while self._sock is not None and b"\n" not in self._in:
            if not self._wait(select.POLLIN, deadline):
                break
            try:
                chunk = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as err:
                self._break(f"connection to mosd lost: {err.strerror or err}")
                break
            if not chunk:
                self._break("mosd closed the connection")
                break
            self._in += chunk
        if self._sock is None or b"\n" not in self._in:
            reason = self.broken or "mosd did not answer in time"
            self._break(reason)  # a late reply would be taken for the next request's
            raise DaemonUnavailable(reason)
        line, _, rest = bytes(self._in).partition(b"\n")
        self._in[:] = rest
        return protocol.outcome(json.loads(line))

    def _wait(self, events: int, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0 or self._sock is None:
            return False
        poller = select.poll()
        poller.register(self._sock, events)
        return bool(poller.poll(left * 1000))
