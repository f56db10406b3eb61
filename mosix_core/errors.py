"""Exception types of mosix-py.

Every error a user can provoke ends in one of these, carrying a message that is
fit to print as it is (the manual's wording where the manual has one).
"""

from __future__ import annotations


class MosixError(Exception):
    """Base class: ``str(err)`` is the user-visible message."""


class ConfigError(MosixError):
    """A configuration file is missing, unreadable or malformed.

    The message always names the file, and the line when there is one.
    """

    def __init__(self, path: str, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.reason = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class AuthenticationError(MosixError):
    """A peer message failed authentication (wrong secret, tampered, replayed)."""


class ProtocolError(MosixError):
    """A peer or client message is garbled, truncated or of an unknown kind."""


class DaemonUnavailable(MosixError):
    """The local mosd cannot be reached through its control socket."""


class Refused(MosixError):
    """An answer, not a failure: the request was understood and is refused (the node is
    not in the map, the process is already there, a site policy said no...). mosd
    sends it over its sockets as it is and the caller raises it again: the message is
    the manual's. ``details``: what else the refusal tells (the node a move was refused
    by, as mosd resolved it)."""

    def __init__(self, message: str, **details: object) -> None:
        self.details = details
        super().__init__(message)


class NotInMap(Refused):
    """A node named by the user is not part of this cluster or multi-cluster."""


class PermissionDenied(Refused):
    """The caller is not allowed to do this (most mosctl functions are root's)."""


class PolicyRefused(Refused):
    """A site policy refused a request; the message is the policy's."""


class TraceError(MosixError):
    """A Linux process-tracing operation (ptrace, seccomp, process memory) failed.

    ``errno`` is kept so callers can tell a vanished tracee (ESRCH) from a real fault.
    """

    def __init__(self, message: str, errno: int = 0) -> None:
        self.errno = errno
        super().__init__(message)
