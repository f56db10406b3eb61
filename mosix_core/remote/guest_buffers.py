"""A guest's memory, and its calls whose data lies in buffers scattered through it.

The guest's calls are made at home, which has none of the process's memory: what a
call reads from the process travels with it, and what it returns is written back
here (:class:`GuestMemory`, through ``/proc/PID/mem``). The vectored calls
(readv/writev/preadv/pwritev) and sendmsg/recvmsg name several buffers: they are
made at home as one plain read or write of the whole (so a writev to a pipe stays
one atomic write), the data gathered from the buffers here or scattered into them.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable

from mosix_core.errors import TraceError
from mosix_core.linux.syscall_names import NUMBERS
from mosix_core.remote.calls import MAX_TRANSFER, Reply, Request

#: forwards one request home and returns home's reply
Send = Callable[[Request], Reply]

#: the offset argument of the writes, if any
WRITES = {NUMBERS["write"]: None, NUMBERS["pwrite64"]: 3}
#: the vectored calls, made at home as one plain read or write of the whole (so a
#: writev to a pipe stays one atomic write): the call, and its offset argument if any
VECTORED = {
    NUMBERS["readv"]: (NUMBERS["read"], None),
    NUMBERS["writev"]: (NUMBERS["write"], None),
    NUMBERS["preadv"]: (NUMBERS["pread64"], 3),
    NUMBERS["pwritev"]: (NUMBERS["pwrite64"], 3),
}
IOV_MAX = 1024
SYS_SENDMSG, SYS_RECVMSG = NUMBERS["sendmsg"], NUMBERS["recvmsg"]
SYS_SENDTO, SYS_RECVFROM = NUMBERS["sendto"], NUMBERS["recvfrom"]
#: struct msghdr: name, namelen, iov, iovlen, control, controllen, flags
MSGHDR = struct.Struct("=QI4xQQQQi4x")


class GuestMemory:
    """The memory of traced process ``pid``, read and written through its
    ``/proc/PID/mem`` (opened once, when first needed)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd: int | None = None

    def fd(self) -> int:
        """The descriptor of its ``/proc/PID/mem`` (read and write)."""
        if self._fd is None:
            self._fd = os.open(f"/proc/{self.pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        return self._fd

    def read(self, address: int, size: int) -> bytes:
        """Up to ``size`` bytes of the process's memory (fewer where it runs off the
        mapped memory), copied once."""
        try:
            return os.pread(self.fd(), size, address)
        except OSError as err:
            raise TraceError(f"reading memory of process {self.pid} at {address:#x}: {err}", errno.EFAULT) from None

    def write(self, address: int, data: bytes) -> None:
        """Into the process's memory, read-only pages too (as the kernel's own
        copy-out would; a file mapping is filled after it is made)."""
        try:
            os.pwrite(self.fd(), data, address)
        except OSError as err:
            raise TraceError(f"writing memory of process {self.pid} at {address:#x}: {err}", err.errno) from None

    def vectors(self, address: int, count: int) -> list[tuple[int, int]]:
        """The (base, length) pairs of an iovec array (TraceError if unreadable)."""
        table = self.read(address, 16 * count) if count else b""
        if len(table) < 16 * count:
            raise TraceError("an iovec array out of the process's memory", errno.EFAULT)
        return [struct.unpack_from("=QQ", table, 16 * k) for k in range(count)]

    def gather(self, vectors: list[tuple[int, int]]) -> bytes:
        data = b"".join(self.read(base, size) for base, size in vectors if size)
        if len(data) < sum(size for _, size in vectors):
            raise TraceError("an iovec buffer out of the process's memory", errno.EFAULT)
        return data

    def scatter(self, vectors: list[tuple[int, int]], data: bytes) -> None:
        at = 0
        for base, room in vectors:
            if at >= len(data):
                break
            self.write(base, data[at : at + room])
            at += room


def vectored(memory: GuestMemory, send: Send, nr: int, args: list[int]) -> int:
    """readv/writev/preadv/pwritev: the buffers gathered here into one write home,
    or one read's data scattered here into them."""
    single, offset_arg = VECTORED[nr]
    if args[2] > IOV_MAX:
        return -errno.EINVAL
    try:
        vectors = memory.vectors(args[1], args[2])
        offset = () if offset_arg is None else (args[offset_arg],)
        if single in WRITES:
            data = memory.gather(vectors)
            done = 0
            while True:
                piece = data[done : done + MAX_TRANSFER]
                piece_offset = () if offset_arg is None else (offset[0] + done,)
                result = send(Request(single, (args[0], 1, len(piece)) + piece_offset, inputs=((1, piece),))).result
                if result < 0:
                    return done or result
                done += result
                if result < len(piece) or done >= len(data):
                    return done
        size = min(sum(size for _, size in vectors), MAX_TRANSFER)
        reply = send(Request(single, (args[0], 1, size) + offset, outputs=((1, size),)))
        memory.scatter(vectors, dict(reply.outputs).get(1, b""))
        return reply.result
    except TraceError as err:
        return -(err.errno or errno.EFAULT)


def message(memory: GuestMemory, send: Send, nr: int, args: list[int]) -> int:
    """sendmsg/recvmsg without ancillary data, as sendto/recvfrom of the whole: the
    message's buffers gathered here, or the data scattered into them and its
    address and lengths written back. Ancillary data (descriptors, credentials)
    cannot cross nodes: EOPNOTSUPP."""
    fd, address, flags = args[0], args[1], args[2]
    try:
        header = memory.read(address, MSGHDR.size)
        if len(header) < MSGHDR.size:
            return -errno.EFAULT
        name, namelen, iov, iovlen, control, controllen, _ = MSGHDR.unpack(header)
        if iovlen > IOV_MAX:
            return -errno.EMSGSIZE
        vectors = memory.vectors(iov, iovlen)
        if nr == SYS_SENDMSG:
            if control and controllen:
                return -errno.EOPNOTSUPP
            data = memory.gather(vectors)[:MAX_TRANSFER]  # a stream sends less; a datagram is far less
            inputs = [(1, data)]
            if name and namelen:
                inputs.append((4, memory.read(name, min(namelen, 128))))
            return send(
                Request(
                    SYS_SENDTO,
                    (fd, 1, len(data), flags, 1 if name else 0, len(inputs[-1][1]) if name and namelen else 0),
                    inputs=tuple(inputs),
                )
            ).result
        size = min(sum(size for _, size in vectors), MAX_TRANSFER)
        room = min(namelen, 128) if name else 0
        request = Request(
            SYS_RECVFROM,
            (fd, 1, size, flags, 1 if room else 0, 1 if room else 0),
            inputs=((5, struct.pack("<I", room)),) if room else (),
            outputs=((1, size),) + (((4, room), (5, 4)) if room else ()),
        )
        reply = send(request)
        if reply.result < 0:
            return reply.result
        outputs = dict(reply.outputs)
        memory.scatter(vectors, outputs.get(1, b""))
        if room:
            memory.write(name, outputs.get(4, b""))
            memory.write(address + 8, outputs.get(5, b"\0\0\0\0"))  # msg_namelen
        memory.write(address + 40, bytes(8) + bytes(4))  # msg_controllen, msg_flags
        return reply.result
    except TraceError as err:
        return -(err.errno or errno.EFAULT)
