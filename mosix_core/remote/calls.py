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
the kernel's ``struct termios`` 36, ``struct winsize`` 8, ``struct statfs`` 120,
``struct rusage`` 144, ``siginfo_t`` 128, ``struct flock`` 32, ``struct
epoll_event`` 12 (packed).

A buffer the kernel may leave partly unwritten on success (``wait4``'s status when
no child was reaped, the ``siginfo_t`` fields ``waitid`` does not set, the bytes of
a socket address past its length) is INOUT or sent back only as far as it was
written: what comes back is written over the process's memory, and must be what the
call left there, not what the home side's scratch area held.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import attrs

from mosix_core.errors import MosixError, TraceError
from mosix_core.linux.inject import signed
from mosix_core.linux.syscall_names import NUMBERS

STAT_SIZE = 144
STATX_SIZE = 256
TERMIOS_SIZE = 36
WINSIZE_SIZE = 8
STATFS_SIZE = 120
RUSAGE_SIZE = 144
SIGINFO_SIZE = 128
FLOCK_SIZE = 32
TIMESPEC_SIZE = 16  # also a struct timeval
PATH_MAX = 4096
#: one call's buffers, in and out together: a larger read or write must be split by
#: the guest side (a read may return less than asked; a write is repeated)
MAX_TRANSFER = 4 << 20
#: A guest reports a call made through the 32-bit ABI (``int $0x80``...) home as this
#: plus the call's i386 number: request numbers are 16 bits, and no 64-bit call is
#: numbered this high, so the report cannot be taken for the 64-bit call it shares a
#: number with.
FOREIGN_ABI_CALL = 0x8000
#: Not a system call: a guest tells home where it mapped, MAP_PRIVATE, a file the
#: process mapped MAP_SHARED read-only (address, length), so home's rules can refuse
#: adding PROT_WRITE to that range wherever the process is later.
MAPPED_PRIVATELY = 0x7FFF
#: Calls on the process's own memory and time that a guest makes where it is, once
#: home's rules allowed them (home answers 0, or the call's error): mprotect adding
#: PROT_WRITE, madvise, clock_nanosleep other than a relative REALTIME/MONOTONIC sleep.
RUN_WHERE_IT_IS = frozenset(NUMBERS[name] for name in ("mprotect", "madvise", "clock_nanosleep"))

VALUE, STRING, IN, OUT, INOUT = "value", "string", "in", "out", "inout"
#: a pointer that can only be carried when it is NULL (it points at more pointers)
NULL_ONLY = "null only"
#: bytes per entry, for sizes counted in entries (``fd_set`` is counted in bits: see _size)
UNITS = {"byte": 1, "int": 4, "pollfd": 8, "epoll_event": 12}


class CannotForward(MosixError):
    """A call (or an ioctl request) this table does not describe."""


@attrs.frozen
class Arg:
    """One argument of a forwarded call.

    ``size``: a fixed size in bytes; ``size_arg``: the size is that argument's value;
    for OUT buffers, ``back="result"`` sends back only as many entries as the call
    returned (``read``: bytes; ``getgroups``: ints), ``back="size"`` the whole
    buffer (``fstat``), ``back="socklen"`` as many bytes as the ``socklen_t`` at
    ``size_arg`` says after the call (``accept``'s address)."""

    kind: str = VALUE
    size: int | None = None
    size_arg: int | None = None
    back: str = "size"
    # how ``size_arg`` counts: entries of a UNITS size, or "fd_set" (descriptors: a
    # bit each, whole 64-bit words), or "socklen": ``size_arg`` is a pointer, and the
    # size is the ``socklen_t`` it points at (in the process's memory: the address
    # length of ``accept``, the option length of ``getsockopt``)
    unit: str = "byte"


def _in(size_arg: int | None = None, size: int | None = None) -> Arg:
    return Arg(IN, size, size_arg)


def _out(size_arg: int | None = None, size: int | None = None, back: str = "size") -> Arg:
    return Arg(OUT, size, size_arg, back)


