"""Reading and writing a tracee's memory, and borrowing its file descriptors.

``process_vm_readv`` copies without stopping anyone; strings are read in short
chunks so a read never runs into an unmapped page beyond the string's end.
"""

from __future__ import annotations

import ctypes
import os

from mosix_core.errors import TraceError
from mosix_core.linux.libc import LIBC, fail

SYS_PROCESS_VM_READV = 310
SYS_PROCESS_VM_WRITEV = 311
SYS_PIDFD_GETFD = 438
PAGE = 4096


def _longs(*values: int) -> tuple:
    """syscall() is variadic: a plain int would be passed as 4 bytes where the kernel
    reads 8, leaving garbage in the upper half (a random EINVAL for ``flags``)."""
    return tuple(ctypes.c_long(v) for v in values)


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def read_bytes(pid: int, addr: int, size: int) -> bytes:
    """Up to ``size`` bytes at ``addr``; fewer when the range runs off the mapped memory."""
    buf = ctypes.create_string_buffer(size)
    local = _IoVec(ctypes.cast(buf, ctypes.c_void_p), size)
    remote = _IoVec(addr, size)
    got = LIBC.syscall(
        *_longs(SYS_PROCESS_VM_READV, pid), ctypes.byref(local), *_longs(1), ctypes.byref(remote), *_longs(1, 0)
    )
    if got < 0:
        raise fail(f"reading memory of process {pid} at {addr:#x}")
    return buf.raw[:got]


def write_bytes(pid: int, addr: int, data: bytes) -> None:
    buf = ctypes.create_string_buffer(data, len(data))
    local = _IoVec(ctypes.cast(buf, ctypes.c_void_p), len(data))
    remote = _IoVec(addr, len(data))
    put = LIBC.syscall(
        *_longs(SYS_PROCESS_VM_WRITEV, pid), ctypes.byref(local), *_longs(1), ctypes.byref(remote), *_longs(1, 0)
    )
    if put != len(data):
        raise fail(f"writing memory of process {pid} at {addr:#x}")


def read_cstring(pid: int, addr: int, limit: int = 4096) -> bytes:
    """The NUL-terminated string at ``addr`` (at most ``limit`` bytes, without the NUL)."""
    if addr == 0:
        raise TraceError("NULL string pointer", 14)
    out = b""
    while len(out) < limit:
        chunk = min(PAGE - (addr % PAGE), limit - len(out), 256)
        data = read_bytes(pid, addr, chunk)
        if not data:
            raise TraceError(f"string at {addr:#x} is not readable", 14)
        end = data.find(b"\0")
        if end >= 0:
            return out + data[:end]
        out += data
        addr += len(data)
    return out


def borrow_fd(pidfd: int, fd: int) -> int:
    """A duplicate of the tracee's descriptor ``fd`` (same open file, same offset)."""
    new = LIBC.syscall(*_longs(SYS_PIDFD_GETFD, pidfd, fd, 0))
    if new < 0:
        raise fail(f"pidfd_getfd({fd})")
    os.set_inheritable(new, False)
    return new
