"""The moments of a move: a process's image goes out (it stays whole where it was
until the other side confirms: only then does the supervisor make the process at home
its own shell, the deputy's body, with :func:`mosix_core.image.freeze.release_memory`),
it arrives somewhere as a guest, and it comes home into that shell."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from mosix_core.errors import MosixError, TraceError
from mosix_core.image import capture, freeze, restore
from mosix_core.image.freeze import ThawFailed
from mosix_core.image.stream import CorruptImage, ImageWriter, Record
from mosix_core.linux import inject, ptrace
from mosix_core.linux.writes import WriteTracker
from mosix_core.remote.guest import guest_filter


def send_image(
    pid: int,
    writer: ImageWriter,
    regs: ptrace.Registers,
    identity: dict[str, Any],
    *,
    to_guest: bool = False,
    ahead: capture.Precopy | None = None,
) -> list[int]:
    """Write stopped process ``pid``'s image to ``writer`` (and END) — everything but
    its files, which stay home. Changes nothing in the process; the signals that
    arrived meanwhile, to be re-sent wherever it goes on. ``to_guest``: the mapped
    files a guest could not open (nobody restores it) travel in the image.
    ``ahead``: its memory went ahead on ``writer`` while it ran (:func:`send_ahead`)."""
    _, deferred = capture.write_image(
        pid, writer, identity=identity, regs=regs, files=False, copy_private_files=to_guest, ahead=ahead
    )
    writer.close()
    return deferred


def start_tracking(pid: int, regs: ptrace.Registers) -> tuple[WriteTracker | None, list[int]]:
    """Have stopped process ``pid`` (at a clean stop, ``regs`` its registers there)
    give us the means to follow its writes: (the tracker, or None if its writes cannot
    be followed; the signals held back meanwhile, to re-send either way). The process
    is as it was."""
    injector = inject.Injector(pid, inject.find_syscall_instruction(pid))
    try:
        return WriteTracker.start(pid, injector), injector.deferred
    except TraceError:
        return None, injector.deferred
    finally:
        inject.put_back(pid, regs)


def send_ahead(pid: int, writer: ImageWriter, tracker: WriteTracker) -> capture.Precopy:
    """Begin the image of *running* process ``pid`` on ``writer``: its memory, while
    it runs on (mappings a guest could not open included)."""
    return capture.precopy(pid, writer, tracker, copy_private_files=True)


class NotConfirmed(MosixError):
    """The target did not confirm the image: the process stays whole here. ``deferred``:
    the signals held back while it was written, to re-send here."""

    def __init__(self, reason: str, deferred: list[int]) -> None:
        super().__init__(reason)
        self.deferred = deferred


def leave(
    pid: int,
    writer: ImageWriter,
    regs: ptrace.Registers,
    identity: dict[str, Any],
    *,
    confirmed: Callable[[], None] = lambda: None,
    ahead: capture.Precopy | None = None,
) -> tuple[int, list[int]]:
    """Send stopped process ``pid`` to a guest (:func:`send_image`), wait for the target
    to have restored it (``confirmed()``, which raises if it did not: then
    :class:`NotConfirmed`, and the process is unchanged), then release its memory: (the
    shell's address, the signals for the guest)."""
    deferred = send_image(pid, writer, regs, identity, to_guest=True, ahead=ahead)
    try:
        confirmed()
    except (MosixError, OSError) as err:
        raise NotConfirmed(str(err), deferred) from err
    shell, held = freeze.release_memory(pid)
    return shell, deferred + held


def arrive(stub_pid: int, records: Iterable[Record], *, wall_clock: bool = False) -> restore.Restored:
    """Restore the image into stub ``stub_pid`` as a guest: no files, cwd or umask of
    its own, under the guest filter (forwarded calls stop; with ``wall_clock``, so do
    readings of the wall clock)."""
    program = tuple(guest_filter(wall_clock=wall_clock))
    return restore.restore(stub_pid, records, restore.RestoreOptions(away=True, filter_program=program))


def come_home(pid: int, records: Iterable[Record], shell: int) -> list[int]:
    """Rebuild shell ``pid`` (stopped, at ``shell``) from the image its guest sent:
    memory, registers, signal handlers and mask, limits. Its files, cwd and
    executable never left. The signals held back meanwhile; raises
    :class:`ThawFailed` (with where the shell waits again) if it cannot."""
    restorer = restore.Restorer(pid, restore.RestoreOptions(returning=True), shell)
    try:
        for record in records:
            restorer.take(record)
        return restorer.finish().deferred
    except CorruptImage as err:
        raise ThawFailed(f"{err}: {err.detail}", freeze.back_to_shell(restorer, shell), corrupt=True) from None
    except (restore.RestoreFailed, inject.InjectedCallFailed) as err:
        raise ThawFailed(str(err), freeze.back_to_shell(restorer, shell), corrupt=False) from None
    finally:
        restorer.close()