def _inout(size: int) -> Arg:
    return Arg(INOUT, size)


def _out_socklen(length_arg: int) -> Arg:
    """A buffer the kernel fills up to the length at ``length_arg`` (an INOUT
    ``socklen_t``), setting that length: to the address's whole length (``accept``:
    more than it wrote when the buffer was short), to what it wrote (``getsockopt``)."""
    return Arg(OUT, size_arg=length_arg, back="socklen", unit="socklen")


_V = Arg()
_S = Arg(STRING)
_NULL = Arg(NULL_ONLY)
_SOCKLEN = _inout(4)


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
_spec("getdents", _V, _out(size_arg=2, back="result"), _V)
_spec("readlink", _S, _out(size_arg=2, back="result"), _V)
_spec("readlinkat", _V, _S, _out(size_arg=3, back="result"), _V)
_spec("dup", _V)
_spec("dup2", _V, _V)
_spec("dup3", _V, _V, _V)
_spec("pipe", _out(size=8))
_spec("pipe2", _out(size=8), _V)
_spec("creat", _S, _V)
_spec("openat2", _V, _S, _in(size_arg=3), _V)
_spec("close_range", _V, _V, _V)
_spec("unlink", _S)
_spec("unlinkat", _V, _S, _V)
_spec("mkdir", _S, _V)
_spec("mkdirat", _V, _S, _V)
_spec("rmdir", _S)
_spec("rename", _S, _S)
_spec("renameat", _V, _S, _V, _S)
_spec("renameat2", _V, _S, _V, _S, _V)
_spec("link", _S, _S)
_spec("linkat", _V, _S, _V, _S, _V)
_spec("symlink", _S, _S)  # the target is a string too
_spec("symlinkat", _S, _V, _S)
_spec("mknod", _S, _V, _V)
_spec("mknodat", _V, _S, _V, _V)
_spec("ftruncate", _V, _V)
_spec("truncate", _S, _V)
_spec("fsync", _V)
_spec("fdatasync", _V)
_spec("sync")
_spec("syncfs", _V)
_spec("sync_file_range", _V, _V, _V, _V)
_spec("fadvise64", _V, _V, _V, _V)
_spec("readahead", _V, _V, _V)
_spec("fallocate", _V, _V, _V, _V)
_spec("flock", _V, _V)
# the offsets are read and moved on by the call; NULL: the files' own offsets
_spec("sendfile", _V, _V, _inout(8), _V)
_spec("copy_file_range", _V, _inout(8), _V, _inout(8), _V, _V)
_spec("chmod", _S, _V)
_spec("fchmod", _V, _V)
_spec("fchmodat", _V, _S, _V)
_spec("fchmodat2", _V, _S, _V, _V)
_spec("chown", _S, _V, _V)
_spec("fchown", _V, _V, _V)
_spec("lchown", _S, _V, _V)
_spec("fchownat", _V, _S, _V, _V, _V)
_spec("utime", _S, _in(size=16))  # struct utimbuf; NULL: now
_spec("utimes", _S, _in(size=2 * TIMESPEC_SIZE))
_spec("futimesat", _V, _S, _in(size=2 * TIMESPEC_SIZE))
_spec("utimensat", _V, _S, _in(size=2 * TIMESPEC_SIZE), _V)  # a NULL path: the descriptor itself
_spec("statfs", _S, _out(size=STATFS_SIZE))
_spec("fstatfs", _V, _out(size=STATFS_SIZE))
_spec("umask", _V)
# extended attributes (ls -l, cp -a): the names are strings; a size of 0 asks for the size
_spec("getxattr", _S, _S, _out(size_arg=3, back="result"), _V)
_spec("lgetxattr", _S, _S, _out(size_arg=3, back="result"), _V)
_spec("fgetxattr", _V, _S, _out(size_arg=3, back="result"), _V)
_spec("listxattr", _S, _out(size_arg=2, back="result"), _V)
_spec("llistxattr", _S, _out(size_arg=2, back="result"), _V)
_spec("flistxattr", _V, _out(size_arg=2, back="result"), _V)
_spec("setxattr", _S, _S, _in(size_arg=3), _V, _V)
_spec("lsetxattr", _S, _S, _in(size_arg=3), _V, _V)
_spec("fsetxattr", _V, _S, _in(size_arg=3), _V, _V)
_spec("removexattr", _S, _S)
_spec("lremovexattr", _S, _S)
_spec("fremovexattr", _V, _S)
# descriptors that are files at home: what they report is read with read()
_spec("inotify_init")
_spec("inotify_init1", _V)
_spec("inotify_add_watch", _V, _S, _V)
_spec("inotify_rm_watch", _V, _V)
_spec("eventfd", _V)
_spec("eventfd2", _V, _V)
# (not timerfd: its clocks would be home's, and an absolute CLOCK_MONOTONIC time the
# process read where it runs means nothing there)
# where the process is
_spec("getcwd", _out(size_arg=1, back="result"), _V)  # the length, with its NUL
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
_spec("getresuid", _out(size=4), _out(size=4), _out(size=4))
_spec("getresgid", _out(size=4), _out(size=4), _out(size=4))
_spec("getgroups", _V, Arg(OUT, size_arg=0, back="result", unit="int"))  # 0 entries: how many
_spec("getpriority", _V, _V)  # 20 - nice, as the kernel returns it
_spec("setpriority", _V, _V, _V)
_spec("uname", _out(size=390))
_spec("gettid")
# scheduling, as home's rules answer it (sched_getaffinity: a mask of one CPU) or as
# the process at home has it
_spec("sched_getaffinity", _V, _V, _out(size_arg=1, back="result"))
_spec("sched_getparam", _V, _out(size=4))
_spec("sched_getscheduler", _V)
_spec("sched_get_priority_max", _V)
_spec("sched_get_priority_min", _V)
# its family: signals and waits (its children are at home, children of its home self)
_spec("kill", _V, _V)
_spec("tkill", _V, _V)
_spec("tgkill", _V, _V, _V)
_spec("rt_sigqueueinfo", _V, _V, _in(size=SIGINFO_SIZE))
_spec("rt_tgsigqueueinfo", _V, _V, _V, _in(size=SIGINFO_SIZE))
_spec("pidfd_open", _V, _V)
_spec("pidfd_send_signal", _V, _V, _in(size=SIGINFO_SIZE), _V)
# INOUT: wait4 writes the status and usage only when it reaped a child (WNOHANG may
# return 0), waitid only some fields of the siginfo (and the usage only for a child)
_spec("wait4", _V, _inout(4), _V, _inout(RUSAGE_SIZE))
_spec("waitid", _V, _V, _inout(SIGINFO_SIZE), _V, _inout(RUSAGE_SIZE))
# sockets: addresses in with their length, out up to the length the process gave
_spec("socket", _V, _V, _V)
_spec("socketpair", _V, _V, _V, _out(size=8))
_spec("connect", _V, _in(size_arg=2), _V)
_spec("bind", _V, _in(size_arg=2), _V)
_spec("listen", _V, _V)
_spec("shutdown", _V, _V)
_spec("accept", _V, _out_socklen(2), _SOCKLEN)
_spec("accept4", _V, _out_socklen(2), _SOCKLEN, _V)
_spec("getsockname", _V, _out_socklen(2), _SOCKLEN)
_spec("getpeername", _V, _out_socklen(2), _SOCKLEN)
_spec("sendto", _V, _in(size_arg=2), _V, _V, _in(size_arg=5), _V)
_spec("recvfrom", _V, _out(size_arg=2, back="result"), _V, _V, _out_socklen(5), _SOCKLEN)
_spec("setsockopt", _V, _V, _V, _in(size_arg=4), _V)
_spec("getsockopt", _V, _V, _V, _out_socklen(4), _SOCKLEN)
# waiting on descriptors (a wait without any runs where the process is)
_FDSET = Arg(INOUT, size_arg=0, unit="fd_set")
_spec("select", _V, _FDSET, _FDSET, _FDSET, Arg(INOUT, size=16))
_spec("poll", Arg(INOUT, size_arg=1, unit="pollfd"), _V, _V)
# (glibc's select() is pselect6; the kernel writes back the time left.) pselect6's
# last argument points at {sigset pointer, size}: only NULL is carried
_spec("pselect6", _V, _FDSET, _FDSET, _FDSET, _inout(TIMESPEC_SIZE), _NULL)
_spec("ppoll", Arg(INOUT, size_arg=1, unit="pollfd"), _V, _inout(TIMESPEC_SIZE), _in(size_arg=4), _V)
_spec("epoll_create", _V)
_spec("epoll_create1", _V)
_spec("epoll_ctl", _V, _V, _V, _in(size=UNITS["epoll_event"]))  # NULL for EPOLL_CTL_DEL
_EVENTS = Arg(OUT, size_arg=2, back="result", unit="epoll_event")
_spec("epoll_wait", _V, _EVENTS, _V, _V)
_spec("epoll_pwait", _V, _EVENTS, _V, _V, _in(size_arg=5), _V)
_spec("epoll_pwait2", _V, _EVENTS, _V, _in(size=TIMESPEC_SIZE), _in(size_arg=5), _V)

