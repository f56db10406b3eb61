"""A signal pending when a checkpoint is taken is pending in the image too.

Capture asks the process a few questions by injected calls; resuming it for them
delivers a pending signal, which the injector holds back and the caller re-sends to
the process that goes on. The image must keep it as well, or the process recovered
from it never gets a signal it had (seen as a rare lost SIGUSR1 in the checkpoint
tests)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

from mosix_core.image import capture, restore, stub
from mosix_core.image.stream import ImageWriter, read_all
from mosix_core.linux import inject, ptrace

PROGRAM = r"""
import os, signal, sys
def handler(sig, frame):
    sys.stdout.write("handled\n")
    sys.stdout.flush()
    os._exit(7)
signal.signal(signal.SIGUSR1, handler)
print("ready", flush=True)
while True:
    pass
"""


def test_a_signal_pending_at_a_checkpoint_reaches_the_recovered_process(tmp_path):
    out = tmp_path / "out.txt"
    with open(out, "wb") as stdout:
        program = subprocess.Popen(
            [sys.executable, "-c", PROGRAM],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + 30
        while b"ready" not in out.read_bytes():
            assert time.monotonic() < deadline, "the program did not start"
            time.sleep(0.01)
        pid = program.pid
        ptrace.seize(pid, ptrace.O_TRACESYSGOOD | ptrace.O_EXITKILL)
        ptrace.interrupt(pid)
        while not ((stop := ptrace.wait_for(pid)).kind == "event" and stop.event == ptrace.EVENT_STOP):
            ptrace.cont(pid)
        os.kill(pid, signal.SIGUSR1)  # pending while it is stopped
        image = io.BytesIO()
        writer = ImageWriter(image)
        regs = inject.copy_registers(ptrace.get_regs(pid))
        _, deferred = capture.write_image(pid, writer, identity={}, regs=regs, deferred_pending=True)
        writer.close()
        assert deferred == [signal.SIGUSR1]  # the injected calls took it
    finally:
        program.kill()
        program.wait()
    restored = stub.spawn_traced(ptrace.O_TRACESYSGOOD | ptrace.O_EXITKILL)
    done = restore.restore(restored, read_all(io.BytesIO(image.getvalue())), restore.RestoreOptions())
    for sig in done.deferred:  # as mosrun's recovery does
        os.kill(restored, sig)
    ptrace.cont(restored)
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline, "the recovered process never got its SIGUSR1"
        _, status = os.waitpid(restored, os.WNOHANG | ptrace.WALL)
        if status == 0:
            time.sleep(0.01)
            continue
        if os.WIFEXITED(status):
            break
        assert os.WIFSTOPPED(status)
        sig = os.WSTOPSIG(status)
        ptrace.cont(restored, sig if sig != signal.SIGTRAP else 0)
    assert os.WEXITSTATUS(status) == 7
    assert out.read_bytes().endswith(b"handled\n")
