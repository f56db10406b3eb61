"""Freezing a process where it is: its memory goes to an image, the process stays.

A frozen MOSIX process keeps everything but its memory: its pid, its parent, its
open files (pipes and sockets too — it is not going anywhere), its signal
dispositions, mask and pending signals, its credentials and limits. So freezing
captures only what releasing the memory destroys — every mapping and its pages,
the registers, the FP state and the rseq registration — and then leaves the
process an empty *shell*: the ``[vdso]``/``[vvar]`` pages, which cost nothing, and
one page holding ``syscall; jmp back``, from which it waits in ``pause()``.

Thawing is the restorer's memory half (:class:`mosix_core.image.restore.Restorer`)
run in the shell itself, so the process gets its pid back for free. If thawing
fails (no memory for the mappings, a file it mapped has changed) before the
process ran an instruction of its own, everything it rebuilt is released again
and the process is a shell once more — the caller keeps the image and may try
later ("Re-freezing because un-freeze failed"). A damaged image cannot be retried.

The image format is the checkpoint's; a freeze image simply has fewer records.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import attrs

from mosix_core.errors import MosixError, TraceError
from mosix_core.image import capture
from mosix_core.image.restore import RestoreOptions, Restorer
from mosix_core.image.restore_memory import PAGE, TRAMPOLINE_SIZE, RestoreFailed, find_hole
from mosix_core.image.stream import CorruptImage, ImageWriter, Kind, Record
from mosix_core.linux import inject, procfs, ptrace

SHELL_CODE = b"\x0f\x05\xeb\xfc"  # syscall; jmp back to the syscall
SYS_PAUSE = 34
SYS_MMAP, SYS_MUNMAP, SYS_RSEQ = 9, 11, 334
PROT_READ, PROT_EXEC = 1, 4
MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x2, 0x20, 0x100000
RSEQ_FLAG_UNREGISTER = 1
THAW_RECORDS = frozenset({Kind.REGISTERS, Kind.XSTATE, Kind.RSEQ, Kind.MEMORY_MAP, Kind.PAGES})


class CannotFreeze(MosixError):
    """The process has something that cannot be released and rebuilt (shared anonymous
    memory, threads)."""


class ThawFailed(MosixError):
    """Un-freezing failed; ``shell`` is where the process waits again (None: it could
    not be made a shell again and is lost). ``corrupt``: the image itself is bad."""

    def __init__(self, reason: str, shell: int | None, corrupt: bool) -> None:
        self.reason = reason
        self.shell = shell
        self.corrupt = corrupt
        super().__init__(reason)


@attrs.frozen
class FreezeStats:
    page_bytes: int
    image_bytes: int
    mappings: int


@attrs.frozen
class FreezePlan:
    """What a freeze image of a process will hold: its mappings and the page runs worth
    saving — found once, both to choose a directory with room and to write the image."""

    entries: list
    runs: list

    @property
    def page_bytes(self) -> int:
        return sum(length for _, length in self.runs)


def plan_freeze(pid: int) -> FreezePlan:
    """The plan for stopped process ``pid``; CannotFreeze when it cannot be frozen."""
    status = procfs.status_fields(pid)
    if int(status.get("Threads", "1")) != 1:
        raise CannotFreeze("multi-threaded processes cannot be frozen")
    try:
        entries = capture.dump_mappings(pid, procfs.read_maps(pid), writable_shared_files=True)
    except capture.CannotCheckpoint as err:
        raise CannotFreeze(f"cannot be frozen: {err}") from None
    return FreezePlan(entries, capture.page_runs(pid, entries))


def write_freeze_image(pid: int, writer: ImageWriter, regs: ptrace.Registers, plan: FreezePlan) -> FreezeStats:
    """Capture the memory side of stopped process ``pid`` (``regs``: its registers at
    the stop; ``plan``: from :func:`plan_freeze` at this stop) into ``writer``, which
    is not closed here. Changes nothing in the process."""
    # the process stays: a call restarted through its restart block resumes as it would
    image_regs = inject.resumable_registers(regs, new_process=False)
    pointer, size, signature, flags = ptrace.rseq_configuration(pid)
    writer.add(Kind.REGISTERS, bytes(image_regs))
    writer.add(Kind.XSTATE, ptrace.get_xstate(pid))
    writer.add_json(Kind.RSEQ, {"pointer": pointer, "size": size, "signature": signature, "flags": flags})
    writer.add_json(Kind.MEMORY_MAP, {"mappings": plan.entries})
    page_bytes = capture.write_pages(pid, plan.runs, writer)
    return FreezeStats(page_bytes, writer.bytes_written, len(plan.entries))


def release_memory(pid: int) -> tuple[int, list[int]]:
    """Make stopped process ``pid`` a shell: (the shell's address, signals held back).

    Call only once its image is safely written: from here on the image is the
    process's memory."""
    mappings = procfs.read_maps(pid)
    injector = inject.Injector(pid, inject.find_syscall_instruction(pid, mappings))
    pointer, size, signature, _ = ptrace.rseq_configuration(pid)
    if pointer:
        # the kernel writes the rseq area on every return to user space: with the
        # memory gone that would be a SIGSEGV
        injector.check("rseq(unregister)", SYS_RSEQ, pointer, size, RSEQ_FLAG_UNREGISTER, signature)
    shell = find_hole([(m.start, m.end) for m in mappings], PAGE)
    injector.check(
        "mmap(shell)",
        SYS_MMAP,
        shell,
        PAGE,
        PROT_READ | PROT_EXEC,
        MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
        -1,
        0,
    )
    _write(pid, shell, SHELL_CODE)
    injector.address = shell
    for m in mappings:
        if m.path not in capture.KERNEL_PLACED and m.path not in capture.NO_CHECKPOINT:
            injector.check(f"munmap({m.start:#x})", SYS_MUNMAP, m.start, m.size)
    return shell, injector.deferred


def wait_in_shell(pid: int, shell: int) -> None:
    """Point the stopped shell at its ``pause()``: resumed, it sleeps until a signal."""
    regs = inject.copy_registers(ptrace.get_regs(pid))
    regs.rip, regs.rax, regs.orig_rax = shell, SYS_PAUSE, inject.MINUS_ONE
    ptrace.set_regs(pid, regs)


def thaw(pid: int, records: Iterable[Record], shell: int) -> list[int]:
    """Rebuild stopped shell ``pid`` from its freeze image; the signals held back meanwhile.

    On success the process has its memory, registers and FP state back and continues
    where it was frozen when resumed. Raises :class:`ThawFailed`."""
    restorer = Restorer(pid, RestoreOptions(timers=False), shell)  # its timers ran on here
    try:
        for record in records:
            if record.kind not in THAW_RECORDS:
                raise CorruptImage(f"unexpected {record.name} record in a freeze image")
            restorer.take(record)
        _finish(restorer)
        return restorer.injector.deferred
    except CorruptImage as err:
        raise ThawFailed(f"{err}: {err.detail}", back_to_shell(restorer, shell), corrupt=True) from None
    except (RestoreFailed, inject.InjectedCallFailed) as err:
        raise ThawFailed(str(err), back_to_shell(restorer, shell), corrupt=False) from None
    finally:
        restorer.close()


def _finish(restorer: Restorer) -> None:
    restorer.settle()
    parts = restorer.parts
    for kind in (Kind.REGISTERS, Kind.XSTATE, Kind.RSEQ, Kind.MEMORY_MAP):
        if kind not in parts:
            raise CorruptImage(f"the freeze image has no {Kind.NAMES[kind]} record")
    if len(parts[Kind.REGISTERS]) != len(bytes(ptrace.Registers())):
        raise CorruptImage("the registers record has the wrong size")
    rseq = parts[Kind.RSEQ]
    try:
        if rseq["pointer"]:
            restorer.injector.check("rseq", SYS_RSEQ, rseq["pointer"], rseq["size"], 0, rseq["signature"])
    except (KeyError, TypeError) as err:
        raise CorruptImage(f"malformed rseq record: {err!r}") from None
    restorer.check_resumable()
    restorer.injector.check("munmap(trampoline)", SYS_MUNMAP, restorer.trampoline, TRAMPOLINE_SIZE)
    ptrace.set_xstate(restorer.pid, parts[Kind.XSTATE])
    ptrace.set_regs(restorer.pid, ptrace.Registers.from_buffer_copy(parts[Kind.REGISTERS]))


def back_to_shell(restorer: Restorer, shell: int) -> int | None:
    """Release whatever a failed thaw (or home-coming) rebuilt; the address the shell
    now waits at (None: the process could not be made a shell again)."""
    pid = restorer.pid
    restorer.settle(quiet=True)  # no page lands after the memory is released
    if not restorer.trampoline:
        return shell  # nothing was touched yet
    try:
        keep = restorer.trampoline
        injector = inject.Injector(pid, keep)
        for m in procfs.read_maps(pid):
            if m.path in capture.KERNEL_PLACED or m.path in capture.NO_CHECKPOINT:
                continue
            # everything but the trampoline's first page, which becomes the shell
            for start, end in ((m.start, min(m.end, keep)), (max(m.start, keep + PAGE), m.end)):
                if start < end:
                    injector.check(f"munmap({start:#x})", SYS_MUNMAP, start, end - start)
        _write(pid, keep, SHELL_CODE)
        return keep
    except (TraceError, OSError):
        return None


def _write(pid: int, address: int, data: bytes) -> None:
    fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)
    try:
        os.pwrite(fd, data, address)
    finally:
        os.close(fd)
