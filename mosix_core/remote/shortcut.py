"""Calls of a migrated process that its home answers without the deputy.

A call the deputy makes costs stops of the home shell: its inputs are written into
the shell, the call is injected, the shell stops after it. For the commonest calls
on regular files — read, write, their p- forms, lseek, fstat — and for its own
identity (getpid, gettid, getppid) the home side can do better: it borrows the process's descriptor
(``pidfd_getfd``: the same open file,
so the same offset, flags and position) and makes the call itself. A regular file
never blocks, so the supervisor's loop is never held; any other descriptor (a
terminal, a pipe, a socket), and every other call, goes to the deputy as before.

The borrowed descriptors are those of the process's descriptor table as it was; a
call that may change the table (open, close, dup...) forgets them all (before it is
made: a pipe's reader sees its end when the process closes its copy).

A read or write on a pipe or socket (and a recv or send without an address on a
socket) is made here too, when it need not wait: with ``RWF_NOWAIT`` (``MSG_DONTWAIT``),
which leaves the open file's own flags alone. A read takes what is
there (a read that would wait returns the same once something comes; an empty pipe
goes to the deputy, which waits). A write that would wait, fails with EPIPE (the
process must get its SIGPIPE) or is refused goes to the deputy whole; one that was
written in part goes to the deputy for the rest (:class:`WrittenInPart`), and its
answer is the two parts' sum, as a write that waited half-way answers.

A large write to a regular file is *poured*: written piece by piece as its data
arrives, so the file is being written while the rest is still on its way (on two
CPUs that doubles a forwarded write's speed). A kernel's write is not atomic on a
regular file either: should the link be lost half-way, the pieces that came are in
the file, as if the process had been killed in the middle of its write.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import stat
import struct
from collections.abc import Callable

import attrs

from mosix_core.errors import TraceError
from mosix_core.linux import memory
from mosix_core.linux.libc import LIBC
from mosix_core.linux.syscall_names import NUMBERS
from mosix_core.remote.calls import STAT_SIZE, Reply, Request
from mosix_core.remote.frames import Channel

SYS_READ, SYS_WRITE, SYS_PREAD, SYS_PWRITE = (NUMBERS[n] for n in ("read", "write", "pread64", "pwrite64"))
SYS_LSEEK, SYS_FSTAT, SYS_NEWFSTATAT = NUMBERS["lseek"], NUMBERS["fstat"], NUMBERS["newfstatat"]
AT_EMPTY_PATH = 0x1000
SYS_GETPID, SYS_GETTID, SYS_GETPPID = NUMBERS["getpid"], NUMBERS["gettid"], NUMBERS["getppid"]
SYS_RECVFROM, SYS_SENDTO = NUMBERS["recvfrom"], NUMBERS["sendto"]
ANSWERED = frozenset(
    {
        SYS_READ,
        SYS_WRITE,
        SYS_PREAD,
        SYS_PWRITE,
        SYS_LSEEK,
        SYS_FSTAT,
        SYS_NEWFSTATAT,
        SYS_GETPID,
        SYS_GETTID,
        SYS_GETPPID,
        SYS_RECVFROM,
        SYS_SENDTO,
    }
)
#: the calls on a pipe or socket tried here without waiting: read and write, and on a
#: socket recv and send (recvfrom/sendto without an address)
STREAM_CALLS = frozenset({SYS_READ, SYS_WRITE, SYS_RECVFROM, SYS_SENDTO})
#: recv/send flags that keep their meaning when the call does not wait (MSG_WAITALL
#: would not: it waits for the whole; MSG_TRUNC answers more than the buffer takes)
NOWAIT_FLAGS = socket.MSG_PEEK | socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL | socket.MSG_MORE
#: calls after which a descriptor number may name another file (or none)
TABLE_CHANGING = frozenset(
    NUMBERS[name]
    for name in (
        "close",
        "close_range",
        "dup",
        "dup2",
        "dup3",
        "fcntl",
        "open",
        "openat",
        "openat2",
        "creat",
        "socket",
        "socketpair",
        "accept",
        "accept4",
        "pipe",
        "pipe2",
        "epoll_create",
        "epoll_create1",
        "eventfd",
        "eventfd2",
        "inotify_init",
        "inotify_init1",
        "pidfd_open",
        "pidfd_getfd",
        "memfd_create",
        "execve",
        "execveat",
    )
    if name in NUMBERS
)
_SYS_FSTAT = 5
FIONREAD = 0x541B
#: file types whose reads and writes may be tried here without waiting
STREAMS = (stat.S_IFIFO, stat.S_IFSOCK)
#: errors after which a read or write is left to the deputy: it waits, or it must raise SIGPIPE
#: in the process, or this file cannot be written without waiting
LEFT_TO_DEPUTY = frozenset({errno.EAGAIN, errno.EPIPE, errno.EOPNOTSUPP})
#: a poured write's data is written in pieces of this size as they come
POUR_PIECE = 1 << 20


@attrs.frozen
class WrittenInPart:
    """A write that wrote ``done`` bytes here without waiting: the deputy makes
    ``rest``, and the process is answered ``done`` plus what that writes."""

    done: int
    rest: Request


class Shortcuts:
    """The borrowed descriptors of process ``pid`` (away), and the calls made on them."""

    def __init__(self, pid: int, own_pid: int | None = None, parent: Callable[[], int | None] | None = None) -> None:
        self.pid = pid
        self.own_pid = own_pid or pid  # what getpid says (a restored process keeps its pid)
        self.parent = parent  # what getppid says, if the caller knows better
        self.pidfd = os.pidfd_open(pid)
        # its fd -> (our copy, its file type); None: not ours to take, or not worth it
        self.borrowed: dict[int, tuple[int, int] | None] = {}
        self._piece: memoryview | None = None
        self._sockets: dict[int, socket.socket] = {}  # our copy -> a socket object on a dup of it

    def close(self) -> None:
        self.forget()
        os.close(self.pidfd)

    def forget(self) -> None:
        for entry in self.borrowed.values():
            if entry is not None:
                os.close(entry[0])
        self.borrowed.clear()
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()

    def answer(self, request: Request) -> Reply | WrittenInPart | None:
        """The reply to ``request`` made here, or None (the deputy makes it)."""
        nr = request.nr
        if nr in TABLE_CHANGING:
            self.forget()
            return None
        if nr not in ANSWERED:
            return None
        if nr in (SYS_GETPID, SYS_GETTID):
            return Reply(self.own_pid)
        if nr == SYS_GETPPID:
            ppid = self.parent() if self.parent is not None else None
            return Reply(ppid) if ppid is not None else None
        args = request.args
        if nr == SYS_NEWFSTATAT and not (args[3] & AT_EMPTY_PATH and dict(request.inputs).get(1) == b"\0"):
            return None  # a path: the deputy resolves it at home
        if nr in STREAM_CALLS:
            # recv and send on a socket only (on a pipe they fail, ENOTSOCK, at the deputy)
            stream = self._borrowed(args[0], STREAMS if nr in (SYS_READ, SYS_WRITE) else (stat.S_IFSOCK,))
            if stream is not None:
                return self._without_waiting(request, stream)
            if nr not in (SYS_READ, SYS_WRITE):
                return None
        fd = self._regular(args[0])
        if fd is None:
            return None
        try:
            if nr == SYS_READ:
                data = os.read(fd, args[2])
                return Reply(len(data), ((1, data),))
            if nr == SYS_PREAD:
                data = os.pread(fd, args[2], args[3])
                return Reply(len(data), ((1, data),))
            if nr == SYS_WRITE:
                return Reply(os.write(fd, dict(request.inputs).get(1, b"")))
            if nr == SYS_PWRITE:
                return Reply(os.pwrite(fd, dict(request.inputs).get(1, b""), _signed(args[3])))
            if nr == SYS_LSEEK:
                return Reply(os.lseek(fd, _signed(args[1]), args[2]))
            return self._fstat(fd, 1 if nr == SYS_FSTAT else 2)
        except OSError as err:
            return Reply(-(err.errno or errno.EIO))

    def pour(self, request: Request, index: int, size: int, source: Channel) -> Reply | None:
        """Make a large write or pwrite to a regular file as its ``size`` bytes come
        from ``source`` (see the module's docstring); None, having taken nothing, for
        any other call. As the kernel's does, it ends at its first short write or
        error, answering what was written, or the error if nothing was (the rest of
        the data is still taken from ``source``)."""
        if request.nr not in (SYS_WRITE, SYS_PWRITE) or index != 1:
            return None
        fd = self._regular(request.args[0])
        if fd is None:
            return None
        offset = _signed(request.args[3]) if request.nr == SYS_PWRITE else None
        if self._piece is None:
            self._piece = memoryview(bytearray(POUR_PIECE))
        written, error, ended = 0, 0, False
        left = size
        while left:
            got = source.receive_into(self._piece[: min(left, POUR_PIECE)])
            left -= got
            if ended:
                continue  # taken, not written
            try:
                count = (
                    os.write(fd, self._piece[:got])
                    if offset is None
                    else os.pwrite(fd, self._piece[:got], offset + written)
                )
            except OSError as err:
                error, ended = err.errno or errno.EIO, True
                continue
            written += count
            ended = count < got
        return Reply(written if written or not error else -error)

    def _without_waiting(self, request: Request, fd: int) -> Reply | WrittenInPart | None:
        """read/write (recv/send on a socket) of a pipe or socket, if it need not wait
        (the module's docstring)."""
        nr, args = request.nr, request.args
        flags = 0
        if nr in (SYS_RECVFROM, SYS_SENDTO):
            flags = args[3] & 0xFFFFFFFF
            if args[4] or flags & ~NOWAIT_FLAGS:
                return None  # an address, MSG_WAITALL...: the deputy's
        try:
            if nr in (SYS_READ, SYS_RECVFROM):
                try:
                    there = struct.unpack("i", fcntl.ioctl(fd, FIONREAD, b"\0" * 4))[0]
                except OSError:
                    return None  # a listening socket...: the deputy's
                data = bytearray(min(args[2], max(there, 1)))  # 1 byte: to tell the end from nothing yet
                if nr == SYS_READ:
                    count = os.preadv(fd, [data], -1, os.RWF_NOWAIT)
                else:
                    count = self._socket(fd).recv_into(data, len(data), flags | socket.MSG_DONTWAIT)
                return Reply(count, ((1, memoryview(data)[:count]),))
            data = dict(request.inputs).get(1, b"")
            if nr == SYS_WRITE:
                count = os.pwritev(fd, [data], -1, os.RWF_NOWAIT)
            else:
                count = self._socket(fd).send(data, flags | socket.MSG_DONTWAIT)
        except OSError as err:
            if err.errno == errno.EOPNOTSUPP and nr in (SYS_READ, SYS_WRITE):
                self._not_worth_it(args[0])
            return None if err.errno in LEFT_TO_DEPUTY else Reply(-(err.errno or errno.EIO))
        if count >= len(data) or count <= 0:
            return Reply(count)
        rest = memoryview(data)[count:]
        return WrittenInPart(count, Request(nr, (args[0], args[1] + count, len(rest), *args[3:]), ((1, rest),)))

    def _socket(self, fd: int) -> socket.socket:
        """A socket object on our copy ``fd`` (it does not own it: forget closes it)."""
        if fd not in self._sockets:
            self._sockets[fd] = socket.socket(fileno=os.dup(fd))
        return self._sockets[fd]

    def _not_worth_it(self, fd_value: int) -> None:
        entry = self.borrowed.get(_signed(fd_value))
        if entry is not None:
            sock = self._sockets.pop(entry[0], None)
            if sock is not None:
                sock.close()
            os.close(entry[0])
        self.borrowed[_signed(fd_value)] = None

    def _regular(self, fd_value: int) -> int | None:
        """Our copy of its descriptor, if that is a regular file."""
        return self._borrowed(fd_value, (stat.S_IFREG,))

    def _borrowed(self, fd_value: int, kinds: tuple[int, ...]) -> int | None:
        """Our copy of its descriptor, if that is a file of one of these ``kinds``."""
        fd = _signed(fd_value)
        if fd < 0 or fd > 1 << 20:
            return None
        if fd not in self.borrowed:
            try:
                copy = memory.borrow_fd(self.pidfd, fd)
            except TraceError:
                self.borrowed[fd] = None  # closed, or not ours to take
                return None
            kind = stat.S_IFMT(os.fstat(copy).st_mode)
            if kind not in (stat.S_IFREG, *STREAMS):
                os.close(copy)
                self.borrowed[fd] = None
                return None
            self.borrowed[fd] = (copy, kind)
        entry = self.borrowed[fd]
        return entry[0] if entry is not None and entry[1] in kinds else None

    @staticmethod
    def _fstat(fd: int, index: int) -> Reply:
        """The kernel's own ``struct stat`` of our copy (the same file)."""
        buf = ctypes.create_string_buffer(STAT_SIZE)
        if LIBC.syscall(ctypes.c_long(_SYS_FSTAT), ctypes.c_long(fd), buf) != 0:
            return Reply(-(ctypes.get_errno() or errno.EIO))
        return Reply(0, ((index, buf.raw),))


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value
