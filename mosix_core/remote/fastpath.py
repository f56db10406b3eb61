"""The guest's trap loop in C (``trap_loop.c``, built with cffi at install time).

The calls a guest forwards most are simple: values and at most one buffer the call
reads or writes (``read``, ``write``, ``pread64``, ``fstat``, ``lseek``, ``getppid``,
``close``...). For those the whole round — wait for the stop, read the call, send
it home, wait for the reply, write its buffer into the guest, set the result and
resume — runs in C, without returning to Python. Every other stop, every frame home
sends outside a call, a call interrupted at home, a call whose buffer cannot be read:
these come back to Python, which handles them exactly as it does without the helper.

:func:`shapes` derives the C table from the call table (``calls.SPECS``), so the two
cannot disagree. Without the compiled helper (not built, another platform)
:data:`AVAILABLE` is False and the guest host runs its Python loop alone.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import signal
from pathlib import Path

from mosix_core.errors import TraceError
from mosix_core.linux.libc import LIBC
from mosix_core.linux.syscall_names import NAMES
from mosix_core.remote import calls, guest
from mosix_core.remote.frames import MAX_FRAME

MODULE = "mosix_core.remote._trap_loop"
HERE = Path(__file__).resolve().parent

STOP, SOCKET, TIMEOUT, INTERRUPTED, RESTART, ERROR = 1, 2, 3, 4, 5, 6
SHAPE_NONE, SHAPE_VALUES, SHAPE_IN, SHAPE_OUT = 0, 1, 2, 3
FIXED = NONE = 255
FLAG_CLAMP = 1
#: calls the guest treats itself before anything is sent (see guest.Guest._trapped)
NOT_FAST = frozenset(
    guest.HOMEWARD
    | set(guest.EXITS)
    | {guest.SYS_MMAP, guest.SYS_SENDMSG, guest.SYS_RECVMSG}
    | set(guest.VECTORED)
    | guest.WALL_CALLS
    | {guest.SYS_FUTEX}
)
#: reads whose count is cut to one call's transfer (a read may return less)
CLAMPED = frozenset(guest.READS)
PENDING_ROOM = 1 << 20
SFD_NONBLOCK, SFD_CLOEXEC = 0o4000, 0o2000000


def _load():
    for path in sorted(HERE.glob("_trap_loop*.so")):
        spec = importlib.util.spec_from_file_location(
            MODULE, path, loader=importlib.machinery.ExtensionFileLoader(MODULE, str(path))
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return None


try:
    _compiled = _load()
except ImportError:
    _compiled = None
AVAILABLE = _compiled is not None


def shapes() -> list[tuple[int, int, int, int, int, int, int]]:
    """(kind, nargs, buffer, size_arg, fixed size, flags, string) by call number: values,
    at most one path (``string``, else NONE) and at most one buffer read or written —
    a path before a buffer the call reads, as the C side sends its inputs in order."""
    table = [(SHAPE_NONE, 0, 0, 0, 0, 0, NONE)] * (max(NAMES) + 1)
    for nr, spec in calls.SPECS.items():
        if nr in NOT_FAST or nr in calls.BY_COMMAND or nr >= len(table):
            continue
        strings = [index for index, arg in enumerate(spec.args) if arg.kind == calls.STRING]
        buffers = [(index, arg) for index, arg in enumerate(spec.args) if arg.kind not in (calls.VALUE, calls.STRING)]
        string = strings[0] if strings else NONE
        if len(strings) > 1 or len(buffers) > 1:
            continue
        if not buffers:
            table[nr] = (SHAPE_VALUES, len(spec.args), 0, 0, 0, 0, string)
            continue
        index, arg = buffers[0]
        if arg.kind not in (calls.IN, calls.OUT) or arg.unit != "byte" or arg.back not in ("size", "result"):
            continue
        if arg.size is None and arg.size_arg is None:
            continue
        if arg.kind == calls.IN and string != NONE and string > index:
            continue
        kind = SHAPE_IN if arg.kind == calls.IN else SHAPE_OUT
        size_arg, fixed = (FIXED, arg.size) if arg.size is not None else (arg.size_arg, 0)
        table[nr] = (kind, len(spec.args), index, size_arg, fixed, FLAG_CLAMP if nr in CLAMPED else 0, string)
    return table


class TrapLoop:
    """The C loop for guest ``pid``, over connected socket ``sock``, reading and
    writing the guest's memory through ``memory_fd`` (its /proc/PID/mem).
    ``wake_fd``: the caller's ``signal.set_wakeup_fd`` descriptor, if any (a signal
    for the caller ends the loop's wait: INTERRUPTED; the caller empties it)."""

    def __init__(self, pid: int, sock_fd: int, memory_fd: int, wake_fd: int = -1, spin: float = 0.0) -> None:
        if not AVAILABLE:
            raise TraceError("the C trap loop is not built")
        ffi, lib = _compiled.ffi, _compiled.lib
        self.ffi, self.lib = ffi, lib
        self.pid, self.sock_fd, self.memory_fd, self.wake_fd = pid, sock_fd, memory_fd, wake_fd
        table = shapes()
        self.shapes = ffi.new("struct shape[]", len(table))
        for nr, (kind, nargs, buffer, size_arg, fixed, flags, string) in enumerate(table):
            entry = self.shapes[nr]
            entry.kind, entry.nargs, entry.buffer, entry.size_arg, entry.fixed, entry.flags, entry.string = (
                kind,
                nargs,
                buffer,
                size_arg,
                fixed,
                flags,
                string,
            )
        self.buffer = ffi.new("uint8_t[]", MAX_FRAME + 8)
        self.pending = ffi.new("uint8_t[]", PENDING_ROOM)
        self.status = ffi.new("int *")
        self.result = ffi.new("int64_t *")
        mask = bytearray(128)  # a glibc sigset_t holding SIGCHLD
        mask[(signal.SIGCHLD - 1) // 8] |= 1 << ((signal.SIGCHLD - 1) % 8)
        self.sigfd = LIBC.signalfd(-1, bytes(mask), SFD_NONBLOCK | SFD_CLOEXEC)
        if self.sigfd < 0:
            raise TraceError("signalfd(SIGCHLD) failed")
        # the C loop's own record: it keeps pointers to the arrays above, which live as long as self
        self.loop = ffi.new(
            "struct trap_loop *",
            {
                "pid": pid,
                "sock": sock_fd,
                "mem": memory_fd,
                "sigfd": self.sigfd,
                "wakefd": wake_fd,
                "shapes": self.shapes,
                "nshapes": len(table),
                "buf": self.buffer,
                "room": MAX_FRAME + 8,
                "pending": self.pending,
                "pending_room": PENDING_ROOM,
                "spin_ns": int(spin * 1e9),
            },
        )

    def serve(self, timeout: float) -> tuple[int, int, int, list[bytes]]:
        """Run until Python is needed: (what, status, result, the frames home sent
        during a call). ``what``: STOP (``status`` is a waitpid status), SOCKET (a
        frame waits, or frames came during a call), TIMEOUT, INTERRUPTED (a signal
        for us), RESTART (call ``status`` was interrupted at home with ``result``),
        ERROR (``status`` is an errno)."""
        what = self.lib.trap_serve(self.loop, int(timeout * 1000), self.status, self.result)
        frames = []
        data = bytes(self.ffi.buffer(self.pending, self.loop.pending_len))
        at = 0
        while at < len(data):
            length = int.from_bytes(data[at : at + 4], "little")
            frames.append(data[at + 4 : at + 4 + length])
            at += 4 + length
        return what, self.status[0], self.result[0], frames

    @property
    def handled(self) -> int:
        return self.loop.handled
