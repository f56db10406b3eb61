"""The tools' side of the control socket (see ``mosix_core.daemon.control``)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from mosix_core import paths
from mosix_core.errors import DaemonUnavailable, MosixError


class Client:
    """A connection to the local mosd, opened per call (tools are short-lived)."""

    def __init__(self, etc: Path, timeout: float = 10.0) -> None:
        self.etc = etc
        self.path = paths.control_socket(etc)
        self.timeout = timeout

    def call(self, op: str, **args: Any) -> dict:
        """Send one request; return the reply's fields. Raises MosixError with the
        daemon's message on failure, DaemonUnavailable if mosd is not running."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            try:
                sock.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError):
                raise DaemonUnavailable(f"MOSIX is not running on this node (no mosd at {self.path})") from None
            except OSError as err:
                raise DaemonUnavailable(f"cannot reach mosd at {self.path}: {err.strerror}") from None
            sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise DaemonUnavailable("mosd closed the connection")
                data += chunk
        except socket.timeout:
            raise DaemonUnavailable("mosd did not answer in time") from None
        finally:
            sock.close()
        reply = json.loads(data)
        if not reply.pop("ok", False):
            raise MosixError(reply.get("error", "request failed"))
        return reply
