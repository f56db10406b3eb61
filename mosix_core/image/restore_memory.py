"""The restorer's memory half: the trampoline, the address space and the pages.

Every call the restorer makes in the new process runs from a one-page-plus-scratch
*trampoline* mapped where neither the stub nor the image has anything. The stub is
unmapped entirely, ``[vvar]``/``[vvar_vclock]``/``[vdso]`` are moved (through a
parking hole, sizes checked) to where the program expects them, and every mapping
is recreated at its address — files mapped again from the same file (checked by
inode, size and time), the rest anonymous. Page records are written straight into
``/proc/PID/mem`` (the tracer may write read-only pages) as they arrive.

A memory map sent ahead while the process ran (pre-copy) is rebuilt into the map of
the stop: what the source keeps stays, the rest goes and is made afresh.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from collections.abc import Iterable
from typing import Any

from mosix_core.errors import MosixError
from mosix_core.image import capture
from mosix_core.image import runs as run_set
from mosix_core.image.capture import KERNEL_PLACED
from mosix_core.image.checks import PAGE, check_mappings, check_pages, user_range
from mosix_core.image.stream import HELD_RECORDS, CorruptImage
from mosix_core.linux import inject, procfs

TRAMPOLINE_SIZE = 16 * PAGE
LOWEST_HOLE = 0x100000

SYS_OPEN, SYS_CLOSE, SYS_MMAP, SYS_MUNMAP, SYS_MREMAP = 2, 3, 9, 11, 25
SYS_MADVISE, MADV_DONTNEED, SYS_MPROTECT = 28, 4, 10
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x1, 0x2, 0x10, 0x20
MAP_GROWSDOWN, MAP_FIXED_NOREPLACE = 0x100, 0x100000
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
O_RDONLY, O_RDWR, O_CLOEXEC = 0, 2, 0o2000000


class RestoreFailed(MosixError):
    """The image is fine but this process could not be rebuilt from it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"Restoration failed: {reason}")


def same_file(info: os.stat_result, entry: dict[str, Any], *, shared: bool, elsewhere: bool) -> bool:
    """Whether the file at a mapping's path is the one the process had mapped.

    A shared mapping shows the file as it is now (the process may write it itself);
    a private one holds only the pages it changed, so the rest must not have moved.
    ``elsewhere`` (a guest on another node): the same file there — a program, a
    library from the same package — is another inode; size and modification time
    say it is the same."""
    if shared:
        return info.st_ino == entry["inode"]
    unchanged = (info.st_size, info.st_mtime_ns) == (entry.get("size"), entry.get("mtime_ns"))
    return unchanged and (elsewhere or info.st_ino == entry["inode"])


def _prot(perms: str) -> int:
    return (
        (PROT_READ if perms[0] == "r" else 0)
        | (PROT_WRITE if perms[1] == "w" else 0)
        | (PROT_EXEC if perms[2] == "x" else 0)
    )


def find_hole(taken: Iterable[tuple[int, int]], size: int, low: int = LOWEST_HOLE) -> int:
    """The lowest page-aligned address ≥ ``low`` with ``size`` bytes free of ``taken``."""
    at = low
    for start, end in sorted(taken):
        if end <= at:
            continue
        if start >= at + size:
            break
        at = (end + PAGE - 1) & ~(PAGE - 1)
    if at + size > 0x7FFF_FFFF_F000:
        raise RestoreFailed("no room in the address space for the restorer")
    return at


