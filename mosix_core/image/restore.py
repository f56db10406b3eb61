"""Restoring an image into a new process, record by record as the stream arrives.

The new process is the restore stub (:mod:`mosix_core.image.stub`), stopped by us
at the exit of its ``execve``. Everything is done by system calls injected into
it, so the kernel sees the process build its own state:

1. a one-page-plus-scratch *trampoline* is mapped where neither the stub nor the
   image has anything, and calls run from there;
2. the stub is unmapped entirely, ``[vvar]``/``[vvar_vclock]``/``[vdso]`` are moved
   (through a parking hole, sizes checked) to where the program expects them,
   and every mapping is recreated at its address — files mapped again from the
   same file (checked by inode, size and time), the rest anonymous;
3. page records are written straight into ``/proc/PID/mem`` (the tracer may
   write read-only pages) as they arrive;
4. after the END record has verified the whole stream: files, working
   directory, umask, signals, rseq, robust list, the mm fields and ``exe``
   (``PR_SET_MM_MAP``), limits, the MOSIX seccomp filter, then the trampoline
   goes and the FP state and registers are set.

Until step 4 is over the process has not run a single instruction of the
program: any error kills it and "restores nothing".
"""

from __future__ import annotations

import bisect
import collections
import concurrent.futures
import os
import resource
import struct
import tempfile
from typing import Any, Iterable

import attrs

from mosix_core.errors import MosixError, TraceError
from mosix_core.image import capture, stub
from mosix_core.image import runs as run_set
from mosix_core.image.capture import KERNEL_PLACED
from mosix_core.image.stream import HELD_RECORDS, CorruptImage, Kind, Record
from mosix_core.linux import inject, procfs, ptrace, seccomp

PAGE = 4096
TRAMPOLINE_SIZE = 16 * PAGE
LOWEST_HOLE = 0x100000

SYS_OPEN, SYS_CLOSE, SYS_LSEEK, SYS_MMAP, SYS_MUNMAP = 2, 3, 8, 9, 11
SYS_RT_SIGACTION, SYS_RT_SIGPROCMASK, SYS_MREMAP, SYS_DUP3 = 13, 14, 25, 292
SYS_SIGALTSTACK, SYS_PERSONALITY, SYS_CHDIR, SYS_UMASK, SYS_PRCTL = 131, 135, 80, 95, 157
SYS_SETITIMER = 38
SYS_MADVISE, MADV_DONTNEED, SYS_MPROTECT = 28, 4, 10
SYS_SET_ROBUST_LIST, SYS_RSEQ, SYS_SECCOMP = 273, 334, 317
SYS_RT_SIGQUEUEINFO, SYS_RT_TGSIGQUEUEINFO, SYS_EXIT_GROUP = 129, 297, 231

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS, MAP_GROWSDOWN, MAP_FIXED_NOREPLACE = 0x1, 0x2, 0x10, 0x20, 0x100, 0x100000
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
O_RDONLY, O_RDWR, O_CREAT, O_EXCL, O_TRUNC, O_CLOEXEC = 0, 2, 0o100, 0o200, 0o1000, 0o2000000
PR_SET_MM, PR_SET_MM_MAP, PR_SET_NO_NEW_PRIVS = 35, 14, 38
SS_ONSTACK = 1
UNCATCHABLE = (9, 19)
_MM_MAP = struct.Struct("<11QQII")


