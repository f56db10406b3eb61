"""The two moments of a move: a process leaves home — its image goes out, it stays
as its own shell (the deputy's body) — and arrives as a guest."""

from __future__ import annotations

from typing import Any, Iterable

from mosix_core.image import capture, freeze, restore
from mosix_core.image.stream import ImageWriter, Record
from mosix_core.linux import ptrace
from mosix_core.remote.guest import guest_filter


def leave(pid: int, writer: ImageWriter, regs: ptrace.Registers, identity: dict[str, Any]) -> tuple[int, list[int]]:
    """Write stopped process ``pid``'s image to ``writer`` (closed here) — everything
    but its files, which stay home — then release its memory: (the shell's address,
    signals that arrived meanwhile, for the guest). Only once the image is whole does
    the process lose anything; the caller must keep the image until the guest runs."""
    _, deferred = capture.write_image(pid, writer, identity=identity, regs=regs, files=False)
    writer.close()
    shell, held = freeze.release_memory(pid)
    return shell, deferred + held


def arrive(stub_pid: int, records: Iterable[Record]) -> restore.Restored:
    """Restore the image into stub ``stub_pid`` as a guest: no files, cwd or umask of
    its own, under the guest filter (forwarded calls stop)."""
    return restore.restore(stub_pid, records, restore.RestoreOptions(away=True, filter_program=tuple(guest_filter())))
