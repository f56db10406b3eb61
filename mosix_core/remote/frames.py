"""Forwarded calls on the wire: requests, replies and signals between a guest and
its home, as length-prefixed binary frames on a stream (a socket).

::

    frame    length u32 | body (length bytes)
    request  "Q" | nr u16 | nargs u8 | ninputs u8 | noutputs u8 | arg u64 * nargs
             | (index u8 | size u32 | bytes) * ninputs | (index u8 | capacity u32) * noutputs
    reply    "R" | result i64 | noutputs u8 | (index u8 | size u32 | bytes) * noutputs
    signal   "S" | signal u8                       (home → guest: it reached the process)
    control  "C" | JSON object                     (the move itself: restored, go, home, ...)

A malformed frame is a :class:`ProtocolError` saying what is wrong; nothing in it is
acted on. The channel itself is authenticated by whoever opened it (the peer
transport between nodes; a socketpair in one machine's tests).
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import time
from collections.abc import Callable

import attrs

from mosix_core.errors import ProtocolError
from mosix_core.remote.calls import MAX_TRANSFER, Reply, Request

MAX_FRAME = 2 * MAX_TRANSFER + 4096
MAX_ARGS = 6
LARGE = 64 * 1024
_LEN = struct.Struct("<I")
_REQ = struct.Struct("<cHBBB")
_REP = struct.Struct("<cqB")
_BUF = struct.Struct("<BI")


@attrs.frozen
class Poured:
    """A request whose input was not received whole: whoever makes the call took it
    from the channel piece by piece, making the call as it came (``request`` has no
    inputs), and answered ``reply``."""

    request: Request
    reply: Reply


#: ``pour(request, index, size, channel)``: make ``request`` (its inputs not yet
#: received) taking its one input, argument ``index``'s ``size`` bytes, with
#: ``channel.receive_into``, and answer its reply; or answer None having taken nothing.
Pour = Callable[[Request, int, int, "Channel"], Reply | None]


def request_parts(request: Request) -> list:
    """A request's frame as the buffers it is made of (its data not copied)."""
    parts = [
        _REQ.pack(b"Q", request.nr, len(request.args), len(request.inputs), len(request.outputs)),
        struct.pack(f"<{len(request.args)}Q", *(a & ((1 << 64) - 1) for a in request.args)),
    ]
    for index, data in request.inputs:
        parts += [_BUF.pack(index, len(data)), data]
    parts += [_BUF.pack(index, capacity) for index, capacity in request.outputs]
    return _framed(parts)


def reply_parts(reply: Reply) -> list:
    """A reply's frame as the buffers it is made of (its data not copied)."""
    parts = [_REP.pack(b"R", reply.result, len(reply.outputs))]
    for index, data in reply.outputs:
        parts += [_BUF.pack(index, len(data)), data]
    return _framed(parts)


def encode_request(request: Request) -> bytes:
    return b"".join(request_parts(request))


def encode_reply(reply: Reply) -> bytes:
    return b"".join(reply_parts(reply))


def encode_signal(sig: int) -> bytes:
    return _frame([b"S", bytes([sig])])


def encode_control(message: dict) -> bytes:
    return _frame([b"C", json.dumps(message, separators=(",", ":")).encode()])