class AddressSpace:
    """The memory of stub process ``pid`` as the image's memory map records make it,
    through ``injector`` (whose calls run from the trampoline once there is one).
    ``elsewhere``: the process is a guest on another node (see :func:`same_file`)."""

    def __init__(self, pid: int, injector: inject.Injector, *, elsewhere: bool) -> None:
        self.pid = pid
        self.injector = injector
        self.elsewhere = elsewhere
        self.mem = os.open(f"/proc/{pid}/mem", os.O_RDWR)
        self.layout: dict[str, Any] | None = None  # the last memory map record
        self.ahead: list[dict[str, Any]] | None = None  # a memory map sent ahead, while the process ran
        self.kept: list[tuple[int, int]] = []  # what of the memory sent ahead the process still has
        self.trampoline = 0
        self.page_bytes = 0
        self.memory: run_set.Runs = []  # where page data may go: the map's memory
        # chunks of pages being written by the pool; a streaming reader keeps their
        # buffers for HELD_RECORDS more records
        self._writing: collections.deque[concurrent.futures.Future] = collections.deque()
        self._writers: concurrent.futures.ThreadPoolExecutor | None = None

    def close(self) -> None:
        self.settle(quiet=True)
        if self._writers is not None:
            self._writers.shutdown()
        os.close(self.mem)

    # -- the memory map ------------------------------------------------------------------------
    def take_map(self, layout: dict[str, Any]) -> None:
        """A memory map record: the address space it describes (after one sent ahead,
        the map at the stop)."""
        self.memory = check_mappings(layout)
        if self.ahead is not None:
            self._rebuild(layout)
        else:
            self._build(layout["mappings"])
            if layout.get("precopy") is True:
                self.ahead = layout["mappings"]
        self.layout = layout

    def _build(self, entries: list[dict[str, Any]]) -> None:
        if self.trampoline:
            raise CorruptImage("two memory maps in one image")
        inj = self.injector
        current = procfs.read_maps(self.pid)
        wanted = [(e["start"], e["end"]) for e in entries]
        ours = [(m.start, m.end) for m in current]
        self.trampoline = find_hole(wanted + ours, TRAMPOLINE_SIZE)
        inj.check(
            "mmap(trampoline)",
            SYS_MMAP,
            self.trampoline,
            TRAMPOLINE_SIZE,
            PROT_READ | PROT_WRITE | PROT_EXEC,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
        os.pwrite(self.mem, inject.SYSCALL_INSTRUCTION, self.trampoline)
        inj.address = self.trampoline
        for m in current:
            if m.path not in KERNEL_PLACED and m.path != "[vsyscall]":
                inj.check(f"munmap({m.start:#x})", SYS_MUNMAP, m.start, m.size)
        self._move_kernel_mappings(
            [m for m in current if m.path in KERNEL_PLACED], [e for e in entries if e["kind"] == "kernel"], wanted
        )
        self._map_entries([e for e in entries if e["kind"] != "kernel"])

    def _map_entries(self, entries: list[dict[str, Any]]) -> None:
        inj = self.injector
        opened: dict[tuple[str, bool], int] = {}
        try:
            for e in entries:
                start, length, prot = e["start"], e["end"] - e["start"], _prot(e["perms"])
                if e["kind"] == "file":
                    sharing = MAP_SHARED if e["perms"][3] == "s" else MAP_PRIVATE
                    key = (e["path"], sharing == MAP_SHARED and "w" in e["perms"])
                    fd = opened.get(key)
                    if fd is None:
                        fd = opened[key] = self._open_mapped_file(e)
                    inj.check(f"mmap({e['path']})", SYS_MMAP, start, length, prot, sharing | MAP_FIXED, fd, e["offset"])
                else:
                    flags = MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS
                    if e["kind"] == "stack":
                        flags |= MAP_GROWSDOWN
                    inj.check(f"mmap({start:#x})", SYS_MMAP, start, length, prot, flags, -1, 0)
        finally:
            for fd in opened.values():
                inj.call(SYS_CLOSE, fd)

    def _rebuild(self, layout: dict[str, Any]) -> None:
        """The memory map at the stop, after one sent ahead: the mappings the source
        lists as ``kept`` lie within anonymous ones sent ahead and hold what was
        written there (changes follow); every other part of the memory of then goes,
        and every other mapping of now is made afresh."""
        before, self.ahead = self.ahead, None
        assert before is not None
        entries = layout["mappings"]
        kept_starts = set(layout.get("kept", ()))
        kept = [e for e in entries if e["start"] in kept_starts]
        if len(kept) != len(kept_starts):
            raise CorruptImage("the memory map keeps a mapping it does not have")
        if [e for e in before if e["kind"] == "kernel"] != [e for e in entries if e["kind"] == "kernel"]:
            raise RestoreFailed("the vDSO moved while the process was being sent")
        for e in kept:
            old = capture.kept_within(e, before)  # anonymous memory only
            if old is None:
                raise CorruptImage(f"the mapping at {e['start']:#x} was not sent ahead")
            if e["perms"] != old["perms"]:
                self.injector.check(
                    f"mprotect({e['start']:#x})", SYS_MPROTECT, e["start"], e["end"] - e["start"], _prot(e["perms"])
                )
        staying = [(e["start"], e["end"]) for e in kept]
        for e in before:
            if e["kind"] == "kernel":
                continue
            for start, end in run_set.subtract([(e["start"], e["end"])], staying):
                self.injector.check(f"munmap({start:#x})", SYS_MUNMAP, start, end - start)
        wanted = [(e["start"], e["end"]) for e in entries]
        trampoline = (self.trampoline, self.trampoline + TRAMPOLINE_SIZE)
        if any(start < trampoline[1] and trampoline[0] < end for start, end in wanted):
            self._move_trampoline(wanted)
        self.kept = staying
        self._map_entries([e for e in entries if e["kind"] != "kernel" and e["start"] not in kept_starts])

    def _move_trampoline(self, wanted: list[tuple[int, int]]) -> None:
        """The process now has memory where the trampoline is: it moves to a hole."""
        old = self.trampoline
        taken = wanted + [(m.start, m.end) for m in procfs.read_maps(self.pid)]
        new = find_hole(taken, TRAMPOLINE_SIZE)
        self.injector.check(
            "mmap(trampoline)",
            SYS_MMAP,
            new,
            TRAMPOLINE_SIZE,
            PROT_READ | PROT_WRITE | PROT_EXEC,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
        os.pwrite(self.mem, inject.SYSCALL_INSTRUCTION, new)
        self.injector.address = self.trampoline = new
        self.injector.check("munmap(trampoline)", SYS_MUNMAP, old, TRAMPOLINE_SIZE)

    def discard(self, runs: Any) -> None:
        """Memory sent ahead that the process no longer has: empty again (anonymous)."""
        if self.ahead is not None or self.layout is None or "kept" not in self.layout:
            raise CorruptImage("a discard record without memory sent ahead")
        if not isinstance(runs, list) or not all(
            isinstance(run, list) and len(run) == 2 and all(type(v) is int for v in run) for run in runs
        ):
            raise CorruptImage("the discard record is not a list of runs")
        for start, length in runs:
            user_range(start, length, "discarded memory")
            if not any(low <= start and start + length <= high for low, high in self.kept) or length <= 0:
                raise CorruptImage(f"discarded memory at {start:#x} is not memory sent ahead")
            self.injector.check(f"madvise({start:#x})", SYS_MADVISE, start, length, MADV_DONTNEED)

    def _open_mapped_file(self, entry: dict[str, Any]) -> int:
        path = entry["path"]
        try:
            info = os.stat(path)
        except OSError as err:
            raise RestoreFailed(f"{path}: {err.strerror}") from None
        shared = entry["perms"][3] == "s"
        if not same_file(info, entry, shared=shared, elsewhere=self.elsewhere):
            raise RestoreFailed(f"{path} has changed since the checkpoint")
        access = O_RDWR if shared and "w" in entry["perms"] else O_RDONLY
        return self.open(path, access | O_CLOEXEC, 0, f"open({path})")

    def _move_kernel_mappings(
        self, now: list[procfs.Mapping], wanted: list[dict[str, Any]], image: list[tuple[int, int]]
    ) -> None:
        """Move the vDSO and its data pages to where the program's code expects them."""
        here = {m.path: m for m in now}
        there = {e["path"]: e for e in wanted}
        if set(here) != set(there) or any(here[p].size != there[p]["end"] - there[p]["start"] for p in here):
            # an image for another kernel: improper here
            raise CorruptImage("this kernel's vDSO differs from the one the process was checkpointed on")
        if all(here[p].start == there[p]["start"] for p in here):
            return
        total = sum(m.size for m in now)
        taken = image + [(m.start, m.end) for m in now] + [(self.trampoline, self.trampoline + TRAMPOLINE_SIZE)]
        parking = find_hole(taken, total)
        parked = {}
        for path, m in here.items():
            self.injector.check(
                f"mremap({path})", SYS_MREMAP, m.start, m.size, m.size, MREMAP_MAYMOVE | MREMAP_FIXED, parking
            )
            parked[path] = parking
            parking += m.size
        for path, e in there.items():
            size = e["end"] - e["start"]
            self.injector.check(
                f"mremap({path})", SYS_MREMAP, parked[path], size, size, MREMAP_MAYMOVE | MREMAP_FIXED, e["start"]
            )

    # -- pages -----------------------------------------------------------------------------------
    def pages(self, address: int, data: memoryview) -> None:
        """Write a chunk of pages into the process — in the pool: most of the cost is
        the kernel's, faulting in and clearing the fresh pages, and two threads do it
        in ~0.6 the time of one (on a VM whose host hands out memory lazily, too)."""
        check_pages(address, len(data), self.memory)
        if not self.trampoline:
            raise CorruptImage("page data before the memory map")
        if self._writers is None:
            self._writers = concurrent.futures.ThreadPoolExecutor(HELD_RECORDS, thread_name_prefix="restore-pages")
        while len(self._writing) >= HELD_RECORDS:
            self.page_bytes += self._writing.popleft().result()
        self._writing.append(self._writers.submit(self._write_pages, address, data))

    def _write_pages(self, address: int, data: memoryview) -> int:
        try:
            written = os.pwrite(self.mem, data, address)
        except OSError as err:
            raise CorruptImage(f"page data for {address:#x} does not fit the memory map ({err.strerror})") from None
        if written != len(data):
            raise CorruptImage(f"page data for {address:#x} runs off the memory map")
        return written

    def settle(self, *, quiet: bool = False) -> None:
        """Wait for every chunk of pages being written; their error is raised here
        (``quiet``: a failed restore being cleaned up, errors no longer matter)."""
        while self._writing:
            try:
                self.page_bytes += self._writing.popleft().result()
            except MosixError:
                if not quiet:
                    raise

    # -- the trampoline's scratch area, for the other parts' calls --------------------------------
    def scratch(self, data: bytes, offset: int = 0) -> int:
        """Put ``data`` in the trampoline's scratch area; its address there."""
        if len(data) > TRAMPOLINE_SIZE - 2 * PAGE - offset:
            raise RestoreFailed("restorer scratch space exhausted")
        address = self.trampoline + PAGE + offset
        os.pwrite(self.mem, data, address)
        return address

    def open(self, path: str, flags: int, mode: int, what: str) -> int:
        """open(2) ``path`` in the process; the descriptor it got."""
        address = self.scratch(os.fsencode(path) + b"\0")
        return self.injector.check(f"open({what})", SYS_OPEN, address, flags, mode)

    def release_trampoline(self) -> None:
        """The last call made from the trampoline: it goes."""
        self.injector.check("munmap(trampoline)", SYS_MUNMAP, self.trampoline, TRAMPOLINE_SIZE)