# ioctl: the requests a terminal program makes, by request number
TCGETS, TCSETS, TCSETSW, TCSETSF = 0x5401, 0x5402, 0x5403, 0x5404
TCSBRK, TCXONC, TCFLSH, TIOCEXCL, TIOCNXCL, TIOCSCTTY = 0x5409, 0x540A, 0x540B, 0x540C, 0x540D, 0x540E
TIOCGPGRP, TIOCSPGRP, TIOCOUTQ, TIOCGWINSZ, TIOCSWINSZ, FIONREAD = 0x540F, 0x5410, 0x5411, 0x5413, 0x5414, 0x541B
FIONBIO, TIOCNOTTY, TCSBRKP, TIOCGSID, TIOCGPTPEER = 0x5421, 0x5422, 0x5425, 0x5429, 0x5441
FIONCLEX, FIOCLEX, FIOASYNC = 0x5450, 0x5451, 0x5452
TIOCGPTN, TIOCSPTLCK = 0x80045430, 0x40045431
IOCTLS: dict[int, Arg] = {
    TCGETS: _out(size=TERMIOS_SIZE),
    TCSETS: _in(size=TERMIOS_SIZE),
    TCSETSW: _in(size=TERMIOS_SIZE),
    TCSETSF: _in(size=TERMIOS_SIZE),
    TIOCGPGRP: _out(size=4),
    TIOCSPGRP: _in(size=4),
    TIOCGWINSZ: _out(size=WINSIZE_SIZE),
    TIOCSWINSZ: _in(size=WINSIZE_SIZE),
    FIONREAD: _out(size=4),
    TIOCOUTQ: _out(size=4),
    TIOCGSID: _out(size=4),
    # the argument is a value, or unused
    TCSBRK: _V,
    TCSBRKP: _V,
    TCXONC: _V,
    TCFLSH: _V,
    TIOCSCTTY: _V,
    TIOCNOTTY: _V,
    TIOCEXCL: _V,
    TIOCNXCL: _V,
    FIOCLEX: _V,
    FIONCLEX: _V,
    FIONBIO: _in(size=4),
    FIOASYNC: _in(size=4),  # Python's setblocking() is FIONBIO
    # opening a pseudo-terminal (glibc's openpty)
    TIOCGPTN: _out(size=4),
    TIOCSPTLCK: _in(size=4),
    TIOCGPTPEER: _V,
}
SYS_IOCTL = NUMBERS["ioctl"]

