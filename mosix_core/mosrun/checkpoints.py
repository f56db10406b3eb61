"""Taking checkpoints of supervised processes (mosrun(1) CHECKPOINTS).

A checkpoint is written by the supervisor while the process is stopped at a
point where it may be examined: the exit of the ``open("/proc/self/checkpoint")``
that asked for it, or — for ``-A`` timers and ``mosmigrate`` — an interrupt stop
outside any system call. A process interrupted inside a blocking call is let run
until the call returns (the manual: "the checkpoint will be delayed until after
the completion of that system call").

Files are named by :class:`mosix_core.image.naming.CheckpointNaming` and written
by :func:`mosix_core.image.naming.write_atomically` (mode 0 while written, 0400
when complete, nothing left behind on failure). A process that cannot be
checkpointed (pipes, sockets, set-user-ID) still produces a file — holding only
the reason — that counts towards ``-N``, as the manual says.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

import attrs

from mosix_core.errors import MosixError
from mosix_core.image import capture
from mosix_core.image.naming import CheckpointNaming, write_atomically
from mosix_core.image.stream import ImageWriter, Kind
from mosix_core.linux import inject, ptrace


@attrs.define
class CheckpointPlan:
    """A tracee's checkpoint bookkeeping (not inherited by children)."""

    naming: CheckpointNaming
    interval_minutes: int = 0
    due: float | None = None  # monotonic time of the next automatic checkpoint
    requested: str | None = None  # "continue" | "stop" | "exit": waiting for a stop
    taken: int = 0
    # the last checkpoint written whole, (version, path): what the process is recovered
    # from at home when the node it ran on dies
    last: tuple[int, str] | None = None

    def reset_timer(self, now: float | None = None) -> None:
        """Writing checkpointinterval "has a side effect of resetting the time left"."""
        now = time.monotonic() if now is None else now
        self.due = now + self.interval_minutes * 60 if self.interval_minutes else None


def plan_for(pid: int, state) -> CheckpointPlan:
    naming = CheckpointNaming.for_process(pid, state.checkpoint_file, state.checkpoint_limit or 0)
    state.checkpoint_version = naming.next_version()
    plan = CheckpointPlan(naming, state.checkpoint_interval or 0)
    plan.reset_timer()
    return plan


def identity(virtual_pid: int, state, converted: Iterable[tuple[int, int]] = ()) -> dict[str, Any]:
    """The MOSIX side of a process, as the PROCESS record keeps it: its state, and the
    read-only MAP_SHARED ranges mapped privately, which must stay unwritable after a
    recovery as before it."""
    return {"pid": virtual_pid, "mosix": attrs.asdict(state), "converted": [[low, high] for low, high in converted]}


def take(
    pid: int,
    virtual_pid: int,
    state,
    plan: CheckpointPlan,
    *,
    compress: bool = False,
    converted: Iterable[tuple[int, int]] = (),
) -> tuple[bool, str, list[int]]:
    """Write the next checkpoint of stopped process ``pid``.

    Returns (succeeded, the file or the reason it failed, signals to re-send)."""
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError as err:
        return False, f"process {pid}: {err.strerror}", []
    path = plan.naming.next_path(cwd)
    regs = inject.copy_registers(ptrace.get_regs(pid))
    deferred: list[int] = []
    refused: list[str] = []

    def produce(out) -> None:
        writer = ImageWriter(out, compress=compress)
        try:
            _, signals = capture.write_image(
                pid, writer, identity=identity(virtual_pid, state, converted), regs=regs, deferred_pending=True
            )
            deferred.extend(signals)
        except capture.CannotCheckpoint as err:
            # the manual: such a checkpoint is "created and counted - but containing
            # just an error message"
            writer.add(Kind.FAILURE, str(err).encode())  # (raised before any record)
            refused.append(str(err))
        writer.close()

    try:
        write_atomically(path, produce)
    except (MosixError, OSError) as err:
        inject.put_back(pid, regs)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        return False, f"{path}: {reason}", deferred
    written_as = plan.naming.next_version()
    plan.naming.advance()
    plan.taken += 1
    state.checkpoint_version = plan.naming.next_version()
    if refused:
        if plan.last is not None and plan.last[1] == path:
            plan.last = None  # recycled (-N) into one holding only the reason
        return False, refused[0], deferred
    plan.last = (written_as, path)
    return True, path, deferred


def recover_into(pid: int, path: str, shell: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Rebuild process ``pid`` — a shell waiting at ``shell``, as a process away
    leaves at home — from checkpoint ``path``: memory, registers, files and their
    offsets, cwd, signals, limits, as at the checkpoint (what a recovery with mosrun
    -R gives, in the very process: its pid, parent and terminal are its own). Returns
    the signals held back meanwhile and the ranges mapped privately for a read-only
    MAP_SHARED at the checkpoint. Raises MosixError or TraceError if it cannot (the
    process is then beyond use)."""
    from mosix_core.image.restore import RestoreOptions, Restorer
    from mosix_core.image.stream import ImageReader
    from mosix_core.mosrun.recover import open_checkpoint

    with open_checkpoint(path, "recover") as f:
        restorer = Restorer(pid, RestoreOptions(), shell)
        try:
            for record in ImageReader(f, streaming=True):
                restorer.take(record)
            restored = restorer.finish()
            return restored.deferred, converted_ranges(restored.process)
        finally:
            restorer.close()


def converted_ranges(process: dict[str, Any]) -> list[tuple[int, int]]:
    """The PROCESS record's privately mapped read-only MAP_SHARED ranges (checked by
    :func:`mosix_core.image.checks.check_process`; none in an image without them)."""
    return [(low, high) for low, high in process.get("converted", [])]


def in_blocking_call(regs: ptrace.Registers) -> bool:
    """Stopped inside a system call that will be restarted (interrupted while blocked)."""
    return inject.signed(regs.orig_rax) >= 0 and -inject.signed(regs.rax) in inject.RESTART_ERRORS


def exit_now(pid: int, status: int = 0) -> None:
    """chkexit: make the stopped process call exit_group(status) as its next act."""
    address = inject.find_syscall_instruction(pid)
    regs = inject.copy_registers(ptrace.get_regs(pid))
    regs.rip, regs.rax, regs.rdi, regs.orig_rax = address, 231, status, inject.MINUS_ONE
    ptrace.set_regs(pid, regs)


def resend(pid: int, signals: list[int]) -> None:
    for sig in signals:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
