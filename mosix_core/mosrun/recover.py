"""``mosrun -R`` (recover from a checkpoint) and ``mosrun -I`` (inspect one).

Recovery keeps mosrun's own pid for the program, as starting a program does: the
``mosrun`` process execs the restore stub under a new supervisor, which rebuilds
the checkpointed process in it (:mod:`mosix_core.image.restore`) and then
supervises it like any MOSIX process. The program keeps the pid it was
checkpointed with: ``getpid()`` and friends are answered by the supervisor (a
second seccomp rule set traps them in restored processes only), and signals sent
to that pid from within the family reach it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import attrs

from mosix_core.errors import MosixError
from mosix_core.image.checks import check_files, check_process
from mosix_core.image.stream import CorruptImage, ImageReader, Kind, Record
from mosix_core.linux import ptrace
from mosix_core.mosrun import options as mosopts
from mosix_core.mosrun import procself, rules
from mosix_core.mosrun.checkpoints import converted_ranges

OPEN_FLAG_NAMES = (
    (0o100, "O_CREAT"),
    (0o200, "O_EXCL"),
    (0o400, "O_NOCTTY"),
    (0o1000, "O_TRUNC"),
    (0o2000, "O_APPEND"),
    (0o4000, "O_NONBLOCK"),
    (0o10000, "O_DSYNC"),
    (0o40000, "O_DIRECT"),
    (0o200000, "O_DIRECTORY"),
    (0o400000, "O_NOFOLLOW"),
    (0o1000000, "O_NOATIME"),
    (0o4010000, "O_SYNC"),
)


class RecoveryError(MosixError):
    pass


def open_checkpoint(path: str, purpose: str) -> BinaryIO:
    """The checkpoint file, opened; the manual's message when it cannot be."""
    try:
        return open(path, "rb")
    except OSError as err:
        if purpose == "inspect":
            raise RecoveryError(f"Checkpoint file {path}: {err.strerror}") from None
        raise RecoveryError(f"Could not restart with {path}: {err.strerror}") from None


def describe_flags(flags: int) -> str:
    access = ("O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE")[flags & 3]
    names = [access] + [
        name for bit, name in OPEN_FLAG_NAMES if flags & bit == bit
    ]  # O_LARGEFILE: always set, not shown
    return "|".join(names)


def _mode(flags: int) -> str:
    return ("read", "write", "read-write", "?")[flags & 3]


def inspect(path: str) -> str:
    """mosrun -I: the open files of a checkpoint, with modes, flags and offsets."""
    with open_checkpoint(path, "inspect") as f:
        process: dict[str, Any] = {}
        files: list[dict[str, Any]] = []
        failure = None
        for record in ImageReader(f):  # read to the end: a bad file says so
            if record.kind == Kind.PROCESS:
                process = record.json()
                if not isinstance(process, dict):
                    raise CorruptImage("the process record is not an object")
                check_process(process)
                state_from(process.get("mosix", {}))
            elif record.kind == Kind.FILES:
                files = record.json()
                check_files(files)
            elif record.kind == Kind.FAILURE:
                failure = bytes(record.payload).decode(errors="replace")
    if failure is not None:
        return f"{path}: no process image - the checkpoint failed: {failure}\n"
    lines = [
        f"Checkpoint of process {process.get('pid', '?')}: {' '.join(process.get('cmdline', []))}",
        f"{'fd':>4}  {'mode':<10}  {'offset':>12}  {'kind':<8}  {'flags':<28}  file",
    ]
    for entry in files:
        kind = {"unlinked": "saved", "special": "special", "dir": "dir", "file": "file"}.get(entry["kind"], "?")
        lines.append(
            f"{entry['fd']:>4}  {_mode(entry['flags']):<10}  {entry['pos']:>12}  {kind:<8}  "
            f"{describe_flags(entry['flags'] | (0o2000000 if entry.get('cloexec') else 0)):<28}  "
            f"{entry['path']}{' (unlinked: saved with the process)' if entry['kind'] == 'unlinked' else ''}"
        )
    return "\n".join(lines) + "\n"


def check_image_header(path: str) -> None:
    """Fail early, before any process is touched, on a missing or foreign file."""
    with open_checkpoint(path, "recover") as f:
        ImageReader(f)


def state_from(fields: dict[str, Any]) -> procself.MosixState:
    """The MOSIX state of the image's process: every field as mosrun sets it (a number
    the supervisor can count with, a file name or none) or the image is corrupt."""
    values = {}
    for field in attrs.fields(procself.MosixState):
        if field.name not in fields:
            continue
        value = fields[field.name]
        if isinstance(field.default, int):
            if type(value) is not int or not 0 <= value < 1 << 31:
                raise CorruptImage(f"MOSIX state: {field.name} is {value!r}")
        elif value is not None and (not isinstance(value, str) or "\0" in value or len(value) >= 4096):
            raise CorruptImage(f"MOSIX state: {field.name} is {value!r}")
        values[field.name] = value
    return procself.MosixState(**values)


