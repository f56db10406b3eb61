"""The deputy — a migrated process's home half — running forwarded calls in a real
process left a shell, with its real files, pipe, cwd and parent; and the call table
that marshals them (mosix_core/remote/). The "guest memory" here is a bytearray: what
the guest side will read and write with process_vm_readv/writev."""

from __future__ import annotations

import errno
import io
import os
import signal
import struct
import subprocess
import time

import pytest

from mosix_core.image import freeze
from mosix_core.image.stream import ImageReader, ImageWriter
from mosix_core.linux import inject, ptrace
from mosix_core.linux.syscall_names import NUMBERS
from mosix_core.remote.calls import MAX_TRANSFER, TCGETS, CannotForward, Request, marshal, spec_of, unmarshal
from mosix_core.remote.deputy import Deputy
from tests.helpers.guest import stop_traced
from tests.helpers.programs import lines, wait_until

PROGRAM = """\
import select, sys
for i in range(int(sys.argv[1])):
    print("tick", i, flush=True)
    select.select([], [], [], 0.02)
print("done", flush=True)
"""
BASE = 0x10000


class GuestMemory:
    """A stand-in for the migrated process's memory, at addresses from BASE."""

    def __init__(self, size: int = 1 << 16) -> None:
        self.data = bytearray(size)
        self.next = BASE

    def put(self, data: bytes) -> int:
        at = self.next
        self.data[at - BASE : at - BASE + len(data)] = data
        self.next += (len(data) + 15) // 16 * 16 or 16
        return at

    def room(self, size: int) -> int:
        return self.put(bytes(size))

    def read(self, address: int, size: int) -> bytes:
        return bytes(self.data[address - BASE : address - BASE + size])

    def read_string(self, address: int) -> bytes:
        end = self.data.index(0, address - BASE)
        return bytes(self.data[address - BASE : end])

    def write(self, address: int, data: bytes) -> None:
        self.data[address - BASE : address - BASE + len(data)] = data


def forward(deputy: Deputy, memory: GuestMemory, name: str, *args: int) -> int:
    """What the guest side will do for one trapped call."""
    request = marshal(NUMBERS[name], args, memory.read, memory.read_string)
    return unmarshal(request, deputy.call(request), memory.write)


@pytest.fixture
def shell(tmp_path):
    """A python3 program, traced by us, stopped and made a shell; thawed at the end
    and run to its end (its output must then be whole)."""
    (tmp_path / "cwd").mkdir()
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    out = tmp_path / "out.txt"
    stdin_r, stdin_w = os.pipe()
    with open(out, "wb") as stdout:
        proc = subprocess.Popen(
            ["/usr/bin/python3", str(script), "60"],
            stdin=stdin_r,
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path / "cwd",
        )
    os.close(stdin_r)
    pid = proc.pid
    ptrace.seize(pid, ptrace.O_TRACESYSGOOD | ptrace.O_EXITKILL)
    state = {"proc": proc, "pid": pid, "out": out, "stdin": stdin_w, "cwd": tmp_path / "cwd", "image": None}
    try:
        wait_until(lambda: lines(out) >= 3, what="the program's start")
        regs = stop_traced(pid)
        image = io.BytesIO()
        writer = ImageWriter(image)
        freeze.write_freeze_image(pid, writer, regs, freeze.plan_freeze(pid))
        writer.close()
        state["image"] = image
        address, held = freeze.release_memory(pid)
        assert held == []
        state["shell"] = address
        yield state
        image.seek(0)
        assert freeze.thaw(pid, ImageReader(image, streaming=True), address) == []
        ptrace.cont(pid)
        while (stop := ptrace.wait_for(pid)).kind not in ("exited", "killed"):
            ptrace.cont(pid, stop.sig if stop.kind == "signal" else 0)
        assert stop.kind == "exited" and stop.code == 0
        proc.returncode = 0
    finally:
        os.close(stdin_w)
        if proc.returncode is None:
            proc.kill()
            proc.wait()


