"""What every group of control operations shares (see :mod:`mosix_core.daemon.control`):
the connection being served, and who may do what.

Each group is a class of ``op_{name}`` methods (:class:`Operations`' subclasses,
one module per subject); :class:`~mosix_core.daemon.control.ControlServer` is all
of them, and dispatches each decoded request to its method.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import socket
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any

from mosix_core.cluster.proctable import ProcessRecord
from mosix_core.errors import PermissionDenied, ProtocolError, Refused

if TYPE_CHECKING:
    from mosix_core.daemon.node import Node


class Connection:
    """One client of the control socket, as the process-table operations see it."""

    def __init__(self, uid: int) -> None:
        self.uid = uid
        self.supervisor = False
        self.rows: dict[int, ProcessRecord] = {}  # registered here while supervising
        self.handing_over: socket.socket | None = None  # sent with the reply (SCM_RIGHTS)


#: the connection whose request is being served (each client is served in a task,
#: and a context, of its own)
current_connection: contextvars.ContextVar[Connection | None] = contextvars.ContextVar("mosd_connection", default=None)


def connection_for(op: str) -> Connection:
    """The connection being served, which operation ``op`` answers on."""
    conn = current_connection.get()
    if conn is None:
        raise ProtocolError(f"{op} needs a connection")
    return conn


class Operations:
    """The base of every group of operations: the node they act on, and the checks
    they share."""

    node: Node
    on_reconfigure: Callable[[], Any] | None
    on_stop: Callable[[], Any] | None
    _background: set[asyncio.Task]  # tasks an operation leaves running (mosmigrate out's nudging)

    @staticmethod
    def require_root(uid: int) -> None:
        if uid != 0:
            raise PermissionDenied("Permission denied: only the Super-User may do this")

    def resolve(self, text: Any) -> IPv4Address:
        if text in (None, ""):
            return self.node.our_ip
        return self.node.config.resolve_node(str(text))

    @staticmethod
    def process_owner(pid: int, uid: int) -> int:
        """The owner of live process ``pid``, which caller ``uid`` must be (or root)."""
        try:
            owner = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            raise Refused(f"no such process {pid}") from None
        if uid != 0 and owner != uid:
            raise PermissionDenied(f"process {pid} is not yours")
        return owner
