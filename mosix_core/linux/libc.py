"""The one ctypes handle on libc that the chokepoint modules share."""

from __future__ import annotations

import ctypes
import os

from mosix_core.errors import TraceError

# The C library this Python already runs on (dlopen(NULL) sees it): no
# ctypes.util.find_library, whose search imports subprocess and tempfile.
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
LIBC.ptrace.restype = ctypes.c_long
LIBC.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


def fail(what: str) -> TraceError:
    """The TraceError for the errno of the libc call that just failed."""
    err = ctypes.get_errno()
    return TraceError(f"{what}: {os.strerror(err)}", err)