# fcntl, by command: most take a value; the locks a struct flock, which F_GETLK
# and F_OFD_GETLK also write back (the lock in the way, or F_UNLCK)
F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_GETLK, F_SETLK, F_SETLKW = 0, 1, 2, 3, 4, 5, 6, 7
F_SETOWN, F_GETOWN, F_SETSIG, F_GETSIG, F_SETOWN_EX, F_GETOWN_EX = 8, 9, 10, 11, 15, 16
F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW = 36, 37, 38
F_SETLEASE, F_GETLEASE, F_NOTIFY, F_DUPFD_CLOEXEC = 1024, 1025, 1026, 1030
F_SETPIPE_SZ, F_GETPIPE_SZ, F_ADD_SEALS, F_GET_SEALS = 1031, 1032, 1033, 1034
FCNTLS: dict[int, Arg] = {
    **{
        command: _V
        for command in (
            F_DUPFD,
            F_DUPFD_CLOEXEC,
            F_GETFD,
            F_SETFD,
            F_GETFL,
            F_SETFL,
            F_SETOWN,
            F_GETOWN,
            F_SETSIG,
            F_GETSIG,
            F_SETLEASE,
            F_GETLEASE,
            F_NOTIFY,
            F_SETPIPE_SZ,
            F_GETPIPE_SZ,
            F_ADD_SEALS,
            F_GET_SEALS,
        )
    },
    F_GETLK: _inout(FLOCK_SIZE),
    F_OFD_GETLK: _inout(FLOCK_SIZE),
    F_SETLK: _in(size=FLOCK_SIZE),
    F_SETLKW: _in(size=FLOCK_SIZE),
    F_OFD_SETLK: _in(size=FLOCK_SIZE),
    F_OFD_SETLKW: _in(size=FLOCK_SIZE),
    F_SETOWN_EX: _in(size=8),
    F_GETOWN_EX: _out(size=8),  # struct f_owner_ex
}
SYS_FCNTL = NUMBERS["fcntl"]
#: the calls whose third argument is described by their second (request, command)
BY_COMMAND = {SYS_IOCTL: ("ioctl request", IOCTLS), SYS_FCNTL: ("fcntl command", FCNTLS)}

