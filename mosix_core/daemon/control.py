"""The local control socket: how the ``mos*`` tools talk to mosd.

A Unix stream socket (``etc/mosix/var/mosd.sock``), one JSON object per line each
way: ``{"op": "...", ...}`` → ``{"ok": true, ...}``, or ``{"ok": false, "error": "..."}``
(refused: the manual's message), or that with ``"fault"`` (a bad request, a failure).
Every operation's request and reply are records of :mod:`mosix_core.daemon.protocol`:
a request is decoded (every field checked) before its operation runs, which returns
its reply record or raises :class:`~mosix_core.errors.Refused`.
The caller's uid comes from ``SO_PEERCRED``: everyone may read, only root may
change the node (as with ``mosctl`` and ``mossetpe``), and a user may register
only their own processes. Guests' rows belong to mosd: each guest runs as a uid of
its own (``guest_uids`` in mosd.conf), and a caller running as a guest uid — a guest
that got round its system-call filter, since a guest's calls are made at home — may
only read (:data:`GUEST_OPS`), never change a row, its own or another guest's.

A request carrying ``"noreply": true`` gets no reply line at all (a failure is only
logged): ``mosrun``'s supervisor streams its process-table changes that way
without ever waiting (``mosix_core.daemon.client.Session``).

This module serves the socket and dispatches each request to its operation; the
operations, grouped by subject, are :mod:`~mosix_core.daemon.control_node` (reading
and changing the node), :mod:`~mosix_core.daemon.control_processes` (the process
table) and :mod:`~mosix_core.daemon.control_moves` (moving processes out, sending
guests home, calling ours back).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mosix_core.cluster.proctable import ProcessEvent
from mosix_core.daemon import handshake
from mosix_core.daemon import protocol as p
from mosix_core.daemon.control_base import Connection, current_connection
from mosix_core.daemon.control_moves import MoveOperations
from mosix_core.daemon.control_node import NodeOperations
from mosix_core.daemon.control_processes import ProcessOperations
from mosix_core.errors import MosixError, PermissionDenied, ProtocolError

if TYPE_CHECKING:
    from mosix_core.daemon.node import Node

MAX_REQUEST = 1024 * 1024
#: all that a caller running as a guest uid (a guest that got round its system-call
#: filter: a guest's own calls go home) may ask: to read, as everyone may
GUEST_OPS = frozenset({"ping", "view", "status", "localstatus", "listpe", "processes", "pending"})


def _hand_over(writer: asyncio.StreamWriter, sock: socket.socket) -> None:
    """Pass ``sock`` to the client after its reply (one byte carries the descriptor)."""
    raw = writer.get_extra_info("socket")
    carrier = socket.socket(fileno=os.dup(raw.fileno()))
    try:
        socket.send_fds(carrier, [b"\0"], [sock.fileno()])
    except OSError:
        pass  # the client went away: so does the move
    finally:
        carrier.close()
        sock.close()


def peer_uid(writer: asyncio.StreamWriter) -> int:
    sock = writer.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class ControlServer(NodeOperations, ProcessOperations, MoveOperations):
    """Serves the control socket at ``path`` for ``node``: every ``op_{name}`` of its
    operation classes answers the request of that name."""

    def __init__(self, node: Node, path: Path) -> None:
        self.node = node
        self.path = path
        self._server: asyncio.base_events.Server | None = None
        self.on_reconfigure: Callable[[], Any] | None = None
        self.on_stop: Callable[[], Any] | None = None
        self._background: set[asyncio.Task] = set()  # mosmigrate out's nudging, kept alive

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST)
        os.chmod(self.path, 0o666)  # every user may ask; SO_PEERCRED decides what they may change

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._background):
            task.cancel()
        with contextlib.suppress(OSError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn: Connection | None = None
        try:
            uid = peer_uid(writer)
            conn = Connection(uid)
            current_connection.set(conn)  # each client is served in a task (and a context) of its own
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await self._reply(writer, p.fault("protocol", "request too long"))
                    break
                if not line:
                    break
                reply = await self.handle_line(line, uid)
                if reply is not None:
                    await self._reply(writer, reply)
                    if conn.handing_over is not None:
                        _hand_over(writer, conn.handing_over)
                        conn.handing_over = None
        except (ConnectionError, OSError):
            pass
        finally:
            if conn is not None:
                self.release_connection(conn)
            writer.close()

    async def _reply(self, writer: asyncio.StreamWriter, reply: dict) -> None:
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()

    async def handle_line(self, line: bytes, uid: int) -> dict | None:
        """The reply to one request line; None when the request asked for no reply."""
        noreply = False
        try:
            fields = json.loads(line)
            if not isinstance(fields, dict) or not isinstance(fields.get("op"), str):
                raise ProtocolError("a request is a JSON object with an 'op'")
            op = fields["op"]
            noreply = fields.get("noreply") is True
            request = p.decode(op, fields)
            if op not in GUEST_OPS and handshake.is_guest_uid(self.node, uid):
                raise PermissionDenied("Permission denied: a guest process may not do this")
            result = getattr(self, "op_" + op)(request, uid)
            if asyncio.iscoroutine(result):
                result = await result
            reply = p.answer(result)
        except (ProtocolError, ValueError) as err:
            reply = p.fault("protocol", str(err) if isinstance(err, MosixError) else f"bad request: {err}")
        except MosixError as err:  # Refused; or ConfigError, a policy's error...: an answer all the same
            reply = p.refusal(str(err), getattr(err, "details", None))
        except Exception as err:  # the daemon must survive any request
            self.node.log.error("control request failed", error=f"{type(err).__name__}: {err}")
            reply = p.fault("internal", f"internal error: {type(err).__name__}")
        if not noreply:
            return reply
        if not reply["ok"]:
            self.node.log.debug("no-reply request failed", uid=uid, error=reply["error"])
        return None

    def release_connection(self, conn: Connection) -> None:
        """A supervisor's connection closed: its rows go (unless registered anew since)."""
        for record in conn.rows.values():
            if self.node.proctable.discard(record):
                self.node.pm.hook.mosix_process_event(
                    event=ProcessEvent("exited", record.pid, record.uid, "supervisor gone")
                )
        conn.rows.clear()
