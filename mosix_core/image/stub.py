"""The restore stub: the smallest program a process image can be restored into.

A restored process starts as this static, libc-free ELF executable — so that no
C library registers its own rseq area, robust list or signal handlers in it —
executed from a memfd (no file on disk, nothing to build at install time). The
restorer stops it at the exit of its ``execve`` and drives it entirely by
injected system calls through :data:`SYSCALL_ADDRESS`; it never runs a user
instruction of its own. Run untraced by mistake, it exits with status 127.

The bytes are assembled here rather than compiled: twelve instructions do not
justify a compiler at install time, and the repository holds no binaries.
"""

from __future__ import annotations

import os
import struct

BASE = 0x10000000
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
PT_LOAD = 1
PT_GNU_STACK = 0x6474E551  # without it the kernel gives the process READ_IMPLIES_EXEC
HEADERS = _EHDR.size + 2 * _PHDR.size

CODE = bytes(
    [
        0xB8,
        0x3C,
        0x00,
        0x00,
        0x00,  # mov eax, 60 (exit)
        0xBF,
        0x7F,
        0x00,
        0x00,
        0x00,  # mov edi, 127
        0x0F,
        0x05,  # syscall           <- injected calls run here
        0xEB,
        0xFE,  # jmp .
    ]
)
ENTRY = BASE + HEADERS
SYSCALL_ADDRESS = ENTRY + 10


def elf_image() -> bytes:
    size = HEADERS + len(CODE)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = _EHDR.pack(ident, 2, 0x3E, 1, ENTRY, _EHDR.size, 0, 0, _EHDR.size, _PHDR.size, 2, 64, 0, 0)
    load = _PHDR.pack(PT_LOAD, 5, 0, BASE, BASE, size, size, 0x1000)
    stack = _PHDR.pack(PT_GNU_STACK, 6, 0, 0, 0, 0, 0, 16)
    return header + load + stack + CODE


def memfd() -> int:
    """A sealed-size memfd holding the stub, ready for ``os.execve(fd, ...)``."""
    fd = os.memfd_create("mosix-restore", os.MFD_CLOEXEC)
    os.write(fd, elf_image())
    return fd


def spawn_traced(options: int) -> int:
    """A new restore stub, seized by us with ptrace ``options`` and stopped at the exit
    of its ``execve``, ready to be restored into (the caller reaps it)."""
    from mosix_core.linux import ptrace

    ready_r, ready_w = os.pipe()
    fd = memfd()
    child = os.fork()
    if child == 0:
        try:
            os.close(ready_w)
            os.read(ready_r, 1)
            os.execve(fd, ["mosix-restore"], {})
        finally:
            os._exit(127)
    os.close(ready_r)
    os.close(fd)
    try:
        ptrace.seize(child, options | ptrace.O_TRACEEXEC)  # the exec event is waited for
        os.write(ready_w, b"x")
    except BaseException:
        os.kill(child, 9)
        raise
    finally:
        os.close(ready_w)
    ptrace.wait_for(child)  # the exec event
    ptrace.syscall(child)
    ptrace.wait_for(child)  # execve's exit
    return child