# prctl, by option (its first argument), for the options home's rules let a process
# make on itself (rules.SELF_PRCTLS): made on the process at home, whose name and parent
# are the ones everybody sees; the others take values or nothing
PR_SET_PDEATHSIG, PR_GET_PDEATHSIG, PR_SET_NAME, PR_GET_NAME, PR_GET_CHILD_SUBREAPER = 1, 2, 15, 16, 37
PRCTLS: dict[int, Arg] = {
    PR_SET_PDEATHSIG: _V,
    PR_GET_PDEATHSIG: _out(size=4),
    PR_SET_NAME: _S,
    PR_GET_NAME: _out(size=16),
    PR_GET_CHILD_SUBREAPER: _out(size=4),
    **{option: _V for option in (3, 7, 23, 27, 30, 39, 42)},
}
SYS_PRCTL = NUMBERS["prctl"]


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
    result: int  # as the kernel returned it: -errno on failure
    outputs: tuple[tuple[int, bytes], ...] = ()  # what the call wrote, by argument index


def forwardable(request: Request) -> bool:
    """A call the deputy can make for the guest (its end, too: exit_group)."""
    if request.nr == NUMBERS["exit_group"]:
        return True
    try:
        spec_of(request.nr, request.args)
    except CannotForward:
        return False
    return True


def unforwardable_error(nr: int) -> int:
    """The errno a call fails with when its home cannot make it for the guest: an
    fcntl command or ioctl request no table describes fails as an unknown one does
    (EINVAL, ENOTTY), any other call with ENOSYS."""
    return {SYS_FCNTL: errno.EINVAL, SYS_IOCTL: errno.ENOTTY}.get(nr, errno.ENOSYS)


def spec_of(nr: int, args: tuple[int, ...]) -> tuple[Arg, ...]:
    """The argument kinds of call ``nr`` with these arguments; CannotForward if unknown."""
    if nr == SYS_PRCTL:
        arg = PRCTLS.get(args[0] if args else -1)
        if arg is None:
            raise CannotForward(f"prctl option {args[0] if args else None}")
        return (_V, arg, _V, _V, _V)
    if nr in BY_COMMAND:
        what, table = BY_COMMAND[nr]
        command = args[1] & 0xFFFFFFFF
        arg = table.get(command)
        if arg is None:
            raise CannotForward(f"{what} {command:#x}")
        return (_V, _V, arg)
    spec = SPECS.get(nr)
    if spec is None:
        raise CannotForward(f"system call {nr}")
    return spec.args


