"""Restoring an image into a new process, record by record as the stream arrives.

The new process is the restore stub (:mod:`mosix_core.image.stub`), stopped by us
at the exit of its ``execve``. Everything is done by system calls injected into
it, so the kernel sees the process build its own state. This module reads the
stream and hands each record to the part of the restorer for its resource, as
CRIU's restorer is split:

1. memory (:mod:`~mosix_core.image.restore_memory`): a *trampoline* to run calls
   from, the stub unmapped, the vDSO moved, every mapping made again, and the
   page records written into it as they arrive;
2. files (:mod:`~mosix_core.image.restore_files`): the descriptor table, the
   working directory, the umask;
3. the rest of the process (:mod:`~mosix_core.image.restore_process`): signals,
   rseq, robust list, the mm fields and ``exe`` (``PR_SET_MM_MAP``), limits, the
   MOSIX seccomp filter, then the trampoline goes and the FP state and registers
   are set.

Every value is checked before it is used (:mod:`~mosix_core.image.checks`). Files
and the rest are set only after the END record has verified the whole stream:
until then the process has not run a single instruction of the program, and any
error kills it and "restores nothing".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import attrs

from mosix_core.errors import TraceError
from mosix_core.image import restore_process as state
from mosix_core.image import stub
from mosix_core.image.checks import CHECKS, check_registers, check_xstate, record_object
from mosix_core.image.restore_files import FileTable
from mosix_core.image.restore_memory import AddressSpace, RestoreFailed
from mosix_core.image.stream import CorruptImage, Kind, Record
from mosix_core.linux import inject, ptrace

SYS_EXIT_GROUP = 231


@attrs.frozen
class RestoreOptions:
    redirect: tuple[tuple[int, str], ...] = ()  # mosrun -O
    filter_program: tuple | None = None  # the seccomp filter the process runs under
    # a process away from home: its files, cwd and umask stay at home (its calls go
    # there), so it gets none here — not even the descriptors the stub inherited
    away: bool = False
    # a migrated process coming home into its own shell (the deputy's body): its files,
    # cwd, umask and executable are there already and stay as they are
    returning: bool = False
    # interval timers (alarm, setitimer) as they were; a thawed process's ran on meanwhile
    timers: bool = True


@attrs.define
class Restored:
    process: dict[str, Any]
    deferred: list[int]
    page_bytes: int = 0


class Restorer:
    """Restores one image into stub process ``pid`` (stopped at its execve exit)."""

    def __init__(self, pid: int, options: RestoreOptions, syscall_address: int = stub.SYSCALL_ADDRESS) -> None:
        self.pid = pid
        self.options = options
        self.injector = inject.Injector(pid, syscall_address)
        self.space = AddressSpace(pid, self.injector, elsewhere=options.away)
        self.files = FileTable(self.space, options.redirect)
        self.parts: dict[int, Any] = {}

    @property
    def trampoline(self) -> int:
        """Where the restorer's calls run from (0: nowhere yet, nothing was touched)."""
        return self.space.trampoline

    # -- the stream -------------------------------------------------------------------------------
    def take(self, record: Record) -> None:
        kind = record.kind
        if kind == Kind.FAILURE:
            raise RestoreFailed(bytes(record.payload).decode(errors="replace"))
        if kind == Kind.PAGES:
            self.space.pages(*record.pages())
            return
        self.settle()
        if kind in (Kind.PROCESS, Kind.SIGNALS, Kind.RSEQ, Kind.LIMITS):
            value = record_object(record)
            CHECKS[kind](value)
            self.parts[kind] = value
        elif kind == Kind.REGISTERS:
            check_registers(record.payload)
            self.parts[kind] = bytes(record.payload)
        elif kind == Kind.XSTATE:
            check_xstate(record.payload, ptrace.get_xstate(self.pid))
            self.parts[kind] = bytes(record.payload)
        elif kind == Kind.FILES:
            self.files.take_files(record.json())
        elif kind == Kind.FILE_DATA:
            self.files.take_data(record.payload)
        elif kind == Kind.MEMORY_MAP:
            layout = record_object(record)
            self.space.take_map(layout)
            self.parts[kind] = layout
        elif kind == Kind.DISCARD:
            self.space.discard(record.json())
        else:
            raise CorruptImage(f"unexpected {record.name} record")

    def settle(self, *, quiet: bool = False) -> None:
        """Wait for the pages being written (see :meth:`AddressSpace.settle`)."""
        self.space.settle(quiet=quiet)

    def close(self) -> None:
        self.space.close()
        self.files.close()

    # -- the rest, after END ---------------------------------------------------------------------------
    def check_resumable(self) -> None:
        """The process will carry on from its instruction pointer: that must be code of its own."""
        rip = ptrace.Registers.from_buffer_copy(self.parts[Kind.REGISTERS]).rip
        if not any(
            e["start"] <= rip < e["end"] and e["perms"][2] == "x" for e in self.parts[Kind.MEMORY_MAP]["mappings"]
        ):
            raise CorruptImage(f"the instruction pointer {rip:#x} is not in code of the process")

    def finish(self) -> Restored:
        self.settle()
        if self.space.ahead is not None:
            raise CorruptImage("the image has memory sent ahead but no memory map at the stop")
        for kind in (Kind.PROCESS, Kind.REGISTERS, Kind.XSTATE, Kind.SIGNALS, Kind.RSEQ, Kind.LIMITS, Kind.MEMORY_MAP):
            if kind not in self.parts:
                raise CorruptImage(f"the image has no {Kind.NAMES[kind]} record")
        if "mm" not in self.parts[Kind.MEMORY_MAP]:
            raise CorruptImage("the memory map has no mm fields")
        self.check_resumable()
        space, options = self.space, self.options
        try:
            process = self.parts[Kind.PROCESS]
            if options.away:
                self.files.close_all()
            elif not options.returning:
                self.files.restore(process["cwd"], process["umask"])
            state.restore_personality(space, process)
            state.restore_signals(space, self.parts[Kind.SIGNALS])
            state.restore_rseq(space, self.parts[Kind.RSEQ])
            state.restore_robust_list(space, process)
            state.restore_mm(space, self.parts[Kind.MEMORY_MAP]["mm"], None if options.returning else process["exe"])
            state.restore_limits(self.pid, self.parts[Kind.LIMITS])
            if options.filter_program is not None:
                state.install_filter(space, options.filter_program)
            if options.timers:
                state.restore_timers(space, self.parts[Kind.SIGNALS].get("itimers", []))
            space.release_trampoline()
            state.set_registers(self.pid, self.parts[Kind.XSTATE], self.parts[Kind.REGISTERS])
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptImage(f"malformed process record: {err!r}") from None
        except inject.InjectedCallFailed as err:
            raise RestoreFailed(str(err)) from None
        return Restored(process, self.injector.deferred, space.page_bytes)

    def abandon(self) -> None:
        """Make the half-built process go away quietly (exit status 1)."""
        self.settle(quiet=True)
        with contextlib.suppress(TraceError):
            if self.trampoline:
                self.injector.address = self.trampoline
            self.injector.call(SYS_EXIT_GROUP, 1)
        with contextlib.suppress(TraceError):
            ptrace.cont(self.pid)


def restore(pid: int, records: Iterable[Record], options: RestoreOptions) -> Restored:
    """Restore the image into stub ``pid``; on any error the stub exits (status 1)."""
    restorer = Restorer(pid, options)
    try:
        for record in records:
            restorer.take(record)
        return restorer.finish()
    except BaseException:
        restorer.abandon()
        raise
    finally:
        restorer.close()