@attrs.frozen
class Recovered:
    pid: int
    virtual_pid: int | None
    state: procself.MosixState
    command: str
    deferred: tuple[int, ...]
    converted: tuple[tuple[int, int], ...] = ()  # read-only MAP_SHARED ranges mapped privately


def _mosix_state_checked(records: Iterable[Record]) -> Iterator[Record]:
    """The records, the MOSIX state in the process record checked on the way: a bad
    one must stop the restore while the process can still be told to exit."""
    for record in records:
        if record.kind == Kind.PROCESS:
            process = record.json()
            if isinstance(process, dict):
                mosix = process.get("mosix", {})
                if not isinstance(mosix, dict):
                    raise CorruptImage("the MOSIX state is not an object")
                state_from(mosix)
        yield record


def restore_root(root: int, path: str, redirect: tuple[tuple[int, str], ...]) -> Recovered:
    """In the supervisor: ``root`` (seized, about to exec the stub) becomes the process
    of checkpoint ``path``; it is left stopped, ready to continue."""
    from mosix_core.image.restore import RestoreOptions, restore

    stop = ptrace.wait_for(root)
    if stop.kind in ("exited", "killed"):
        raise RecoveryError("Restoration failed: the restore stub did not start")
    if not (stop.kind == "event" and stop.event == ptrace.EVENT_EXEC):
        raise RecoveryError(f"Restoration failed: unexpected stop {stop.kind} of the new process")
    ptrace.syscall(root)
    stop = ptrace.wait_for(root)  # the exit of execve: a clean slate
    options = RestoreOptions(redirect=redirect, filter_program=tuple(rules.build_filter(virtual_pids=True)))
    with open_checkpoint(path, "recover") as f:
        restored = restore(root, _mosix_state_checked(ImageReader(f, streaming=True)), options)
    process = restored.process
    virtual = process.get("pid")
    return Recovered(
        root,
        virtual if isinstance(virtual, int) and virtual != root else None,
        state_from(process.get("mosix", {})),
        " ".join(process.get("cmdline", [])),
        tuple(restored.deferred),
        tuple(converted_ranges(process)),
    )


def recover_program(opts: mosopts.MosrunOptions, env: dict, etc: Path, session) -> None:
    """mosrun -R: become the recovered process. Never returns."""
    from mosix_core.mosrun import launch
    from mosix_core.mosrun.freezing import Freezer
    from mosix_core.mosrun.supervisor import Supervisor, node_in_cluster

    path = opts.recover
    check_image_header(path)

    def supervise(root: int, messages: int) -> None:
        supervisor = Supervisor(
            messages_fd=messages, session=session, in_cluster=node_in_cluster(etc), freezer=Freezer(etc), etc=etc
        )
        supervisor.install_wakeup()
        try:
            recovered = restore_root(root, path, opts.redirect)
        except Exception as err:  # whatever it was, the half-built process must not stay
            text = str(err) if isinstance(err, MosixError) else f"Restoration failed: {err}"
            os.write(messages, f"{text}\n".encode(errors="replace"))
            _make_gone(root)
            return
        written_as = recovered.state.checkpoint_version  # adopt() starts a fresh naming
        recovered.state.strict = int(opts.strict_limitations)  # the site's rules of today
        tracee = supervisor.adopt(root, recovered.state, recovered.command, virtual_pid=recovered.virtual_pid)
        tracee.program.converted = list(recovered.converted)
        continue_numbering(tracee.plan, recovered.state, written_as)
        supervisor.serve_control()
        ptrace.cont(root)
        for sig in recovered.deferred:
            os.kill(root, sig)
        supervisor.run()

    launch.start_supervised("", [], env, supervise, become=lambda: launch.become_restore_stub(env))


def _make_gone(root: int) -> None:
    """After a failed restore: the stub was told to exit (status 1); if it cannot
    have been (it is stopped somewhere else, or the telling failed), it is killed."""
    if _stopped_by_us(root):
        try:
            os.kill(root, signal.SIGKILL)
        except OSError:
            pass
    ptrace.wait_gone(root)


def _stopped_by_us(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in (b"t", b"T")


def continue_numbering(plan, state: procself.MosixState, written_as: int) -> None:
    """The image holds the version it was written as; the recovered process's next
    checkpoint is the one after it (recycling as -N says)."""
    if plan is None or written_as < plan.naming.first:
        return
    plan.naming.next = written_as
    plan.naming.advance()
    state.checkpoint_version = plan.naming.next_version()