class RestoreFailed(MosixError):
    """The image is fine but this process could not be rebuilt from it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"Restoration failed: {reason}")


class FileRestoreFailed(MosixError):
    """mosrun -R -O: a replacement file could not be opened (the manual's message)."""


@attrs.frozen
class RestoreOptions:
    redirect: tuple[tuple[int, str], ...] = ()      # mosrun -O
    filter_program: tuple | None = None             # the seccomp filter the process runs under
    # a process away from home: its files, cwd and umask stay at home (its calls go
    # there), so it gets none here — not even the descriptors the stub inherited
    away: bool = False
    # a migrated process coming home into its own shell (the deputy's body): its files,
    # cwd, umask and executable are there already and stay as they are
    returning: bool = False
    # interval timers (alarm, setitimer) as they were; a thawed process's ran on meanwhile
    timers: bool = True


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


@attrs.define
class Restored:
    process: dict[str, Any]
    deferred: list[int]
    page_bytes: int = 0


def _prot(perms: str) -> int:
    return ((PROT_READ if perms[0] == "r" else 0) | (PROT_WRITE if perms[1] == "w" else 0)
            | (PROT_EXEC if perms[2] == "x" else 0))


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


class Restorer:
    """Restores one image into stub process ``pid`` (stopped at its execve exit)."""

    def __init__(self, pid: int, options: RestoreOptions, syscall_address: int = stub.SYSCALL_ADDRESS) -> None:
        self.pid = pid
        self.options = options
        self.injector = inject.Injector(pid, syscall_address)
        self.mem = os.open(f"/proc/{pid}/mem", os.O_RDWR)
        self.parts: dict[int, Any] = {}
        self.files: list[dict[str, Any]] = []
        self.unlinked: dict[int, int] = {}           # FILES index -> our temporary copy
        self.ahead: list[dict[str, Any]] | None = None   # a memory map sent ahead, while the process ran
        self.kept: list[tuple[int, int]] = []           # what of the memory sent ahead the process still has
        self.trampoline = 0
        self.page_bytes = 0
        self.memory: run_set.Runs = []                 # where page data may go: the map's memory
        self.file_data_at: dict[int, int] = {}          # FILES index -> the next offset due
        # chunks of pages being written by the pool; a streaming reader keeps their
        # buffers for HELD_RECORDS more records
        self._writing: collections.deque[concurrent.futures.Future] = collections.deque()
        self._writers: concurrent.futures.ThreadPoolExecutor | None = None

    # -- the stream -------------------------------------------------------------------------------
    def take(self, record: Record) -> None:
        kind = record.kind
        if kind == Kind.FAILURE:
            raise RestoreFailed(bytes(record.payload).decode(errors="replace"))
        if kind == Kind.PAGES:
            address, data = record.pages()
            check_pages(address, len(data), self.memory)
            self._pages(address, data)
            return
        self.settle()
        if kind in (Kind.PROCESS, Kind.SIGNALS, Kind.RSEQ, Kind.LIMITS):
            value = _object(record)
            CHECKS[kind](value)
            self.parts[kind] = value
        elif kind == Kind.REGISTERS:
            check_registers(record.payload)
            self.parts[kind] = bytes(record.payload)
        elif kind == Kind.XSTATE:
            check_xstate(record.payload, ptrace.get_xstate(self.pid))
            self.parts[kind] = bytes(record.payload)
        elif kind == Kind.FILES:
            files = record.json()
            check_files(files)
            self.files = files
            self._check_redirections()
        elif kind == Kind.FILE_DATA:
            self._file_data(record.payload)
        elif kind == Kind.MEMORY_MAP:
            layout = _object(record)
            self.memory = check_mappings(layout)
            if self.ahead is not None:
                self._rebuild_address_space(layout)
            else:
                self._build_address_space(layout["mappings"])
                if layout.get("precopy") is True:
                    self.ahead = layout["mappings"]
            self.parts[kind] = layout
        elif kind == Kind.DISCARD:
            self._discard(record.json())
        else:
            raise CorruptImage(f"unexpected {record.name} record")

    def close(self) -> None:
        self.settle(quiet=True)
        if self._writers is not None:
            self._writers.shutdown()
        os.close(self.mem)
        for fd in self.unlinked.values():
            os.close(fd)
        self.unlinked.clear()

    # -- memory ------------------------------------------------------------------------------------
    def _build_address_space(self, entries: list[dict[str, Any]]) -> None:
        if self.trampoline:
            raise CorruptImage("two memory maps in one image")
        inj = self.injector
        current = procfs.read_maps(self.pid)
        wanted = [(e["start"], e["end"]) for e in entries]
        ours = [(m.start, m.end) for m in current]
        self.trampoline = find_hole(wanted + ours, TRAMPOLINE_SIZE)
        inj.check("mmap(trampoline)", SYS_MMAP, self.trampoline, TRAMPOLINE_SIZE,
                  PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                  -1, 0)
        os.pwrite(self.mem, inject.SYSCALL_INSTRUCTION, self.trampoline)
        inj.address = self.trampoline
        for m in current:
            if m.path not in KERNEL_PLACED and m.path != "[vsyscall]":
                inj.check(f"munmap({m.start:#x})", SYS_MUNMAP, m.start, m.size)
        self._move_kernel_mappings([m for m in current if m.path in KERNEL_PLACED],
                                   [e for e in entries if e["kind"] == "kernel"], wanted)
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
                    inj.check(f"mmap({e['path']})", SYS_MMAP, start, length, prot, sharing | MAP_FIXED,
                              fd, e["offset"])
                else:
                    flags = MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS
                    if e["kind"] == "stack":
                        flags |= MAP_GROWSDOWN
                    inj.check(f"mmap({start:#x})", SYS_MMAP, start, length, prot, flags, -1, 0)
        finally:
            for fd in opened.values():
                inj.call(SYS_CLOSE, fd)

    def _rebuild_address_space(self, layout: dict[str, Any]) -> None:
        """The memory map at the stop, after one sent ahead: the mappings the source
        lists as ``kept`` lie within anonymous ones sent ahead and hold what was
        written there (changes follow); every other part of the memory of then goes,
        and every other mapping of now is made afresh."""
        before, self.ahead = self.ahead, None
        entries = layout["mappings"]
        kept_starts = set(layout.get("kept", ()))
        kept = [e for e in entries if e["start"] in kept_starts]
        if len(kept) != len(kept_starts):
            raise CorruptImage("the memory map keeps a mapping it does not have")
        if [e for e in before if e["kind"] == "kernel"] != [e for e in entries if e["kind"] == "kernel"]:
            raise RestoreFailed("the vDSO moved while the process was being sent")
        for e in kept:
            old = capture.kept_within(e, before)           # anonymous memory only
            if old is None:
                raise CorruptImage(f"the mapping at {e['start']:#x} was not sent ahead")
            if e["perms"] != old["perms"]:
                self.injector.check(f"mprotect({e['start']:#x})", SYS_MPROTECT, e["start"], e["end"] - e["start"],
                                    _prot(e["perms"]))
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
        self.injector.check("mmap(trampoline)", SYS_MMAP, new, TRAMPOLINE_SIZE, PROT_READ | PROT_WRITE | PROT_EXEC,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
        os.pwrite(self.mem, inject.SYSCALL_INSTRUCTION, new)
        self.injector.address = self.trampoline = new
        self.injector.check("munmap(trampoline)", SYS_MUNMAP, old, TRAMPOLINE_SIZE)

    def _discard(self, runs: Any) -> None:
        """Memory sent ahead that the process no longer has: empty again (anonymous)."""
        if self.ahead is not None or Kind.MEMORY_MAP not in self.parts or "kept" not in self.parts[Kind.MEMORY_MAP]:
            raise CorruptImage("a discard record without memory sent ahead")
        if not isinstance(runs, list) or not all(
                isinstance(run, list) and len(run) == 2 and all(type(v) is int for v in run) for run in runs):
            raise CorruptImage("the discard record is not a list of runs")
        for start, length in runs:
            _range(start, length, "discarded memory")
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
        if not same_file(info, entry, shared=shared, elsewhere=self.options.away):
            raise RestoreFailed(f"{path} has changed since the checkpoint")
        access = O_RDWR if shared and "w" in entry["perms"] else O_RDONLY
        return self._open(path, access | O_CLOEXEC, 0, f"open({path})")

    def _move_kernel_mappings(self, now: list[procfs.Mapping], wanted: list[dict[str, Any]],
                              image: list[tuple[int, int]]) -> None:
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
            self.injector.check(f"mremap({path})", SYS_MREMAP, m.start, m.size, m.size,
                                MREMAP_MAYMOVE | MREMAP_FIXED, parking)
            parked[path] = parking
            parking += m.size
        for path, e in there.items():
            size = e["end"] - e["start"]
            self.injector.check(f"mremap({path})", SYS_MREMAP, parked[path], size, size,
                                MREMAP_MAYMOVE | MREMAP_FIXED, e["start"])

    def _pages(self, address: int, data: memoryview) -> None:
        """Write a chunk of pages into the process — in the pool: most of the cost is
        the kernel's, faulting in and clearing the fresh pages, and two threads do it
        in ~0.6 the time of one (on a VM whose host hands out memory lazily, too)."""
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

    # -- files --------------------------------------------------------------------------------------
    def _check_redirections(self) -> None:
        open_fds = {entry["fd"] for entry in self.files}
        for fd, _ in self.options.redirect:
            if fd not in open_fds:
                raise FileRestoreFailed(f"File-descriptor {fd} was not open at the time of checkpoint!")

    def _file_data(self, payload: memoryview) -> None:
        if len(payload) < 12:
            raise CorruptImage("file-data record too short")
        index, offset = struct.unpack_from("<IQ", payload)
        if index >= len(self.files) or self.files[index].get("kind") != "unlinked":
            raise CorruptImage("file-data record for no unlinked file")
        # the capture sends a file's contents in order, each piece where the last ended
        if offset != self.file_data_at.get(index, 0) or offset + len(payload) - 12 > (1 << 63) - 1:
            raise CorruptImage(f"file-data record at offset {offset} of file #{index} is out of order")
        self.file_data_at[index] = offset + len(payload) - 12
        fd = self.unlinked.get(index)
        if fd is None:
            fd = self.unlinked[index] = _anonymous_file(self.files[index]["path"])
        os.pwrite(fd, payload[12:], offset)

    def _restore_files(self) -> None:
        redirect = dict(self.options.redirect)
        inherited = set(procfs.open_fds(self.pid))
        keep = {e["fd"] for e in self.files if e["kind"] == "special" and e["fd"] in inherited
                and e["fd"] not in redirect}
        for fd in sorted(inherited - keep):
            self.injector.call(SYS_CLOSE, fd)
        for index, entry in enumerate(self.files):
            fd = entry["fd"]
            if fd in keep:
                continue
            flags = entry["flags"] & ~(O_CREAT | O_EXCL | O_TRUNC)
            if entry["cloexec"]:
                flags |= O_CLOEXEC
            if fd in redirect:
                path = redirect[fd]
                try:
                    got = self._open(path, flags | O_CREAT, 0o666, path)
                except inject.InjectedCallFailed as err:
                    raise FileRestoreFailed(
                        f"Could not restore file-descriptor {fd} with \u2018{path}\u2019: "
                        f"{os.strerror(err.errno)}") from None
            elif entry["kind"] == "special":
                got = self._open("/dev/null", flags & (3 | O_CLOEXEC), 0, "/dev/null")
            elif entry["kind"] == "unlinked":
                copy = self.unlinked.get(index)
                if copy is None:
                    copy = self.unlinked[index] = _anonymous_file(entry["path"])
                got = self._reopen(f"/proc/{os.getpid()}/fd/{copy}", flags, entry["path"])
            else:
                got = self._reopen(entry["path"], flags, entry["path"])
            if got != fd:
                self.injector.check("dup3", SYS_DUP3, got, fd, O_CLOEXEC if entry["cloexec"] else 0)
                self.injector.call(SYS_CLOSE, got)
            if entry["kind"] != "special" or fd in redirect:
                self.injector.call(SYS_LSEEK, fd, entry["pos"], 0)

    def _reopen(self, path: str, flags: int, shown: str) -> int:
        try:
            return self._open(path, flags, 0, shown)
        except inject.InjectedCallFailed as err:
            raise RestoreFailed(f"cannot re-open {shown}: {os.strerror(err.errno)}") from None

    def _open(self, path: str, flags: int, mode: int, what: str) -> int:
        address = self._scratch(os.fsencode(path) + b"\0")
        return self.injector.check(f"open({what})", SYS_OPEN, address, flags, mode)

    def _scratch(self, data: bytes, offset: int = 0) -> int:
        """Put ``data`` in the trampoline's scratch area; its address there."""
        if len(data) > TRAMPOLINE_SIZE - 2 * PAGE - offset:
            raise RestoreFailed("restorer scratch space exhausted")
        address = self.trampoline + PAGE + offset
        os.pwrite(self.mem, data, address)
        return address

    # -- the rest, after END ---------------------------------------------------------------------------
    def check_resumable(self) -> None:
        """The process will carry on from its instruction pointer: that must be code of its own."""
        rip = ptrace.Registers.from_buffer_copy(self.parts[Kind.REGISTERS]).rip
        if not any(e["start"] <= rip < e["end"] and e["perms"][2] == "x"
                   for e in self.parts[Kind.MEMORY_MAP]["mappings"]):
            raise CorruptImage(f"the instruction pointer {rip:#x} is not in code of the process")

    def finish(self) -> Restored:
        self.settle()
        if self.ahead is not None:
            raise CorruptImage("the image has memory sent ahead but no memory map at the stop")
        for kind in (Kind.PROCESS, Kind.REGISTERS, Kind.XSTATE, Kind.SIGNALS, Kind.RSEQ, Kind.LIMITS,
                     Kind.MEMORY_MAP):
            if kind not in self.parts:
                raise CorruptImage(f"the image has no {Kind.NAMES[kind]} record")
        if "mm" not in self.parts[Kind.MEMORY_MAP]:
            raise CorruptImage("the memory map has no mm fields")
        self.check_resumable()
        try:
            process = self.parts[Kind.PROCESS]
            inj = self.injector
            if self.options.away:
                for fd in procfs.open_fds(self.pid):
                    inj.call(SYS_CLOSE, fd)
            elif not self.options.returning:
                self._restore_files()
                cwd = process["cwd"]
                inj.check(f"chdir({cwd})", SYS_CHDIR, self._scratch(os.fsencode(cwd) + b"\0"))
                inj.call(SYS_UMASK, process["umask"])
            if process.get("personality"):
                inj.call(SYS_PERSONALITY, process["personality"])
            self._restore_signals(self.parts[Kind.SIGNALS])
            rseq = self.parts[Kind.RSEQ]
            if rseq["pointer"]:
                inj.check("rseq", SYS_RSEQ, rseq["pointer"], rseq["size"], 0, rseq["signature"])
            head, length = process.get("robust_list", [0, 0])
            if head:
                inj.check("set_robust_list", SYS_SET_ROBUST_LIST, head, length)
            self._restore_mm(self.parts[Kind.MEMORY_MAP]["mm"], None if self.options.returning else process["exe"])
            self._restore_limits(self.parts[Kind.LIMITS])
            if self.options.filter_program is not None:
                program = list(self.options.filter_program)
                code = self._scratch(seccomp.pack(program), offset=PAGE)
                fprog = self._scratch(struct.pack("<H6xQ", len(program), code))
                inj.check("prctl(PR_SET_NO_NEW_PRIVS)", SYS_PRCTL, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
                inj.check("seccomp", SYS_SECCOMP, seccomp.SECCOMP_SET_MODE_FILTER, 0, fprog)
            if self.options.timers:
                for which, timer in enumerate(self.parts[Kind.SIGNALS].get("itimers", [])):
                    if any(timer):
                        inj.check(f"setitimer({which})", SYS_SETITIMER, which,
                                  self._scratch(struct.pack("<qqqq", *timer)), 0)
            inj.check("munmap(trampoline)", SYS_MUNMAP, self.trampoline, TRAMPOLINE_SIZE)
            ptrace.set_xstate(self.pid, self.parts[Kind.XSTATE])
            ptrace.set_regs(self.pid, ptrace.Registers.from_buffer_copy(self.parts[Kind.REGISTERS]))
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptImage(f"malformed process record: {err!r}") from None
        except inject.InjectedCallFailed as err:
            raise RestoreFailed(str(err)) from None
        return Restored(process, inj.deferred, self.page_bytes)

    def _restore_signals(self, signals: dict[str, Any]) -> None:
        inj = self.injector
        actions = {int(sig): value for sig, value in signals["actions"].items()}
        ignored_now = set(procfs.signal_set(procfs.status_fields(self.pid)["SigIgn"]))
        for sig in sorted(set(actions) | ignored_now):
            if sig in UNCATCHABLE:
                continue
            handler, flags, restorer, mask = actions.get(sig, (0, 0, 0, 0))
            address = self._scratch(struct.pack("<QQQQ", handler, flags, restorer, mask))
            inj.check(f"rt_sigaction({sig})", SYS_RT_SIGACTION, sig, address, 0, 8)
        sp, flags, size = signals["altstack"]
        if sp or size:
            address = self._scratch(struct.pack("<Qi4xQ", sp, flags & ~SS_ONSTACK, size))
            inj.check("sigaltstack", SYS_SIGALTSTACK, address, 0)
        inj.check("rt_sigprocmask", SYS_RT_SIGPROCMASK, 2, self._scratch(struct.pack("<Q", signals["mask"])), 0, 8)
        for shared, infos in ((False, signals["pending"]), (True, signals["shared_pending"])):
            for text in infos:
                info = bytes.fromhex(text)
                sig = struct.unpack_from("<i", info)[0]
                address = self._scratch(info)
                if shared:
                    inj.call(SYS_RT_SIGQUEUEINFO, self.pid, sig, address)
                else:
                    inj.call(SYS_RT_TGSIGQUEUEINFO, self.pid, self.pid, sig, address)

    def _restore_mm(self, mm: dict[str, Any], exe: str | None) -> None:
        """The kernel's memory descriptor fields; the executable too unless ``exe`` is
        None (-1 leaves it as it is)."""
        inj = self.injector
        auxv = bytes.fromhex(mm["auxv"])
        auxv_at = self._scratch(auxv, offset=2 * PAGE)
        exe_fd = self._open(exe, O_RDONLY | O_CLOEXEC, 0, exe) if exe and os.path.exists(exe) else -1

        def set_map(fd: int) -> int:
            data = _MM_MAP.pack(mm["start_code"], mm["end_code"], mm["start_data"], mm["end_data"],
                                mm["start_brk"], mm["brk"], mm["start_stack"], mm["arg_start"],
                                mm["arg_end"], mm["env_start"], mm["env_end"], auxv_at, len(auxv),
                                fd & 0xFFFFFFFF)
            return inj.call(SYS_PRCTL, PR_SET_MM, PR_SET_MM_MAP, self._scratch(data), len(data), 0)

        result = set_map(exe_fd)
        if result < 0 and exe_fd >= 0:
            result = set_map(-1)        # exe needs CAP_CHECKPOINT_RESTORE: keep the rest
        if exe_fd >= 0:
            inj.call(SYS_CLOSE, exe_fd)
        if result < 0:
            raise RestoreFailed(f"prctl(PR_SET_MM_MAP): {os.strerror(-result)}")

    def _restore_limits(self, limits: dict[str, list[int]]) -> None:
        for name, (soft, hard) in limits.items():
            number = getattr(resource, name, None)
            if number is None:
                continue
            try:
                resource.prlimit(self.pid, number, (soft, hard))
            except (OSError, ValueError):
                try:            # a hard limit above ours needs privilege: keep what we can
                    _, current_hard = resource.prlimit(self.pid, number)
                    within = soft if current_hard == resource.RLIM_INFINITY else min(soft, current_hard)
                    resource.prlimit(self.pid, number, (within, current_hard))
                except (OSError, ValueError):
                    pass

    def abandon(self) -> None:
        """Make the half-built process go away quietly (exit status 1)."""
        self.settle(quiet=True)
        try:
            if self.trampoline:
                self.injector.address = self.trampoline
            self.injector.call(SYS_EXIT_GROUP, 1)
        except TraceError:
            pass
        try:
            ptrace.cont(self.pid)
        except TraceError:
            pass


def _object(record: Record) -> dict[str, Any]:
    value = record.json()
    if not isinstance(value, dict):
        raise CorruptImage(f"the {record.name} record is not an object")
    return value


# -- checking what an image says, before acting on it --------------------------------------------------
# An image is data from outside (a file anyone may edit and re-checksum, a stream from
# another node): every number in it is checked against what the kernel and the
# capture could have produced before it reaches a system call, the process's memory
# or a register. A value out of range is a corrupt image — never a call that fails
# half-way, and never an address that wraps round to 0 when it is put in a register.

USER_LIMIT = 0x7FFF_FFFF_F000      # the top of a process's address space (x86-64, 4-level paging)
U64 = (1 << 64) - 1
NSIG = 64
MAX_FD = 1 << 20                   # the kernel's NR_OPEN
MAX_PATH = 4096                    # PATH_MAX, with its NUL
MAX_PENDING = 1 << 16              # queued signals: far above any RLIMIT_SIGPENDING in use
PID_MAX = 1 << 22                  # PID_MAX_LIMIT
SIGINFO_SIZE = 128
AUXV_MAX = 1024                    # mm->saved_auxv is smaller: the kernel refuses more
RSEQ_MIN, RSEQ_MAX, RSEQ_ALIGN = 32, PAGE, 32
ROBUST_LIST_HEAD = 24              # sizeof(struct robust_list_head): the only length accepted
# what rt_sigaction(2) keeps of sa_flags on x86-64 (the capture reads them back from it)
SA_FLAGS = 0x1 | 0x2 | 0x4 | 0x400 | 0x800 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x4000_0000 | 0x8000_0000
SS_DISABLE = 0x2
SS_FLAGS = SS_ONSTACK | SS_DISABLE | 0x8000_0000  # and SS_AUTODISARM
MINSIGSTKSZ = 2048
OPEN_FLAGS = 0o37777777                           # every O_* bit open(2) knows
USER_CS, USER_DS = 0x33, 0x2B                     # a 64-bit process's segment selectors
MAPPING_KINDS = frozenset({"file", "copy", "anon", "heap", "stack", "kernel"})
FILE_KINDS = frozenset({"file", "dir", "special", "unlinked"})
MM_FIELDS = ("start_code", "end_code", "start_data", "end_data", "start_brk", "brk", "start_stack",
             "arg_start", "arg_end", "env_start", "env_end")
XSAVE_HEADER = 512                 # the legacy area, then the header: xstate_bv, xcomp_bv, reserved
XSAVE_HEADER_SIZE = 64
XSAVE_XCR0 = 464                   # in the legacy area's software-reserved bytes


def _int(value: Any, what: str, low: int = 0, high: int = U64) -> int:
    if type(value) is not int or not low <= value <= high:
        raise CorruptImage(f"{what} is out of range: {value!r}")
    return value


def _address(value: Any, what: str, *, align: int = 1, zero: bool = False) -> int:
    """A user-space address (``zero``: or 0, for "none"), aligned to ``align``."""
    if zero and value == 0 and type(value) is int:
        return 0
    address = _int(value, what, 1, USER_LIMIT - 1)
    if address % align:
        raise CorruptImage(f"{what} is not aligned: {address:#x}")
    return address


def _range(start: Any, length: Any, what: str, *, align: int = PAGE) -> tuple[int, int]:
    """``[start, start + length)``: nonzero, aligned, within the user address space."""
    start = _address(start, f"{what} start", align=align)
    length = _int(length, f"{what} length", 1, USER_LIMIT - start)
    if length % align:
        raise CorruptImage(f"{what} length is not aligned: {length:#x}")
    return start, start + length


def _text(value: Any, what: str, *, absolute: bool = False) -> str:
    if not isinstance(value, str) or "\0" in value or len(value) >= MAX_PATH:
        raise CorruptImage(f"{what} is not a path")
    if absolute and not value.startswith("/"):
        raise CorruptImage(f"{what} is not an absolute path")
    return value


def _list(value: Any, what: str, length: int | None = None, most: int = 1 << 20) -> list:
    if not isinstance(value, list) or (length is not None and len(value) != length) or len(value) > most:
        raise CorruptImage(f"{what} is malformed")
    return value


def _mmap_min_addr() -> int:
    try:
        with open("/proc/sys/vm/mmap_min_addr") as f:
            return max(int(f.read()), PAGE)
    except (OSError, ValueError):
        return 1 << 16


def _max_map_count() -> int:
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 16


def check_process(process: dict[str, Any]) -> None:
    if "pid" in process:            # an image going home from a guest has none
        _int(process["pid"], "the pid", 1, PID_MAX)
    if not isinstance(process.get("mosix", {}), dict):
        raise CorruptImage("the MOSIX state is not an object")
    for arg in _list(process.get("cmdline"), "the command line", most=1 << 16):
        if not isinstance(arg, str):
            raise CorruptImage("the command line is malformed")
    _text(process.get("cwd"), "the working directory", absolute=True)
    _text(process.get("exe"), "the executable", absolute=True)
    _int(process.get("umask"), "the umask", 0, 0o777)
    _int(process.get("personality", 0), "the personality", 0, 0xFFFF_FFFE)     # ~0 only asks
    for pair in _list(process.get("converted", []), "the privately mapped shared ranges", most=1 << 16):
        low, high = _list(pair, "a privately mapped shared range", 2)
        if _address(low, "a privately mapped shared range") >= _int(high, "a privately mapped shared range", 1, USER_LIMIT):
            raise CorruptImage("a privately mapped shared range is empty")
    head, length = _list(process.get("robust_list", [0, 0]), "the robust list", 2)
    if _address(head, "the robust list", align=8, zero=True):
        _int(length, "the robust list's length", ROBUST_LIST_HEAD, ROBUST_LIST_HEAD)
    else:
        _int(length, "the robust list's length", 0, ROBUST_LIST_HEAD)


def check_registers(raw: bytes) -> None:
    if len(raw) != len(bytes(ptrace.Registers())):
        raise CorruptImage("the registers record has the wrong size")
    regs = ptrace.Registers.from_buffer_copy(raw)
    _address(regs.rip, "the instruction pointer")
    _address(regs.rsp, "the stack pointer")
    _address(regs.fs_base, "the fs base", zero=True)
    _address(regs.gs_base, "the gs base", zero=True)
    if (regs.cs, regs.ss) != (USER_CS, USER_DS) or any(
            getattr(regs, name) not in (0, USER_DS) for name in ("ds", "es", "fs", "gs")):
        raise CorruptImage("the segment registers are not a 64-bit process's")


def check_xstate(raw: bytes, own: bytes) -> None:
    """The FP state as this CPU and kernel hold it (``own``: the new process's): the
    same size, only features this CPU has, the standard format, MXCSR as the CPU allows."""
    if len(raw) != len(own) or len(raw) < XSAVE_HEADER + XSAVE_HEADER_SIZE:
        raise CorruptImage(f"the FP state has {len(raw)} bytes; this CPU's has {len(own)}")
    features, compacted = struct.unpack_from("<QQ", raw, XSAVE_HEADER)
    supported = struct.unpack_from("<Q", own, XSAVE_XCR0)[0]      # the kernel puts XCR0 there
    if compacted or any(raw[XSAVE_HEADER + 16:XSAVE_HEADER + XSAVE_HEADER_SIZE]):
        raise CorruptImage("the FP state is not in the standard format")
    if features & ~supported:
        raise CorruptImage(f"the FP state has features {features:#x}; this CPU has {supported:#x}")
    mxcsr = struct.unpack_from("<I", raw, 24)[0]
    allowed = struct.unpack_from("<I", own, 28)[0] or 0xFFBF       # MXCSR_MASK; 0 means the default
    if mxcsr & ~allowed:
        raise CorruptImage(f"the FP control word MXCSR {mxcsr:#x} is not one this CPU allows")


def check_signals(signals: dict[str, Any]) -> None:
    actions = signals.get("actions")
    if not isinstance(actions, dict) or len(actions) > NSIG:
        raise CorruptImage("the signal actions are malformed")
    for sig, action in actions.items():
        if not (isinstance(sig, str) and sig.isdigit() and 1 <= int(sig) <= NSIG):
            raise CorruptImage(f"the signal actions name signal {sig!r}")
        handler, flags, restorer, _mask = _list(action, f"the action of signal {sig}", 4)
        if handler not in (0, 1):
            _address(handler, f"the handler of signal {sig}")
        if _int(flags, f"the flags of signal {sig}") & ~SA_FLAGS:
            raise CorruptImage(f"the flags of signal {sig} are unknown: {flags:#x}")
        _address(restorer, f"the restorer of signal {sig}", zero=True)
        _int(_mask, f"the mask of signal {sig}")
    sp, flags, size = _list(signals.get("altstack"), "the alternate signal stack", 3)
    if _int(flags, "the alternate stack's flags", 0, 0xFFFF_FFFF) & ~SS_FLAGS:
        raise CorruptImage(f"the alternate stack's flags are unknown: {flags:#x}")
    if flags & SS_DISABLE:
        _int(sp, "the disabled alternate stack", 0, 0)
        _int(size, "the disabled alternate stack's size", 0, 0)
    else:
        _int(size, "the alternate stack's size", MINSIGSTKSZ)
        _range(sp, size, "the alternate signal stack", align=1)
    _int(signals.get("mask"), "the signal mask")
    for key in ("pending", "shared_pending"):
        for text in _list(signals.get(key), f"the {key} signals", most=MAX_PENDING):
            try:
                info = bytes.fromhex(text)
            except (TypeError, ValueError):
                raise CorruptImage(f"a {key} signal is malformed") from None
            if len(info) != SIGINFO_SIZE:
                raise CorruptImage(f"a {key} signal is malformed")
            _int(struct.unpack_from("<i", info)[0], f"a {key} signal", 1, NSIG)
    for timer in _list(signals.get("itimers", []), "the interval timers", most=3):
        for i, value in enumerate(_list(timer, "an interval timer", 4)):
            _int(value, "an interval timer", 0, 999_999 if i % 2 else (1 << 63) - 1)


def check_rseq(rseq: dict[str, Any]) -> None:
    pointer = _address(rseq.get("pointer"), "the rseq area", align=RSEQ_ALIGN, zero=True)
    if pointer:
        size = _int(rseq.get("size"), "the rseq area's size", RSEQ_MIN, RSEQ_MAX)
        _range(pointer, size, "the rseq area", align=1)
        _int(rseq.get("signature"), "the rseq signature", 0, 0xFFFF_FFFF)
    _int(rseq.get("flags", 0), "the rseq flags", 0, 0)


def check_limits(limits: dict[str, Any]) -> None:
    if len(limits) > 64:
        raise CorruptImage("too many resource limits")
    for name, pair in limits.items():
        soft, hard = _list(pair, f"the limit {name}", 2)
        # RLIM_INFINITY is -1 as Python reads it
        _int(soft, f"the limit {name}", -1, (1 << 63) - 1)
        _int(hard, f"the limit {name}", -1, (1 << 63) - 1)
        if hard != -1 and (soft == -1 or soft > hard):
            raise CorruptImage(f"the limit {name} has its soft limit above its hard limit")


def check_files(files: Any) -> None:
    seen = set()
    for entry in _list(files, "the file table", most=MAX_FD):
        if not isinstance(entry, dict) or entry.get("kind") not in FILE_KINDS:
            raise CorruptImage("the file table is malformed")
        fd = _int(entry.get("fd"), "a file descriptor", 0, MAX_FD - 1)
        if fd in seen:
            raise CorruptImage(f"file descriptor {fd} is in the file table twice")
        seen.add(fd)
        _int(entry.get("flags"), f"the flags of file descriptor {fd}", 0, OPEN_FLAGS)
        if not isinstance(entry.get("cloexec"), bool):
            raise CorruptImage(f"the close-on-exec flag of file descriptor {fd} is malformed")
        _int(entry.get("pos"), f"the offset of file descriptor {fd}", 0, (1 << 63) - 1)
        _text(entry.get("path"), f"the file of descriptor {fd}", absolute=True)
        if entry["kind"] == "unlinked":
            _int(entry.get("size"), f"the size of file descriptor {fd}", 0, (1 << 63) - 1)
            _int(entry.get("mode"), f"the mode of file descriptor {fd}", 0, 0o7777)


def check_mappings(layout: dict[str, Any]) -> run_set.Runs:
    """A memory map record; the runs of memory it has for page data. Its mm fields
    (absent from a freeze image's and from one sent ahead) are checked when there."""
    entries = _list(layout.get("mappings"), "the memory map", most=_max_map_count())
    low = _mmap_min_addr()
    end_before = 0
    memory: run_set.Runs = []
    for e in entries:
        if not isinstance(e, dict) or e.get("kind") not in MAPPING_KINDS:
            raise CorruptImage("the memory map is malformed")
        start, end = e.get("start"), e.get("end")
        start, end = _range(start, _int(end, "a mapping's end") - _int(start, "a mapping's start"), "a mapping")
        if start < max(low, end_before):
            raise CorruptImage(f"the mapping at {start:#x} overlaps another or lies below the lowest address")
        end_before = end
        perms = e.get("perms")
        if not (isinstance(perms, str) and len(perms) == 4 and perms[0] in "r-" and perms[1] in "w-"
                and perms[2] in "x-" and perms[3] in "ps"):
            raise CorruptImage(f"the mapping at {start:#x} has protection {perms!r}")
        path = _text(e.get("path", ""), f"the path of the mapping at {start:#x}")
        kind = e["kind"]
        if kind == "kernel":
            if path not in KERNEL_PLACED:
                raise CorruptImage(f"the kernel mapping at {start:#x} is {path!r}")
            continue
        if kind == "file":
            _text(path, f"the file of the mapping at {start:#x}", absolute=True)
            offset = _int(e.get("offset"), f"the file offset of the mapping at {start:#x}", 0,
                          (1 << 63) - 1 - (end - start))
            if offset % PAGE:
                raise CorruptImage(f"the file offset of the mapping at {start:#x} is not aligned")
            _int(e.get("inode"), f"the inode of the mapping at {start:#x}")
            _int(e.get("size", 0), f"the file size of the mapping at {start:#x}", 0, (1 << 63) - 1)
            _int(e.get("mtime_ns", 0), f"the file time of the mapping at {start:#x}", -(1 << 63), (1 << 63) - 1)
        elif perms[3] == "s":
            raise CorruptImage(f"the anonymous mapping at {start:#x} is shared")
        run_set.append(memory, start, end)
    if "precopy" in layout and not isinstance(layout["precopy"], bool):
        raise CorruptImage("the memory map's precopy flag is malformed")
    kept = _list(layout.get("kept", []), "the mappings kept")
    if not all(type(k) is int for k in kept):
        raise CorruptImage("the mappings kept are malformed")
    if "mm" in layout:
        mm = layout["mm"]
        if not isinstance(mm, dict):
            raise CorruptImage("the memory map's mm fields are malformed")
        values = {name: _int(mm.get(name), f"the mm field {name}", low, USER_LIMIT - 1) for name in MM_FIELDS}
        if not (values["start_code"] < values["end_code"] and values["start_data"] <= values["end_data"]
                and values["start_brk"] <= values["brk"] and values["arg_start"] <= values["arg_end"]
                and values["env_start"] <= values["env_end"]):
            raise CorruptImage("the mm fields are out of order")
        try:
            auxv = bytes.fromhex(mm.get("auxv"))
        except (TypeError, ValueError):
            raise CorruptImage("the auxiliary vector is malformed") from None
        if len(auxv) > AUXV_MAX or len(auxv) % 16:
            raise CorruptImage("the auxiliary vector is malformed")
    return memory


CHECKS = {Kind.PROCESS: check_process, Kind.SIGNALS: check_signals, Kind.RSEQ: check_rseq,
          Kind.LIMITS: check_limits}


def check_pages(address: int, length: int, memory: run_set.Runs) -> None:
    """Page data goes only into the memory the image's map has (never the vDSO, the
    restorer's trampoline or past the end of the address space)."""
    start, end = _range(address, length, "page data")
    at = bisect.bisect_right(memory, (start, U64)) - 1
    if at < 0 or memory[at][1] < end:
        raise CorruptImage(f"page data at {start:#x} is not in the memory map")


def _anonymous_file(original: str) -> int:
    """A nameless file to hold an unlinked file's contents, near where it lived."""
    for directory in (os.path.dirname(original) or "/", tempfile.gettempdir()):
        try:
            return os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
        except OSError:
            continue
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    return fd


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
