"""The forwarded-call table (mosix_core/remote/calls.py) without a process: what
:func:`marshal` reads from the migrated process's memory for a call, and what
:func:`reply_outputs` sends back from home after it — the size rules that depend
on the call's command (ioctl, fcntl), on memory (a ``socklen_t`` the process points
at) or on the result (bytes, ints, epoll entries). (tests/linux/test_deputy.py has
the table's first checks, against a real deputy.)"""

from __future__ import annotations

import struct

import pytest

from mosix_core.linux.syscall_names import NUMBERS
from mosix_core.remote.calls import (
    FCNTLS,
    IN,
    INOUT,
    IOCTLS,
    MAX_TRANSFER,
    OUT,
    SPECS,
    UNITS,
    VALUE,
    CannotForward,
    Request,
    marshal,
    reply_outputs,
    spec_of,
    unmarshal,
)

BASE = 0x10000
F_SETFL, F_GETLK, F_SETLK, FIONBIO, TIOCGSID = 4, 5, 6, 0x5421, 0x5429


class Memory:
    """The process's memory, from BASE: ``put`` places bytes and says where."""

    def __init__(self) -> None:
        self.data = bytearray(1 << 16)
        self.next = BASE

    def put(self, data: bytes) -> int:
        at = self.next
        self.write(at, data)
        self.next += (len(data) + 15) // 16 * 16 or 16
        return at

    def read(self, address: int, size: int) -> bytes:
        assert address >= BASE and address + size <= BASE + len(self.data), "read outside the process"
        return bytes(self.data[address - BASE : address - BASE + size])

    def read_string(self, address: int) -> bytes:
        return bytes(self.data[address - BASE : self.data.index(0, address - BASE)])

    def write(self, address: int, data: bytes) -> None:
        self.data[address - BASE : address - BASE + len(data)] = data


def call(memory: Memory, name: str, *args: int) -> Request:
    return marshal(NUMBERS[name], args, memory.read, memory.read_string)


def at_home(request: Request, result: int, written: dict[int, bytes]):
    """``reply_outputs`` as the deputy calls it, the call having left ``written`` in
    its buffers at home (each as long as the buffer's capacity)."""
    capacity = dict(request.outputs)
    for index, data in written.items():
        assert len(data) == capacity[index]

    def read(index: int, size: int) -> bytes:
        assert size <= capacity[index]
        return written[index][:size]

    return reply_outputs(request, result, read)


def u32(value: int) -> bytes:
    return struct.pack("<i", value)


def test_an_address_out_is_as_large_as_the_length_the_process_points_at():
    memory = Memory()
    addr, addrlen = memory.put(bytes(128)), memory.put(u32(16))
    request = call(memory, "accept4", 3, addr, addrlen, 0x80000)
    assert request.inputs == ((2, u32(16)),)  # the length goes home, to be read and set
    assert request.outputs == ((1, 16), (2, 4))  # the address: 16 bytes, not 128
    # the kernel set the length to the address's whole length: 110 for a long unix path,
    # of which it wrote 16; or 2 (an unnamed unix socket), of which it wrote 2
    address = bytes(range(16))
    assert at_home(request, 5, {1: address, 2: u32(110)}) == ((1, address), (2, u32(110)))
    assert at_home(request, 5, {1: address, 2: u32(2)}) == ((1, address[:2]), (2, u32(2)))
    assert at_home(request, 5, {1: address, 2: u32(0)}) == ((1, b""), (2, u32(0)))
    # a failure writes nothing
    assert at_home(request, -11, {1: address, 2: u32(16)}) == ()


def test_null_addresses_and_odd_lengths():
    memory = Memory()
    # accept(fd, NULL, NULL): nothing goes either way
    assert call(memory, "accept", 3, 0, 0) == Request(NUMBERS["accept"], (3, 0, 0))
    # a length but no address: the kernel leaves the length alone
    addrlen = memory.put(u32(16))
    assert call(memory, "getpeername", 3, 0, addrlen).outputs == ((2, 4),)
    # an address but no length: nothing to read (the call fails at home, EFAULT)
    request = call(memory, "getsockname", 3, memory.put(bytes(16)), 0)
    assert request.outputs == ((1, 0),) and at_home(request, 0, {1: b""}) == ((1, b""),)
    # a negative length carries nothing (the kernel refuses it, reading the same length)
    assert call(memory, "accept", 3, memory.put(bytes(16)), memory.put(u32(-1))).outputs == ((1, 0), (2, 4))
    # a length larger than a call carries cannot be forwarded
    with pytest.raises(CannotForward):
        call(memory, "getsockopt", 3, 1, 2, memory.put(bytes(16)), memory.put(u32(MAX_TRANSFER + 1)))