def decode(body: bytes | bytearray) -> Request | Reply | int | dict:
    """A frame's body: a Request, a Reply, a signal number or a control message."""
    if not body:
        raise ProtocolError("an empty frame")
    kind = bytes(body[:1])
    reader = _Reader(body)
    if kind == b"Q":
        _, nr, nargs, ninputs, noutputs = reader.take(_REQ)
        if nargs > MAX_ARGS:
            raise ProtocolError(f"a request with {nargs} arguments")
        args = struct.unpack(f"<{nargs}Q", reader.bytes(8 * nargs))
        inputs = tuple((reader.index(nargs), reader.bytes(reader.size())) for _ in range(ninputs))
        outputs = tuple((reader.index(nargs), reader.size()) for _ in range(noutputs))
        reader.done()
        return Request(nr, args, inputs, outputs)
    if kind == b"R":
        _, result, noutputs = reader.take(_REP)
        outputs = tuple((reader.index(MAX_ARGS), reader.bytes(reader.size())) for _ in range(noutputs))
        reader.done()
        return Reply(result, outputs)
    if kind == b"S":
        if len(body) != 2 or not 0 < body[1] < 65:
            raise ProtocolError("a malformed signal frame")
        return body[1]
    if kind == b"C":
        try:
            message = json.loads(body[1:])
        except ValueError:
            raise ProtocolError("a control frame that is not JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            raise ProtocolError("a control frame without an operation")
        return message
    raise ProtocolError(f"an unknown frame kind {kind!r}")


class _Reader:
    def __init__(self, body: bytes | bytearray) -> None:
        self.body = body
        self.view = memoryview(body)
        self.at = 0

    def bytes(self, size: int) -> bytes:
        if self.at + size > len(self.body):
            raise ProtocolError("a frame shorter than its contents")
        data = self.view[self.at : self.at + size]
        self.at += size
        # a call's megabytes stay where they were received (a view: bytes-like for
        # os.write/pwrite); small fields become bytes of their own
        return data if size >= LARGE else bytes(data)

    def take(self, layout: struct.Struct) -> tuple:
        return layout.unpack(self.bytes(layout.size))

    def index(self, limit: int) -> int:
        (index,) = struct.unpack("<B", self.bytes(1))
        if index >= limit:
            raise ProtocolError(f"a buffer for argument {index}")
        return index

    def size(self) -> int:
        (size,) = struct.unpack("<I", self.bytes(4))
        if size > MAX_TRANSFER:
            raise ProtocolError(f"a buffer of {size} bytes")
        return size

    def done(self) -> None:
        if self.at != len(self.body):
            raise ProtocolError(f"{len(self.body) - self.at} bytes after a frame's contents")


def _framed(parts: list) -> list:
    return [_LEN.pack(sum(len(part) for part in parts)), *parts]


def _frame(parts: list[bytes]) -> bytes:
    return b"".join(_framed(parts))


class Channel:
    """Frames over a connected stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, frame: bytes) -> None:
        self.sock.sendall(frame)

    def send_parts(self, parts: list) -> None:
        """A frame given as its buffers: a small one joined, a large one gathered by
        the kernel from where its buffers are (a call's megabytes are not copied here)."""
        if sum(len(part) for part in parts) < LARGE:
            self.sock.sendall(b"".join(parts))
            return
        views = [memoryview(part).cast("B") for part in parts if len(part)]
        while views:
            sent = self.sock.sendmsg(views)
            while views and sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            if views and sent:
                views[0] = views[0][sent:]

    def receive(self, pour: Pour | None = None) -> Request | Reply | int | dict | Poured:
        """The next frame, decoded. With ``pour``, a large request with one input
        (a write's megabytes) is first offered to it, so the call can be made while
        its data is still arriving rather than after."""
        (length,) = _LEN.unpack(self._exactly(_LEN.size))
        if length > MAX_FRAME:
            raise ProtocolError(f"a frame of {length} bytes")
        if pour is None or length < LARGE:
            return decode(self._exactly(length))
        head = self._exactly(_REQ.size)
        if head[:1] == b"Q" and head[3] <= MAX_ARGS and head[4] == 1 and head[5] == 0:
            head += self._exactly(8 * head[3] + _BUF.size)
            args = struct.unpack_from(f"<{head[3]}Q", head, _REQ.size)
            index, size = _BUF.unpack_from(head, _REQ.size + 8 * head[3])
            if index < len(args) and len(head) + size == length:
                request = Request(_REQ.unpack_from(head)[1], args)
                reply = pour(request, index, size, self)
                if reply is not None:
                    return Poured(request, reply)
        body = bytearray(length)
        body[: len(head)] = head
        self._fill(memoryview(body)[len(head) :])
        return decode(body)

    def readable_within(self, seconds: float) -> bool:
        """Whether a frame starts coming within ``seconds``, waited for spinning (not
        sleeping: for waits shorter than a CPU's wake-up)."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        deadline = time.perf_counter() + seconds
        while not poller.poll(0):
            if time.perf_counter() > deadline:
                return False
            os.sched_yield()  # whoever shares this CPU goes first
        return True

    def receive_into(self, view: memoryview) -> int:
        """Some of a frame's bytes (at most ``len(view)``, at least one) into ``view``."""
        count = self.sock.recv_into(view)
        if not count:
            raise ProtocolError("the connection closed inside a frame")
        return count

    def _exactly(self, size: int) -> bytearray:
        """``size`` bytes from the socket, received straight into one buffer."""
        data = bytearray(size)
        self._fill(memoryview(data))
        return data

    def _fill(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            count = self.sock.recv_into(view[got:])
            if not count:
                raise ProtocolError("the connection closed inside a frame" if got else "the connection closed")
            got += count
