"""How ``mosmigrate`` reaches the supervisor of a process.

Every supervisor listens on an abstract Unix socket named after its own pid; the
supervisor of a process is its tracer (``TracerPid`` in ``/proc/PID/status``), so
``mosmigrate {pid}`` needs no daemon to find it. One JSON request per connection,
one JSON answer. The rule of mosmigrate(1) — "if you can kill it, then you are
also allowed to migrate/affect it" — is checked with the caller's credentials
(``SO_PEERCRED``): root, or the process's own user.
"""

from __future__ import annotations

import json
import socket
import struct

from mosix_core.errors import MosixError
from mosix_core.linux import procfs

MAX_REQUEST = 4096


def address(supervisor_pid: int) -> bytes:
    return f"\0mosix/supervisor/{supervisor_pid}".encode()


def listen(supervisor_pid: int) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    server.bind(address(supervisor_pid))
    server.listen(16)
    server.setblocking(False)
    return server


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def may_affect(uid: int, pid: int) -> bool:
    """mosmigrate(1): "if you can kill it, then you are also allowed to migrate/affect it"."""
    if uid == 0:
        return True
    try:
        real, effective, saved, _ = procfs.status_fields(pid)["Uid"].split()
    except (OSError, KeyError, ValueError):
        return False
    return str(uid) in (real, saved)


def read_request(conn: socket.socket) -> dict:
    conn.settimeout(2.0)
    data = b""
    while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
        chunk = conn.recv(MAX_REQUEST)
        if not chunk:
            break
        data += chunk
    request = json.loads(data)
    if not isinstance(request, dict):
        raise ValueError("request is not an object")
    return request


def answer(conn: socket.socket, reply: dict) -> None:
    try:
        conn.sendall(json.dumps(reply).encode() + b"\n")
    except OSError:
        pass


def supervisor_of(pid: int) -> int:
    """The pid of the mosrun supervisor tracing ``pid``; MosixError if it is no MOSIX process."""
    try:
        tracer = int(procfs.status_fields(pid).get("TracerPid", "0"))
    except OSError:
        raise MosixError(f"{pid}: No such process") from None
    if tracer == 0:
        raise MosixError(f"{pid}: not a MOSIX process")
    return tracer


def request(pid: int, op: str, timeout: float = 10.0, **args) -> dict:
    """Send ``op`` about process ``pid`` to its supervisor; its answer."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    conn.settimeout(timeout)
    try:
        conn.connect(address(supervisor_of(pid)))
        conn.sendall(json.dumps({"op": op, "pid": pid, **args}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(MAX_REQUEST)
            if not chunk:
                break
            data += chunk
    except (ConnectionRefusedError, FileNotFoundError):
        raise MosixError(f"{pid}: not a MOSIX process") from None
    except OSError as err:
        raise MosixError(f"{pid}: {err.strerror or err}") from None
    finally:
        conn.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise MosixError(f"{pid}: no answer from its supervisor") from None
    if "error" in reply:
        raise MosixError(f"{pid}: {reply['error']}")
    return reply


__all__ = ["listen", "request", "supervisor_of", "may_affect", "peer_uid", "read_request", "answer"]