def test_recvfrom_sends_back_what_came_and_whose_it_was():
    memory = Memory()
    buf, addr, addrlen = memory.put(bytes(100)), memory.put(bytes(16)), memory.put(u32(16))
    request = call(memory, "recvfrom", 4, buf, 100, 0, addr, addrlen)
    assert request.outputs == ((1, 100), (4, 16), (5, 4))
    data, address = b"x" * 100, bytes(range(16))
    reply = at_home(request, 7, {1: data, 4: address, 5: u32(16)})
    assert reply == ((1, b"x" * 7), (4, address), (5, u32(16)))
    # a stream socket's recvfrom gives no address: the length is set to 0, nothing written
    assert at_home(request, 7, {1: data, 4: address, 5: u32(0)}) == ((1, b"x" * 7), (4, b""), (5, u32(0)))


def test_getsockopt_and_setsockopt():
    memory = Memory()
    optval, optlen = memory.put(bytes(8)), memory.put(u32(8))
    request = call(memory, "getsockopt", 3, 1, 3, optval, optlen)  # SOL_SOCKET, SO_TYPE
    assert request.outputs == ((3, 8), (4, 4))
    assert at_home(request, 0, {3: u32(1) + b"\xee" * 4, 4: u32(4)}) == ((3, u32(1)), (4, u32(4)))
    request = call(memory, "setsockopt", 3, 6, 1, memory.put(u32(1)), 4)  # TCP_NODELAY
    assert request.inputs == ((3, u32(1)),) and request.outputs == ()


def test_results_count_entries_of_the_buffers_unit():
    memory = Memory()
    request = call(memory, "getgroups", 4, memory.put(bytes(16)))
    assert request.outputs == ((1, 16),)
    assert at_home(request, 3, {1: bytes(range(16))}) == ((1, bytes(range(12))),)  # 3 ints
    assert at_home(request, 9, {1: bytes(range(16))}) == ((1, bytes(range(16))),)  # never more than the buffer
    request = call(memory, "epoll_wait", 5, memory.put(bytes(120)), 10, -1)
    assert request.outputs == ((1, 120),) and UNITS["epoll_event"] == 12
    assert at_home(request, 2, {1: bytes(range(120))}) == ((1, bytes(range(24))),)
    # getcwd returns the length of what it wrote, its NUL included
    request = call(memory, "getcwd", memory.put(bytes(64)), 64)
    assert at_home(request, 5, {0: b"/tmp\0" + b"\xee" * 59}) == ((0, b"/tmp\0"),)


def test_fcntl_by_command():
    memory = Memory()
    assert spec_of(NUMBERS["fcntl"], (3, F_SETFL, 0o4000))[2].kind == VALUE
    assert call(memory, "fcntl", 3, F_SETFL, 0o4000) == Request(NUMBERS["fcntl"], (3, F_SETFL, 0o4000))
    lock = struct.pack("<hhxxxxqqixxxx", 1, 0, 0, 10, 0)  # F_WRLCK, SEEK_SET, 0, 10
    assert len(lock) == 32
    where = memory.put(lock)
    # F_GETLK reads the lock and writes back the one in the way; F_SETLK only reads
    request = call(memory, "fcntl", 3, F_GETLK, where)
    assert request.inputs == ((2, lock),) and request.outputs == ((2, 32),)
    request = call(memory, "fcntl", 3, F_SETLK, where)
    assert request.inputs == ((2, lock),) and request.outputs == ()
    with pytest.raises(CannotForward, match="fcntl command 0x3ff"):
        call(memory, "fcntl", 3, 1023, 0)
    # the command is an int: the upper half of the register is not part of it
    assert spec_of(NUMBERS["fcntl"], (3, (1 << 32) | F_GETLK, where))[2].kind == INOUT


