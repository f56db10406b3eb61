"""Which CPU runs what: the tracer and the process it forwards calls for are kept on
one CPU, as a ptrace stop that wakes a tracer on another CPU costs several times more
(≈ 60 µs against 10–15 µs on the VMs this was measured on)."""

from __future__ import annotations

import ctypes
import os

from mosix_core.errors import TraceError
from mosix_core.linux.libc import LIBC


def current() -> int:
    """The CPU the caller runs on now."""
    cpu = LIBC.sched_getcpu()
    if cpu < 0:
        raise TraceError("sched_getcpu failed", ctypes.get_errno())
    return cpu


def allowed(pid: int = 0) -> set[int]:
    try:
        return os.sched_getaffinity(pid)
    except OSError as err:
        raise TraceError(f"sched_getaffinity({pid}): {err.strerror}", err.errno) from None


def pin(pid: int, cpus: set[int] | int) -> None:
    """Run ``pid`` (0: the caller) only on ``cpus``."""
    try:
        os.sched_setaffinity(pid, {cpus} if isinstance(cpus, int) else cpus)
    except OSError as err:
        raise TraceError(f"sched_setaffinity({pid}): {err.strerror}", err.errno) from None
