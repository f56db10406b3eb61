"""What a forwarded system call carries between a migrated process and its home.

While a process runs away from home, the calls that touch the outside world are
performed at home (mosix(7): the process "behaves as if it never left"). A call's
arguments are plain values or pointers into the process's memory, and the memory
stays where the process runs. So each forwarded call is described here: which
arguments are values, which point at memory the call *reads* (sent home with the
request), and which at memory it *writes* (sent back with the reply, and written
into the process where its pointer said).

The guest side builds a :class:`Request` with :func:`marshal`, reading the
process's memory through a callback; the home side (:mod:`mosix_core.remote.deputy`)
runs it and answers a :class:`Reply`; the guest side puts the reply's output
buffers back with :func:`unmarshal`. Nothing here touches a process or a socket.

Sizes are x86-64 Linux's: ``struct stat`` 144 bytes, ``struct statx`` 256,
the kernel's ``struct termios`` 36, ``struct winsize`` 8.
"""

from __future__ import annotations

from typing import Callable

import attrs

from mosix_core.errors import MosixError
from mosix_core.linux.inject import signed
from mosix_core.linux.syscall_names import NUMBERS

STAT_SIZE = 144
STATX_SIZE = 256
TERMIOS_SIZE = 36
WINSIZE_SIZE = 8
PATH_MAX = 4096
#: one call's buffers, in and out together: a larger read or write must be split by
#: the guest side (a read may return less than asked; a write is repeated)
MAX_TRANSFER = 4 << 20

VALUE, STRING, IN, OUT, INOUT = "value", "string", "in", "out", "inout"


class CannotForward(MosixError):
    """A call (or an ioctl request) this table does not describe."""


@attrs.frozen
class Arg:
    """One argument of a forwarded call.

    ``size``: a fixed size in bytes; ``size_arg``: the size is that argument's value;
    for OUT buffers, ``back="result"`` sends back only as many bytes as the call
    returned (``read``), ``back="size"`` the whole buffer (``fstat``)."""

    kind: str = VALUE
    size: int | None = None
    size_arg: int | None = None
    back: str = "size"
    # how ``size_arg`` counts: bytes, or "fd_set" (descriptors: a bit each, whole
    # 64-bit words) or "pollfd" (8-byte entries)
    unit: str = "byte"


def _in(size_arg: int | None = None, size: int | None = None) -> Arg:
    return Arg(IN, size, size_arg)


def _out(size_arg: int | None = None, size: int | None = None, back: str = "size") -> Arg:
    return Arg(OUT, size, size_arg, back)


_V = Arg()
_S = Arg(STRING)


@attrs.frozen
class CallSpec:
    name: str
    args: tuple[Arg, ...]

    @property
    def nr(self) -> int:
        return NUMBERS[self.name]


SPECS: dict[int, CallSpec] = {}


def _spec(name: str, *args: Arg) -> None:
    SPECS[NUMBERS[name]] = CallSpec(name, args)


# files
_spec("read", _V, _out(size_arg=2, back="result"), _V)
_spec("write", _V, _in(size_arg=2), _V)
_spec("pread64", _V, _out(size_arg=2, back="result"), _V, _V)
_spec("pwrite64", _V, _in(size_arg=2), _V, _V)
_spec("open", _S, _V, _V)
_spec("openat", _V, _S, _V, _V)
_spec("close", _V)
_spec("lseek", _V, _V, _V)
_spec("fstat", _V, _out(size=STAT_SIZE))
_spec("stat", _S, _out(size=STAT_SIZE))
_spec("lstat", _S, _out(size=STAT_SIZE))
_spec("newfstatat", _V, _S, _out(size=STAT_SIZE), _V)
_spec("statx", _V, _S, _V, _V, _out(size=STATX_SIZE))
_spec("access", _S, _V)
_spec("faccessat", _V, _S, _V)
_spec("faccessat2", _V, _S, _V, _V)
_spec("getdents64", _V, _out(size_arg=2, back="result"), _V)
_spec("readlink", _S, _out(size_arg=2, back="result"), _V)
_spec("readlinkat", _V, _S, _out(size_arg=3, back="result"), _V)
_spec("dup", _V)
_spec("dup2", _V, _V)
_spec("dup3", _V, _V, _V)
_spec("pipe2", _out(size=8), _V)
_spec("unlink", _S)
_spec("unlinkat", _V, _S, _V)
_spec("mkdir", _S, _V)
_spec("mkdirat", _V, _S, _V)
_spec("rmdir", _S)
_spec("rename", _S, _S)
_spec("renameat2", _V, _S, _V, _S, _V)
_spec("ftruncate", _V, _V)
_spec("truncate", _S, _V)
_spec("fsync", _V)
_spec("fdatasync", _V)
_spec("chmod", _S, _V)
_spec("fchmod", _V, _V)
_spec("umask", _V)
# where the process is
_spec("getcwd", _out(size_arg=1, back="size"), _V)
_spec("chdir", _S)
_spec("fchdir", _V)
# who the process is (answered by its home: same pid, same parent, same identity)
_spec("getpid")
_spec("getppid")
_spec("getuid")
_spec("geteuid")
_spec("getgid")
_spec("getegid")
_spec("getpgrp")
_spec("getpgid", _V)
_spec("getsid", _V)
_spec("setpgid", _V, _V)
_spec("setsid")
_spec("kill", _V, _V)
_spec("uname", _out(size=390))
_spec("gettid")
# waiting on descriptors (a wait without any runs where the process is)
_FDSET = Arg(INOUT, size_arg=0, unit="fd_set")
_spec("select", _V, _FDSET, _FDSET, _FDSET, Arg(INOUT, size=16))
_spec("poll", Arg(INOUT, size_arg=1, unit="pollfd"), _V, _V)