def test_more_ioctls():
    memory = Memory()
    request = call(memory, "ioctl", 3, FIONBIO, memory.put(u32(1)))
    assert request.inputs == ((2, u32(1)),) and request.outputs == ()
    assert call(memory, "ioctl", 3, TIOCGSID, memory.put(bytes(4))).outputs == ((2, 4),)
    assert call(memory, "ioctl", 3, 0x540B, 2).inputs == ()  # TCFLSH, TCIOFLUSH
    with pytest.raises(CannotForward, match="ioctl request 0x5412"):  # TIOCSTI stays out
        call(memory, "ioctl", 3, 0x5412, memory.put(b"x"))


def test_waits_carry_their_buffers_both_ways():
    """wait4 with WNOHANG may reap nothing (0) and leave the status alone: what comes
    back must be what the process had there, not the home side's scratch."""
    memory = Memory()
    status, rusage = memory.put(u32(12345)), memory.put(b"\x07" * 144)
    request = call(memory, "wait4", -1, status, 1, rusage)
    assert request.inputs == ((1, u32(12345)), (3, b"\x07" * 144))
    assert request.outputs == ((1, 4), (3, 144))
    request = call(memory, "waitid", 1, 77, memory.put(bytes(128)), 4, 0)
    assert [(index, len(data)) for index, data in request.inputs] == [(2, 128)] and request.outputs == ((2, 128),)


def test_pselect6_carries_no_signal_mask_and_offsets_go_both_ways():
    memory = Memory()
    fds, timeout = memory.put(u32(1 << 3) + bytes(4)), memory.put(bytes(16))
    request = call(memory, "pselect6", 4, fds, 0, 0, timeout, 0)
    assert request.outputs == ((1, 8), (4, 16))
    with pytest.raises(CannotForward, match="points at pointers"):
        call(memory, "pselect6", 4, fds, 0, 0, timeout, memory.put(bytes(16)))
    offset = memory.put(struct.pack("<q", 100))
    request = call(memory, "sendfile", 5, 4, offset, 1000)
    assert request.inputs == ((2, struct.pack("<q", 100)),) and request.outputs == ((2, 8),)
    # utimensat: a NULL path (the descriptor itself) and NULL times (now) stay NULL
    assert call(memory, "utimensat", 4, 0, 0, 0) == Request(NUMBERS["utimensat"], (4, 0, 0, 0))


def test_a_reply_is_written_where_the_process_pointed():
    memory = Memory()
    addr, addrlen = memory.put(b"\xaa" * 16), memory.put(u32(16))
    request = call(memory, "getsockname", 3, addr, addrlen)
    outputs = at_home(request, 0, {1: b"\x01\x00" + b"\xbb" * 14, 2: u32(2)})
    assert unmarshal(request, type("R", (), {"result": 0, "outputs": outputs})(), memory.write) == 0
    assert memory.read(addr, 16) == b"\x01\x00" + b"\xaa" * 14  # past the length: untouched
    assert memory.read(addrlen, 4) == u32(2)


def test_the_table_is_consistent():
    """Every size argument exists; a socklen size points at an INOUT int; entries
    counted by the result are OUT buffers of a known unit."""
    tables = [spec.args for spec in SPECS.values()]
    tables += [(None, None, arg) for arg in list(IOCTLS.values()) + list(FCNTLS.values())]
    for args in tables:
        for arg in args:
            if arg is None or arg.kind == VALUE:
                continue
            if arg.kind in (IN, OUT, INOUT):
                assert (arg.size is None) != (arg.size_arg is None), arg
            if arg.size_arg is not None:
                assert arg.size_arg < len(args) and args[arg.size_arg].kind != OUT, arg
            if arg.unit == "socklen":
                length = args[arg.size_arg]
                assert arg.back == "socklen" and (length.kind, length.size) == (INOUT, 4), args
            if arg.back == "result":
                assert arg.kind == OUT and arg.unit in UNITS, arg
    assert len(SPECS) > 130
