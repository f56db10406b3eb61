"""Calls a migrated process's home makes itself (mosix_core/remote/shortcut.py), on
copies of the process's descriptors: large writes poured into a file as they come,
pipes and sockets read and written when that need not wait."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import subprocess

import pytest

from mosix_core.linux.syscall_names import NUMBERS
from mosix_core.remote.calls import Reply, Request
from mosix_core.remote.frames import Poured, encode_request, encode_signal
from mosix_core.remote.shortcut import (
    SYS_PWRITE,
    SYS_READ,
    SYS_RECVFROM,
    SYS_SENDTO,
    SYS_WRITE,
    Shortcuts,
    WrittenInPart,
)
from tests.helpers.frames import poured_through


@pytest.fixture
def small_filesystem(tmp_path):
    """A 1 MiB tmpfs: a write to it ends short when it is full."""
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    yield where
    subprocess.run(["umount", str(where)], check=True)


def test_shortcuts_pour_a_write_into_the_file_as_it_comes(tmp_path, small_filesystem):
    data = os.urandom(3 << 20)
    fd = os.open(tmp_path / "file", os.O_RDWR | os.O_CREAT, 0o600)
    full = os.open(small_filesystem / "file", os.O_WRONLY | os.O_CREAT, 0o600)
    appended = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(appended, b"first\n")
    shortcuts = Shortcuts(os.getpid())
    try:
        os.write(fd, b"head")
        requests = [
            Request(SYS_WRITE, (fd, 0x1000, len(data)), ((1, data),)),
            Request(SYS_PWRITE, (fd, 0x1000, len(data), 1 << 20), ((1, data),)),
            Request(SYS_PWRITE, (fd, 0x1000, len(data), (1 << 64) - 1), ((1, data),)),  # offset -1
            Request(SYS_WRITE, (full, 0x1000, len(data)), ((1, data),)),
            Request(SYS_WRITE, (full, 0x1000, len(data)), ((1, data),)),
            Request(SYS_WRITE, (appended, 0x1000, len(data)), ((1, data),)),
            Request(SYS_WRITE, (0, 0x1000, len(data)), ((1, data),)),
        ]  # stdin: not a file here
        received = poured_through([encode_request(r) for r in requests] + [encode_signal(9)], shortcuts.pour)
    finally:
        shortcuts.close()
    assert [r.reply if isinstance(r, Poured) else r for r in received[:3]] == [
        Reply(len(data)),
        Reply(len(data)),
        Reply(-errno.EINVAL),
    ]
    assert os.lseek(fd, 0, os.SEEK_CUR) == 4 + len(data)  # the same offset: the same open file
    assert (tmp_path / "file").read_bytes() == b"head" + data[: (1 << 20) - 4] + data
    short = received[3].reply.result
    assert 0 < short < len(data) and (small_filesystem / "file").read_bytes() == data[:short]
    assert received[4].reply == Reply(-errno.ENOSPC)  # full: nothing written, the error
    assert received[5].reply == Reply(len(data))
    assert (tmp_path / "log").read_bytes() == b"first\n" + data
    assert isinstance(received[6], Request) and bytes(received[6].inputs[0][1]) == data
    assert received[7] == 9  # every byte was taken: frames go on
    for each in (fd, full, appended):
        os.close(each)


def test_shortcuts_read_and_write_pipes_only_when_they_need_not_wait():
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 65536)
    a, b = socket.socketpair()
    shortcuts = Shortcuts(os.getpid())

    def read(fd, size):
        return shortcuts.answer(Request(SYS_READ, (fd, 0x1000, size), (), ((1, size),)))

    def write(fd, data):
        return shortcuts.answer(Request(SYS_WRITE, (fd, 0x1000, len(data)), ((1, data),)))

    try:
        assert read(r, 100) is None  # nothing there: the deputy waits
        assert write(w, b"hello") == Reply(5)
        reply = read(r, 100)
        assert reply.result == 5 and bytes(reply.outputs[0][1]) == b"hello"
        assert fcntl.fcntl(r, fcntl.F_GETFL) & os.O_NONBLOCK == 0  # the process's flags untouched
        big = os.urandom(100000)  # more than the pipe holds
        part = write(w, big)
        assert isinstance(part, WrittenInPart) and 0 < part.done < len(big)
        assert part.rest.args == (w, 0x1000 + part.done, len(big) - part.done)
        assert bytes(part.rest.inputs[0][1]) == big[part.done :]
        assert write(w, b"more") is None  # full: the deputy waits
        assert os.read(r, 1 << 20) == big[: part.done]
        assert write(b.fileno(), b"to the socket") == Reply(13)
        reply = read(a.fileno(), 5)
        assert reply.result == 5 and bytes(reply.outputs[0][1]) == b"to th"
        shortcuts.answer(Request(NUMBERS["close"], (w,)))  # forgets its copies...
        os.close(w)  # ...so the reader sees the end
        assert read(r, 10) == Reply(0, ((1, b""),))
        b.close()
        os.close(r)
        w2r, w2 = os.pipe()
        os.close(w2r)
        assert write(w2, b"x") is None  # EPIPE: the deputy, for its SIGPIPE
        os.close(w2)
    finally:
        shortcuts.close()
        a.close()


def test_shortcuts_recv_and_send_on_sockets_without_an_address():
    a, b = socket.socketpair()
    shortcuts = Shortcuts(os.getpid())

    def call(nr, fd, size, flags, data=b"", address=0):
        if nr == SYS_SENDTO:
            return shortcuts.answer(Request(nr, (fd, 0x1000, len(data), flags, address, 0), ((1, data),)))
        return shortcuts.answer(Request(nr, (fd, 0x1000, size, flags, address, 0), (), ((1, size),)))

    try:
        assert call(SYS_RECVFROM, a.fileno(), 10, 0) is None  # nothing there: the deputy waits
        assert call(SYS_SENDTO, b.fileno(), 0, 0, b"abcdef") == Reply(6)
        peeked = call(SYS_RECVFROM, a.fileno(), 3, socket.MSG_PEEK)
        assert peeked.result == 3 and bytes(peeked.outputs[0][1]) == b"abc"
        got = call(SYS_RECVFROM, a.fileno(), 100, 0)
        assert got.result == 6 and bytes(got.outputs[0][1]) == b"abcdef"
        assert call(SYS_RECVFROM, a.fileno(), 100, socket.MSG_WAITALL) is None  # it would wait for all
        assert call(SYS_SENDTO, b.fileno(), 0, 0, b"x", address=0x2000) is None  # an address: the deputy's
        big = os.urandom(4 << 20)  # more than the socket holds
        part = call(SYS_SENDTO, b.fileno(), 0, socket.MSG_NOSIGNAL, big)
        assert isinstance(part, WrittenInPart) and 0 < part.done < len(big)
        assert part.rest.nr == SYS_SENDTO and part.rest.args[2:] == (len(big) - part.done, socket.MSG_NOSIGNAL, 0, 0)
        r, w = os.pipe()
        assert call(SYS_RECVFROM, r, 10, 0) is None  # not a socket: ENOTSOCK there
        os.close(r)
        os.close(w)
    finally:
        shortcuts.close()
        a.close()
        b.close()