def _size(arg: Arg, args: tuple[int, ...], read: Callable[[int, int], bytes]) -> int:
    if arg.size is not None:
        size = arg.size
    elif arg.unit == "socklen":
        pointer = args[arg.size_arg]
        # a NULL or negative length: nothing to carry (the kernel at home refuses it)
        size = max(0, int.from_bytes(read(pointer, 4), "little", signed=True)) if pointer else 0
    elif arg.unit == "fd_set":
        size = (signed(args[arg.size_arg]) + 63) // 64 * 8
    else:
        size = signed(args[arg.size_arg]) * UNITS[arg.unit]
    if size < 0 or size > MAX_TRANSFER:
        raise CannotForward(f"a buffer of {size} bytes (at most {MAX_TRANSFER} go in one call)")
    return size


#: calls that write what they can of a buffer that runs off the process's memory
_PARTIAL_WRITES = frozenset(NUMBERS[name] for name in ("write", "pwrite64"))


def marshal(
    nr: int, args: tuple[int, ...], read: Callable[[int, int], bytes], read_string: Callable[[int], bytes]
) -> Request:
    """The request for call ``nr``; ``read(address, size)`` and ``read_string(address)``
    (without the NUL) read the process's memory. A NULL pointer stays NULL. A buffer
    that runs off the process's memory is :class:`TraceError` EFAULT, except a write's:
    that writes the part that could be read, as the kernel's does."""
    kinds = spec_of(nr, args)
    args = tuple(args)
    inputs, outputs = [], []
    total = 0
    for index, arg in enumerate(kinds):
        pointer = args[index] if index < len(args) else 0
        if arg.kind == VALUE or pointer == 0:
            continue
        if arg.kind == NULL_ONLY:
            raise CannotForward(f"argument {index} of system call {nr} points at pointers")
        if arg.kind == STRING:
            data = read_string(pointer)
            if len(data) >= PATH_MAX:
                raise CannotForward("a path longer than PATH_MAX")
            inputs.append((index, data + b"\0"))
            total += len(data) + 1
            continue
        size = _size(arg, args, read)
        total += size
        if arg.kind in (IN, INOUT):
            data = read(pointer, size)
            if len(data) < size:
                if nr not in _PARTIAL_WRITES or not data:
                    raise TraceError(
                        f"argument {index} of system call {nr} runs off the process's memory", errno.EFAULT
                    )
                args = args[:2] + (len(data),) + args[3:]  # a short write
            inputs.append((index, data))
        if arg.kind in (OUT, INOUT):
            outputs.append((index, size))
    if total > MAX_TRANSFER:
        raise CannotForward(f"{total} bytes of buffers in one call (at most {MAX_TRANSFER})")
    return Request(nr, tuple(args[: len(kinds)]), tuple(inputs), tuple(outputs))


def reply_outputs(request: Request, result: int, read: Callable[[int, int], bytes]) -> tuple[tuple[int, bytes], ...]:
    """At home, after the call: what its output buffers hold now, ``read(index, size)``
    reading the buffer of argument ``index``. Nothing when the call failed."""
    if result < 0:
        return ()
    kinds = spec_of(request.nr, request.args)
    capacities = dict(request.outputs)
    out = []
    for index, capacity in request.outputs:
        arg = kinds[index]
        if arg.back == "result":
            size = min(result * UNITS[arg.unit], capacity)
        elif arg.back == "socklen":
            # the length the call set (more than the buffer when it was truncated);
            # none if the length's pointer was NULL (the call then failed, EFAULT)
            length = read(arg.size_arg, 4) if arg.size_arg in capacities else bytes(4)
            size = min(max(0, int.from_bytes(length, "little", signed=True)), capacity)
        else:
            size = capacity
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
