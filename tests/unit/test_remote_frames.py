"""Forwarded calls on the wire (mosix_core/remote/frames.py): what goes out comes back
the same, and a garbled frame is a ProtocolError — never anything else."""

from __future__ import annotations

import os
import socket
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mosix_core.errors import ProtocolError
from mosix_core.remote.calls import Reply, Request
from mosix_core.remote.frames import (
    Channel,
    Poured,
    decode,
    encode_reply,
    encode_request,
    encode_signal,
    reply_parts,
    request_parts,
)
from tests.helpers.frames import poured_through

REQUEST = Request(1, (1, 0x7FFF0000, 5), ((1, b"hello"),), ())
READ = Request(0, (3, 0x1000, 64), (), ((1, 64),))
REPLY = Reply(-2, ((1, b"abc"),))


def body(frame: bytes) -> bytes:
    (length,) = struct.unpack_from("<I", frame)
    assert length == len(frame) - 4
    return frame[4:]


@pytest.mark.parametrize("message", [REQUEST, READ, Request(39, ()), Reply(5), REPLY])
def test_round_trips(message):
    encoded = encode_request(message) if isinstance(message, Request) else encode_reply(message)
    assert decode(body(encoded)) == message


def test_negative_arguments_travel_as_unsigned_words():
    decoded = decode(body(encode_request(Request(257, (-100, 0x2000, 0, 0)))))
    assert decoded.args[0] == (1 << 64) - 100


def test_signals():
    assert decode(body(encode_signal(2))) == 2
    for bad in (b"S", b"S\x00", b"S\x41", b"S\x02\x02"):
        with pytest.raises(ProtocolError):
            decode(bad)


@pytest.mark.parametrize(
    "garbled, says",
    [
        (b"", "empty"),
        (b"X", "unknown frame kind"),
        (body(encode_request(REQUEST))[:-1], "shorter"),
        (body(encode_request(REQUEST)) + b"\0", "after a frame"),
        (b"Q" + struct.pack("<HBBB", 0, 7, 0, 0) + bytes(56), "7 arguments"),
        (b"Q" + struct.pack("<HBBB", 0, 1, 1, 0) + bytes(8) + struct.pack("<BI", 3, 0), "argument 3"),
        (b"Q" + struct.pack("<HBBB", 0, 1, 0, 1) + bytes(8) + struct.pack("<BI", 0, 1 << 30), "bytes"),
        (b"R" + struct.pack("<qB", 0, 1) + struct.pack("<BI", 9, 0), "argument 9"),
    ],
)
def test_garbled_frames_are_protocol_errors(garbled, says):
    with pytest.raises(ProtocolError, match=says):
        decode(garbled)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_are_refused(data):
    for candidate in (data, b"Q" + data, b"R" + data, b"S" + data):
        try:
            decode(candidate)
        except ProtocolError:
            pass


def test_a_channel_carries_frames_and_notices_a_closed_peer():
    a, b = socket.socketpair()
    with a, b:
        left, right = Channel(a), Channel(b)
        left.send(encode_request(READ))
        left.send(encode_signal(15))
        assert right.receive() == READ
        assert right.receive() == 15
        right.send(encode_reply(REPLY))
        assert left.receive() == REPLY
        a.sendall(struct.pack("<I", 1 << 30))
        with pytest.raises(ProtocolError, match="a frame of"):
            right.receive()
        a.sendall(struct.pack("<I", 10) + b"Q")
        a.close()
        with pytest.raises(ProtocolError, match="closed inside a frame"):
            right.receive()


def test_large_frames_are_sent_from_their_parts_whole_and_in_order():
    """send_parts gathers a call's megabytes from where they are; a socket that takes
    them a little at a time (a small send buffer) still gets every byte, in order."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    data = os.urandom(3 << 20)
    request = Request(1, (4, 0x1000, len(data)), inputs=((1, memoryview(data)),))
    reply = Reply(len(data) - 5, outputs=((1, data[5:]),))
    with a, b:
        received = []
        reader = threading.Thread(target=lambda: received.extend(Channel(b).receive() for _ in range(3)))
        reader.start()
        sender = Channel(a)
        sender.send_parts(request_parts(request))
        sender.send_parts(reply_parts(Reply(7)))  # a small one, joined
        sender.send_parts(reply_parts(reply))
        reader.join(30)
    assert bytes(received[0].inputs[0][1]) == data and received[0].args == request.args
    assert received[1] == Reply(7)
    assert received[2].result == reply.result and bytes(received[2].outputs[0][1]) == data[5:]
    assert encode_request(request) == b"".join(bytes(part) for part in request_parts(request))


def test_a_large_write_is_poured_and_anything_else_received_whole():
    data = os.urandom(3 << 20)
    write = Request(1, (4, 0x1000, len(data)), ((1, data),))
    offered, taken = [], bytearray()

    def pour(request, index, size, channel):
        offered.append((request, index, size))
        if request.nr != 1:
            return None  # not taken: received whole after all
        view = memoryview(bytearray(100000))
        while len(taken) < len(data):
            got = channel.receive_into(view[: size - len(taken)])
            taken.extend(view[:got])
        return Reply(size)

    declined = Request(18, (4, 0x1000, len(data), 7), ((1, data),))  # pwrite64, declined
    read = Request(0, (3, 0x1000, 1 << 20), (), ((1, 1 << 20),))  # an output: never offered
    path_and_data = Request(1, (4, 0x1000, len(data)), ((0, b"x\0"), (1, data)))
    frames = [encode_request(m) for m in (write, declined, read, path_and_data, REQUEST)] + [encode_reply(REPLY)]
    received = poured_through(frames, pour)
    assert received[0] == Poured(Request(1, (4, 0x1000, len(data))), Reply(len(data)))
    assert bytes(taken) == data
    assert received[1].args == declined.args and bytes(received[1].inputs[0][1]) == data
    assert received[2] == read
    assert bytes(received[3].inputs[1][1]) == data
    assert received[4:] == [REQUEST, REPLY]  # small frames are never offered
    assert [(r.nr, i, s) for r, i, s in offered] == [(1, 1, len(data)), (18, 1, len(data))]


def test_a_pour_that_lies_about_its_frame_is_refused():
    """A request whose one input does not end the frame is not offered: decoding it
    whole finds what is wrong."""
    frame = bytearray(encode_request(Request(1, (4, 0x1000, 70000), ((1, bytes(70000)),))))
    frame[4 + 6 + 24 + 1 : 4 + 6 + 24 + 5] = struct.pack("<I", 69999)  # one byte more than its input
    with pytest.raises(ProtocolError, match="after a frame's contents"):
        poured_through([bytes(frame)], lambda *call: pytest.fail("offered"))
