"""Memory sent ahead while the process runs (pre-copied migration), at the engine's
level: a program that keeps writing, emptying, replacing, making and dropping its
memory is sent while it runs, then stopped and sent the rest; the restored process's
memory must be, byte for byte, the memory it had at the stop."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from mosix_core.image import capture, runs, stub
from mosix_core.image.stream import CorruptImage, ImageReader, ImageWriter, Kind, read_all
from mosix_core.linux import inject, procfs, ptrace
from mosix_core.linux.writes import WriteTracker
from mosix_core.remote import moving

MB = 1 << 20


def stop_cleanly(pid: int) -> ptrace.Registers:
    ptrace.interrupt(pid)
    while True:
        stop = ptrace.wait_for(pid)
        if stop.kind == "event" and stop.event == ptrace.EVENT_STOP:
            return inject.copy_registers(ptrace.get_regs(pid))
        ptrace.cont(pid, stop.sig if stop.kind == "signal" else 0)


def memory_of(pid: int, rseq: tuple[int, int]) -> dict[int, tuple[str, bytes]]:
    """Every page but the kernel's: address -> (protection, contents); the process
    is stopped. Pages, not mappings: the kernel merges neighbours as it likes. The
    ``(address, size)`` of the rseq area is blanked: the kernel writes the CPU the
    process last ran on there."""
    rseq, rseq_size = rseq
    out = {}
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for m in procfs.read_maps(pid):
            if m.path in capture.KERNEL_PLACED or m.path in capture.NO_CHECKPOINT:
                continue
            mem.seek(m.start)
            data = bytearray(mem.read(m.size))
            if m.start <= rseq < m.end:
                data[rseq - m.start : rseq - m.start + rseq_size] = bytes(rseq_size)
            for offset in range(0, m.size, 4096):
                out[m.start + offset] = (m.perms[:3], bytes(data[offset : offset + 4096]))
    return out


def differences(restored: dict, original: dict) -> list[str]:
    return [
        f"{address:#x}: {restored.get(address, ('none', b''))[0]} {original.get(address, ('none', b''))[0]}"
        for address in sorted(set(restored) | set(original))
        if restored.get(address) != original.get(address)
    ]


class Receiver(threading.Thread):
    """The target: a restore stub, restored from the socket (ptrace from this thread,
    which lives on until released: a tracer thread that ends kills its tracees)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.done = threading.Event()
        self.release = threading.Event()
        self.kinds: list[int] = []
        self.pid = 0
        self.error: BaseException | None = None
        self.page_bytes = 0

    def run(self) -> None:
        try:
            self.pid = stub.spawn_traced(ptrace.O_TRACESYSGOOD | ptrace.O_EXITKILL)

            def records():
                for record in ImageReader(self.sock.makefile("rb"), streaming=True):
                    self.kinds.append(record.kind)
                    yield record

            self.page_bytes = moving.arrive(self.pid, records()).page_bytes
        except BaseException as err:  # reported by the test
            self.error = err
        self.done.set()
        self.release.wait(60)


@contextlib.contextmanager
def mutator(programs, megabytes: int):
    """The mutating program, traced by this thread and stopped: (its pid, a tracker of
    its writes); killed after."""
    program = subprocess.Popen([str(programs / "precopy_mutator"), str(megabytes)], stdout=subprocess.PIPE)
    try:
        assert program.stdout.readline() == b"ready\n"
        ptrace.seize(program.pid, ptrace.O_TRACESYSGOOD | ptrace.O_EXITKILL)
        tracker, deferred = moving.start_tracking(program.pid, stop_cleanly(program.pid))
        assert isinstance(tracker, WriteTracker) and deferred == []
        yield program.pid, tracker
        tracker.close()
    finally:
        program.kill()
        program.wait()


@contextlib.contextmanager
def receiving():
    """(a writer to send an image with, the :class:`Receiver` restoring it, the
    sending end of the connection)."""
    ours, theirs = socket.socketpair()
    receiver = Receiver(theirs)
    receiver.start()
    try:
        yield ImageWriter(ours.makefile("wb")), receiver, ours
    finally:
        if receiver.pid:
            with contextlib.suppress(ProcessLookupError):  # a stub that failed is gone
                os.kill(receiver.pid, 9)
        receiver.release.set()
        ours.close()


