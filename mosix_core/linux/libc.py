"""The one ctypes handle on libc that the chokepoint modules share."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from mosix_core.errors import TraceError

LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
LIBC.syscall.restype = ctypes.c_long
LIBC.ptrace.restype = ctypes.c_long
LIBC.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


def fail(what: str) -> TraceError:
    """The TraceError for the errno of the libc call that just failed."""
    err = ctypes.get_errno()
    return TraceError(f"{what}: {os.strerror(err)}", err)