# ioctl: the requests a terminal program makes, by request number
TCGETS, TCSETS, TCSETSW, TCSETSF = 0x5401, 0x5402, 0x5403, 0x5404
TIOCGPGRP, TIOCSPGRP, TIOCGWINSZ, TIOCSWINSZ, FIONREAD = 0x540F, 0x5410, 0x5413, 0x5414, 0x541B
IOCTLS: dict[int, Arg] = {
    TCGETS: _out(size=TERMIOS_SIZE),
    TCSETS: _in(size=TERMIOS_SIZE), TCSETSW: _in(size=TERMIOS_SIZE), TCSETSF: _in(size=TERMIOS_SIZE),
    TIOCGPGRP: _out(size=4), TIOCSPGRP: _in(size=4),
    TIOCGWINSZ: _out(size=WINSIZE_SIZE), TIOCSWINSZ: _in(size=WINSIZE_SIZE),
    FIONREAD: _out(size=4),
}
SYS_IOCTL = NUMBERS["ioctl"]


@attrs.frozen
class Request:
    """A call to perform at home: argument values (pointers as the process had them;
    only NULL or not matters at home), the bytes of its input buffers, the sizes of
    its output buffers, both by argument index."""

    nr: int
    args: tuple[int, ...]
    inputs: tuple[tuple[int, bytes], ...] = ()
    outputs: tuple[tuple[int, int], ...] = ()


@attrs.frozen
class Reply:
    result: int                                   # as the kernel returned it: -errno on failure
    outputs: tuple[tuple[int, bytes], ...] = ()   # what the call wrote, by argument index


def spec_of(nr: int, args: tuple[int, ...]) -> tuple[Arg, ...]:
    """The argument kinds of call ``nr`` with these arguments; CannotForward if unknown."""
    if nr == SYS_IOCTL:
        request = args[1] & 0xFFFFFFFF
        arg = IOCTLS.get(request)
        if arg is None:
            raise CannotForward(f"ioctl request {request:#x}")
        return (_V, _V, arg)
    spec = SPECS.get(nr)
    if spec is None:
        raise CannotForward(f"system call {nr}")
    return spec.args


def _size(arg: Arg, args: tuple[int, ...]) -> int:
    if arg.size is not None:
        size = arg.size
    else:
        count = signed(args[arg.size_arg])
        size = {"byte": count, "fd_set": (count + 63) // 64 * 8, "pollfd": count * 8}[arg.unit]
    if size < 0 or size > MAX_TRANSFER:
        raise CannotForward(f"a buffer of {size} bytes (at most {MAX_TRANSFER} go in one call)")
    return size


def marshal(nr: int, args: tuple[int, ...], read: Callable[[int, int], bytes],
            read_string: Callable[[int], bytes]) -> Request:
    """The request for call ``nr``; ``read(address, size)`` and ``read_string(address)``
    (without the NUL) read the process's memory. A NULL pointer stays NULL."""
    kinds = spec_of(nr, args)
    inputs, outputs = [], []
    total = 0
    for index, arg in enumerate(kinds):
        pointer = args[index] if index < len(args) else 0
        if arg.kind == VALUE or pointer == 0:
            continue
        if arg.kind == STRING:
            data = read_string(pointer)
            if len(data) >= PATH_MAX:
                raise CannotForward("a path longer than PATH_MAX")
            inputs.append((index, data + b"\0"))
            total += len(data) + 1
            continue
        size = _size(arg, args)
        total += size
        if arg.kind in (IN, INOUT):
            inputs.append((index, read(pointer, size)))
        if arg.kind in (OUT, INOUT):
            outputs.append((index, size))
    if total > MAX_TRANSFER:
        raise CannotForward(f"{total} bytes of buffers in one call (at most {MAX_TRANSFER})")
    return Request(nr, tuple(args[:len(kinds)]), tuple(inputs), tuple(outputs))


def reply_outputs(request: Request, result: int, read: Callable[[int, int], bytes]) -> tuple[tuple[int, bytes], ...]:
    """At home, after the call: what its output buffers hold now, ``read(index, size)``
    reading the buffer of argument ``index``. Nothing when the call failed."""
    if result < 0:
        return ()
    kinds = spec_of(request.nr, request.args)
    out = []
    for index, capacity in request.outputs:
        size = min(result, capacity) if kinds[index].back == "result" else capacity
        out.append((index, read(index, size)))
    return tuple(out)


def unmarshal(request: Request, reply: Reply, write: Callable[[int, bytes], None]) -> int:
    """Back where the process runs: write the reply's buffers where the process's
    pointers said (``write(address, data)``); the call's result."""
    capacity = dict(request.outputs)
    for index, data in reply.outputs:
        if index not in capacity or len(data) > capacity[index]:
            raise CannotForward(f"a reply writes {len(data)} bytes to argument {index}")
        write(request.args[index], data)
    return reply.result