def test_calls_run_as_the_process_at_home(shell, tmp_path):
    pid, memory = shell["pid"], GuestMemory()
    deputy = Deputy(pid, shell["shell"])
    try:
        assert forward(deputy, memory, "getpid") == pid
        assert forward(deputy, memory, "getppid") == os.getpid()
        assert forward(deputy, memory, "getuid") == os.getuid()
        buf = memory.room(256)
        length = forward(deputy, memory, "getcwd", buf, 256)
        assert memory.read(buf, length - 1) == os.fsencode(shell["cwd"])  # the process's cwd, not ours
        note = b"written at home\n"
        assert forward(deputy, memory, "write", 1, memory.put(note), len(note)) == len(note)
        # a file opened by path, read, stat'ed and closed, all in the process
        (shell["cwd"] / "data.txt").write_bytes(b"0123456789")
        fd = forward(deputy, memory, "openat", (-100) & inject.MINUS_ONE, memory.put(b"data.txt\0"), os.O_RDONLY, 0)
        assert fd >= 3 and os.path.samefile(f"/proc/{pid}/fd/{fd}", shell["cwd"] / "data.txt")
        buf = memory.room(64)
        assert forward(deputy, memory, "read", fd, buf, 64) == 10
        assert memory.read(buf, 10) == b"0123456789"
        stat_buf = memory.room(144)
        assert forward(deputy, memory, "fstat", fd, stat_buf) == 0
        assert struct.unpack_from("<q", memory.read(stat_buf, 144), 48)[0] == 10  # st_size
        assert forward(deputy, memory, "close", fd) == 0
        # failures come back as -errno, with nothing written
        missing = memory.put(b"/nonexistent/file\0")
        assert forward(deputy, memory, "open", missing, os.O_RDONLY, 0) == -errno.ENOENT
        termios = memory.room(36)
        assert forward(deputy, memory, "ioctl", 1, TCGETS, termios) == -errno.ENOTTY
        # a pipe made at home, written and read at home
        fds = memory.room(8)
        assert forward(deputy, memory, "pipe2", fds, 0) == 0
        read_end, write_end = struct.unpack("<ii", memory.read(fds, 8))
        assert forward(deputy, memory, "write", write_end, memory.put(b"xyz"), 3) == 3
        buf = memory.room(8)
        assert forward(deputy, memory, "read", read_end, buf, 8) == 3 and memory.read(buf, 3) == b"xyz"
        for fd in (read_end, write_end):
            assert forward(deputy, memory, "close", fd) == 0
    finally:
        deputy.close()
    assert b"written at home\n" in shell["out"].read_bytes()


def test_a_blocking_call_runs_in_two_halves_and_signals_are_handed_over(shell):
    pid, memory = shell["pid"], GuestMemory()
    deputy = Deputy(pid, shell["shell"])
    try:
        buf = memory.room(100)
        request = marshal(NUMBERS["read"], (0, buf, 100), memory.read, memory.read_string)
        deputy.begin(request)  # read(0): the pipe is empty, it blocks
        time.sleep(0.2)
        assert os.waitpid(pid, os.WNOHANG | ptrace.WALL) == (0, 0)
        os.kill(pid, signal.SIGUSR1)  # reaches the home process, is handed over
        while (reply := deputy.on_stop(ptrace.wait_for(pid))) is None:
            pass
        # kept from the shell; the call ends as interrupted, for the guest's kernel to
        # restart it or fail it (EINTR) once the signal is delivered there
        assert deputy.deferred == [signal.SIGUSR1]
        assert unmarshal(request, reply, memory.write) == -512  # -ERESTARTSYS
        os.write(shell["stdin"], b"typed\n")
        deputy.begin(request)  # the guest's kernel restarted it
        while (reply := deputy.on_stop(ptrace.wait_for(pid))) is None:
            pass
        assert unmarshal(request, reply, memory.write) == 6
        assert memory.read(buf, 6) == b"typed\n"
    finally:
        deputy.close()


def test_the_call_table():
    memory = GuestMemory()
    with pytest.raises(CannotForward):
        marshal(NUMBERS["mmap"], (0, 4096, 3, 0x22, -1, 0), memory.read, memory.read_string)
    with pytest.raises(CannotForward, match="ioctl request"):
        spec_of(NUMBERS["ioctl"], (0, 0x1234, 0))
    with pytest.raises(CannotForward, match="at most"):
        marshal(NUMBERS["read"], (0, BASE, MAX_TRANSFER + 1), memory.read, memory.read_string)
    # NULL stays NULL, and a read sends back only what was read
    request = marshal(NUMBERS["read"], (3, 0, 10), memory.read, memory.read_string)
    assert request.outputs == () and request.inputs == ()
    request = marshal(NUMBERS["write"], (1, memory.put(b"abc"), 3), memory.read, memory.read_string)
    assert request == Request(NUMBERS["write"], (1, BASE, 3), ((1, b"abc"),), ())
    with pytest.raises(CannotForward):
        unmarshal(request, type("R", (), {"result": 3, "outputs": ((1, b"too much"),)})(), memory.write)