@pytest.mark.parametrize("run_for", [0.0, 0.3])
def test_memory_sent_ahead_while_the_process_ran_is_restored_exactly(programs, run_for):
    with mutator(programs, 64) as (pid, tracker), receiving() as (writer, receiver, _):
        ptrace.cont(pid)
        ahead = moving.send_ahead(pid, writer, tracker)
        time.sleep(run_for)  # it changes its memory meanwhile
        regs = stop_cleanly(pid)
        moving.send_image(pid, writer, regs, {}, to_guest=True, ahead=ahead)
        writer.out.flush()
        assert receiver.done.wait(60)
        assert receiver.error is None, repr(receiver.error)
        sent_ahead = runs.total(ahead.sent)
        assert sent_ahead >= 60 * MB  # some of the buffer is emptied now and then
        # the memory went ahead, then the map at the stop and only what changed
        assert receiver.kinds.count(Kind.MEMORY_MAP) == 2
        assert receiver.page_bytes - sent_ahead < 16 * MB
        if run_for:
            assert Kind.DISCARD in receiver.kinds  # pages it emptied after they were sent
        rseq = ptrace.rseq_configuration(pid)[:2]
        assert differences(memory_of(receiver.pid, rseq), memory_of(pid, rseq)) == []


def test_writes_are_tracked_until_the_memory_is_mapped_again(programs):
    """Writes since the protection are listed; a part mapped again is no longer tracked."""
    with mutator(programs, 8) as (pid, tracker):
        buffer = next(m for m in procfs.read_maps(pid) if m.size == 8 * MB)
        assert tracker.track(buffer.start, buffer.end)
        tracker.protect(buffer.start, buffer.end)
        assert tracker.written(buffer.start, buffer.end) == []
        assert tracker.tracked(buffer.start, buffer.end)
        ptrace.cont(pid)
        time.sleep(0.2)
        stop_cleanly(pid)
        # the program replaces its second MiB with a new mapping now and then (every 1009 turns)
        assert not tracker.tracked(buffer.start, buffer.end)
        assert tracker.tracked(buffer.start, buffer.start + MB)
        written = tracker.written(buffer.start, buffer.start + MB)
        assert written and all(buffer.start <= a < b <= buffer.start + MB for a, b in written)


def test_an_image_ending_with_memory_sent_ahead_restores_nothing(programs):
    """A stream cut after the memory went ahead (the source died) is refused whole."""
    with mutator(programs, 8) as (pid, tracker), receiving() as (writer, receiver, sending):
        ptrace.cont(pid)
        moving.send_ahead(pid, writer, tracker)
        writer.out.close()
        sending.close()
        assert receiver.done.wait(60)
        assert isinstance(receiver.error, CorruptImage), repr(receiver.error)


def precopied_image(programs) -> list:
    """The records of a pre-copied image of the mutator (its memory sent ahead, then
    the rest at a stop)."""
    with mutator(programs, 8) as (pid, tracker):
        out = io.BytesIO()
        writer = ImageWriter(out)
        ptrace.cont(pid)
        ahead = moving.send_ahead(pid, writer, tracker)
        moving.send_image(pid, writer, stop_cleanly(pid), {}, to_guest=True, ahead=ahead)
    return read_all(io.BytesIO(out.getvalue()))


def rewritten(records, change) -> bytes:
    """The image again, each record passed through ``change(record) -> [(kind, payload)]``."""
    out = io.BytesIO()
    writer = ImageWriter(out)
    for record in records:
        for kind, payload in change(record):
            writer.add(kind, payload)
    writer.close()
    return out.getvalue()


def final_map(record) -> bool:
    return record.kind == Kind.MEMORY_MAP and "kept" in record.json()


def keeping_what_was_not_sent(record):
    if not final_map(record):
        return [(record.kind, record.payload)]
    layout = record.json()
    fresh = next(e["start"] for e in layout["mappings"] if e["kind"] == "file")
    layout["kept"] = sorted(layout["kept"] + [fresh])
    return [(record.kind, json.dumps(layout).encode())]


def discarding_a_file_mapping(record):
    if not final_map(record):
        return [(record.kind, record.payload)]
    code = next(e for e in record.json()["mappings"] if e["kind"] == "file")
    return [(record.kind, record.payload), (Kind.DISCARD, json.dumps([[code["start"], 4096]]).encode())]


def without_the_final_map(record):
    return (
        []
        if record.kind != Kind.PAGES and record.kind != Kind.MEMORY_MAP or final_map(record)
        else [(record.kind, record.payload)]
    )


@pytest.mark.parametrize("change", [keeping_what_was_not_sent, discarding_a_file_mapping, without_the_final_map])
def test_a_garbled_precopied_image_restores_nothing(programs, change):
    """A stream that keeps a mapping it did not send ahead, empties memory that was not
    sent ahead, or never sends the map at the stop is refused: nothing runs."""
    data = rewritten(precopied_image(programs), change)
    ours, theirs = socket.socketpair()
    receiver = Receiver(theirs)
    receiver.start()

    def send() -> None:
        with contextlib.suppress(OSError):  # the restorer stops reading at the fault
            ours.sendall(data)
            ours.shutdown(socket.SHUT_WR)

    threading.Thread(target=send, daemon=True).start()
    try:
        assert receiver.done.wait(60)
        assert isinstance(receiver.error, CorruptImage), repr(receiver.error)
    finally:
        receiver.release.set()
        ours.close()
