"""Capturing a stopped process into an image, one resource at a time.

The process must be single-threaded (MOSIX processes are), traced by us, and
stopped where its registers may be changed: an interrupt stop, a signal-delivery
stop or a system-call exit stop (:func:`mosix_core.linux.inject.finish_call`
turns a seccomp stop into one). Each ``dump_*`` function captures one resource
and returns what goes into its record; :func:`write_image` puts them in the
stream in the order a restorer needs them. Nothing here changes the process: the
few questions only the process can answer (its signal handlers, its ``brk``, its
alternate signal stack) are asked by injected calls whose scratch memory is put
back, and its registers are restored afterwards.

A process that cannot be checkpointed (mosrun(1) CHECKPOINTS: open pipes or
sockets, set-user-ID) still gets a valid image, holding only a FAILURE record —
the manual counts such a file as a checkpoint.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import os
import queue
import resource
import stat
import struct
import threading
from typing import Any

import attrs

from mosix_core.errors import MosixError, TraceError
from mosix_core.image import runs as run_set
from mosix_core.image.stream import CHUNK, ImageWriter, Kind
from mosix_core.linux import inject, memory, procfs, ptrace
from mosix_core.linux.libc import LIBC
from mosix_core.linux.writes import WritesUntracked, WriteTracker

SYS_RT_SIGACTION = 13
SYS_SIGALTSTACK = 131
SYS_BRK = 12
SYS_GETITIMER = 36
ITIMERS = (0, 1, 2)  # ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF
SYS_GET_ROBUST_LIST = 274
RED_ZONE = 128
SCRATCH = 4096
O_ACCMODE = 3
O_WRONLY = 1
O_CLOEXEC = 0o2000000
NO_CHECKPOINT = frozenset({"[vsyscall]"})
KERNEL_PLACED = ("[vdso]", "[vvar]", "[vvar_vclock]")
RLIMITS = {name: getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")}
ANONYMOUS_KINDS = ("anon", "heap", "stack")


class CannotCheckpoint(MosixError):
    """The process has something mosrun(1) says makes a checkpoint impossible."""


@attrs.frozen
class CaptureStats:
    page_bytes: int
    image_bytes: int
    mappings: int
    files: int


# -- files --------------------------------------------------------------------------------------------
def dump_files(pid: int) -> list[dict[str, Any]]:
    """The open-file table; pipes, sockets and other kernel objects refuse."""
    files = []
    for fd in procfs.open_fds(pid):
        link = f"/proc/{pid}/fd/{fd}"
        try:
            target = os.readlink(link)
            info = os.stat(link)
            pos, flags = procfs.fd_info(pid, fd)
        except FileNotFoundError:
            continue  # closed while we looked
        mode = info.st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or not target.startswith("/"):
            what = "pipe" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else target
            raise CannotCheckpoint(
                f"file-descriptor #{fd} is a {what}: processes with open pipes or sockets cannot be checkpointed"
            )
        entry = {
            "fd": fd,
            "flags": flags & ~O_CLOEXEC,
            "cloexec": bool(flags & O_CLOEXEC),
            "pos": pos,
            "path": target.removesuffix(" (deleted)"),
        }
        if stat.S_ISDIR(mode):
            entry["kind"] = "dir"
        elif stat.S_ISREG(mode) and info.st_nlink == 0:
            # mosrun(1): an unlinked file is the process's own temporary file and goes
            # with it — unless opened write-only (nothing could read it back)
            entry["kind"] = "special" if flags & O_ACCMODE == O_WRONLY else "unlinked"
            entry["size"] = info.st_size
            entry["mode"] = stat.S_IMODE(mode)
        elif stat.S_ISREG(mode):
            entry["kind"] = "file"
        else:
            entry["kind"] = "special"  # terminals, /dev/null...: see mosrun(1)
        files.append(entry)
    return files


def write_unlinked_contents(pid: int, files: list[dict[str, Any]], writer: ImageWriter) -> None:
    for index, entry in enumerate(files):
        if entry["kind"] != "unlinked":
            continue
        fd = os.open(f"/proc/{pid}/fd/{entry['fd']}", os.O_RDONLY)
        try:
            offset = 0
            while True:
                data = os.pread(fd, CHUNK, offset)
                if not data:
                    break
                writer.add(Kind.FILE_DATA, struct.pack("<IQ", index, offset) + data)
                offset += len(data)
        finally:
            os.close(fd)


# -- memory -------------------------------------------------------------------------------------------
def dump_mappings(
    pid: int, mappings: list[procfs.Mapping], *, writable_shared_files: bool = False, copy_private_files: bool = False
) -> list[dict[str, Any]]:
    """The mappings to recreate. ``writable_shared_files``: a process that stays where
    it is (freezing) may keep writable shared mappings of files — their contents are
    the file's, mapped again on return — while a checkpoint cannot.
    ``copy_private_files``: the contents of a private mapping of a file that not
    everyone may read go in the image (a guest, restored by nobody, could not open it)."""
    out = []
    for m in mappings:
        if m.path in NO_CHECKPOINT:
            continue
        # a read-only shared mapping of a file is the file itself (glibc's gconv cache):
        # it is mapped again; shared anonymous memory never can be
        if m.shared and (not m.file_backed or m.deleted or ("w" in m.perms and not writable_shared_files)):
            raise CannotCheckpoint(f"shared memory at {m.start:#x} ({m.path or 'anonymous'})")
        entry = {"start": m.start, "end": m.end, "perms": m.perms, "path": m.path}
        if m.path in KERNEL_PLACED:
            entry["kind"] = "kernel"
        elif m.file_backed and not m.deleted and copy_private_files and not m.shared and not_for_everyone(m.path):
            entry["kind"] = "copy"
        elif m.file_backed and not m.deleted:
            entry.update(kind="file", offset=m.offset, inode=m.inode, device=m.device)
            try:
                info = os.stat(m.path)
                entry.update(mtime_ns=info.st_mtime_ns, size=info.st_size)
            except OSError:
                entry["kind"] = "copy"  # the file is not where maps says: keep its contents
        elif m.file_backed:
            entry["kind"] = "copy"  # a deleted file: keep all of it
        else:
            entry["kind"] = "heap" if m.path == "[heap]" else "stack" if m.path == "[stack]" else "anon"
        out.append(entry)
    return out


def not_for_everyone(path: str) -> bool:
    """Whether some user could not open ``path`` for reading (the file is not readable
    by others, or a directory above it not searchable by others)."""
    try:
        if not os.stat(path).st_mode & stat.S_IROTH:
            return True
        directory = os.path.dirname(path)
        while directory not in ("/", ""):
            if not os.stat(directory).st_mode & stat.S_IXOTH:
                return True
            directory = os.path.dirname(directory)
    except OSError:
        return True
    return False


def page_runs(pid: int, entries: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """The memory worth saving: every page of copied mappings, the present and swapped
    pages of anonymous ones, the written pages of private file mappings."""
    runs: list[tuple[int, int]] = []
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        for entry in entries:
            kind = entry["kind"]
            if kind == "kernel":
                continue
            if kind == "copy":
                runs.append((entry["start"], entry["end"] - entry["start"]))
            elif entry["perms"][3] != "s":
                runs += procfs.page_runs(fd, entry["start"], entry["end"], changed_only=kind == "file")
    finally:
        os.close(fd)
    return runs


def write_pages(
    pid: int, runs: list[tuple[int, int]], writer: ImageWriter, copied: list[tuple[int, int]] | None = None
) -> int:
    """Copy the runs from ``/proc/PID/mem`` into the image in large reads; the bytes saved.

    Reading the process and writing the image (checksum, lz4, the file or socket)
    overlap: a thread writes one chunk while the next is read, three buffers in turn
    (one being read, one waiting, one being written). ``copied``: the process is
    running and may unmap memory meanwhile — what cannot be read is left out, and
    the ``(start, end)`` runs that went into the image are listed there."""
    total = sum(length for _, length in runs)
    if total <= 2 * CHUNK:
        return _copy_pages(pid, runs, [bytearray(8 + CHUNK)], writer.add, copied)
    if writer.compress:
        return _write_compressed_pages(pid, runs, writer, copied)
    handoff: queue.Queue = queue.Queue(maxsize=1)
    failed: list[BaseException] = []

    def write_chunks() -> None:
        while (chunk := handoff.get()) is not None:
            if not failed:
                try:
                    writer.add(Kind.PAGES, chunk)
                except BaseException as err:  # re-raised by the reader
                    failed.append(err)

    def hand_over(kind: int, chunk: memoryview) -> None:
        if failed:
            raise failed[0]
        handoff.put(chunk)

    worker = threading.Thread(target=write_chunks, name="image-writer", daemon=True)
    worker.start()
    try:
        total = _copy_pages(pid, runs, [bytearray(8 + CHUNK) for _ in range(3)], hand_over, copied)
    finally:
        handoff.put(None)
        worker.join()
    if failed:
        raise failed[0]
    return total


def _write_compressed_pages(
    pid: int, runs: list[tuple[int, int]], writer: ImageWriter, copied: list[tuple[int, int]] | None
) -> int:
    """lz4 is the slow part of a compressed image: two threads compress chunks while
    this one reads the next and puts finished records in, in order."""
    depth = 4
    pending: collections.deque = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="image-lz4") as pool:

        def add(kind: int, chunk: memoryview) -> None:
            if len(pending) == depth:
                writer.commit(pending.popleft().result())
            pending.append(pool.submit(writer.prepare, kind, (chunk,)))

        # depth + 1 buffers: a chunk's buffer is read again only after its record is in
        total = _copy_pages(pid, runs, [bytearray(8 + CHUNK) for _ in range(depth + 1)], add, copied)
        while pending:
            writer.commit(pending.popleft().result())
    return total


def _copy_pages(
    pid: int, runs: list[tuple[int, int]], buffers: list[bytearray], add, copied: list[tuple[int, int]] | None = None
) -> int:
    # each chunk is read after an 8-byte gap for its address: the PAGES record goes to
    # the writer (and lz4) without being copied together
    views = [memoryview(buffer) for buffer in buffers]
    turn = total = 0
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for address, length in runs:
            done = 0
            while done < length:
                want = min(CHUNK, length - done)
                view = views[turn]
                try:
                    got = os.preadv(fd, [view[8 : 8 + want]], address + done)
                except OSError:
                    got = -1
                if got <= 0:
                    if copied is None:
                        raise TraceError(f"reading memory of process {pid} at {address + done:#x}")
                    break  # unmapped by the running process: its end says so
                struct.pack_into("<Q", buffers[turn], 0, address + done)
                add(Kind.PAGES, view[: 8 + got])
                turn = (turn + 1) % len(buffers)
                if copied is not None:
                    run_set.append(copied, address + done, address + done + got)
                done += got
                total += got
    finally:
        os.close(fd)
    return total


def dump_mm(pid: int, brk: int) -> dict[str, Any]:
    """The mm fields prctl(PR_SET_MM_MAP) restores, from /proc/PID/stat and auxv."""
    fields = procfs.stat_fields(pid)
    if fields is None:
        raise TraceError(f"process {pid} is gone", 3)

    def field(number: int) -> int:
        return int(fields[number - 3])

    with open(f"/proc/{pid}/auxv", "rb") as f:
        auxv = f.read()
    return {
        "start_code": field(26),
        "end_code": field(27),
        "start_stack": field(28),
        "start_data": field(45),
        "end_data": field(46),
        "start_brk": field(47),
        "brk": brk,
        "arg_start": field(48),
        "arg_end": field(49),
        "env_start": field(50),
        "env_end": field(51),
        "auxv": auxv.hex(),
    }


# -- what only the process can tell -----------------------------------------------------------------
class _Scratch:
    """A few bytes of the tracee's stack below its red zone, put back afterwards."""

    def __init__(self, pid: int, rsp: int) -> None:
        self.pid = pid
        self.address = (rsp - RED_ZONE - SCRATCH) & ~15
        self.saved = memory.read_bytes(pid, self.address, SCRATCH)

    def read(self, offset: int, size: int) -> bytes:
        return memory.read_bytes(self.pid, self.address + offset, size)

    def restore(self) -> None:
        memory.write_bytes(self.pid, self.address, self.saved)


def ask_process(
    pid: int, regs: ptrace.Registers, mappings: list[procfs.Mapping], status: dict[str, str]
) -> tuple[dict[str, Any], int, list[int]]:
    """(signal state, brk, signals that arrived meanwhile), by injected calls."""
    injector = inject.Injector(pid, inject.find_syscall_instruction(pid, mappings))
    scratch = _Scratch(pid, regs.rsp)
    try:
        actions = {}
        for sig in sorted(set(procfs.signal_set(status["SigCgt"])) | set(procfs.signal_set(status["SigIgn"]))):
            injector.check(f"rt_sigaction({sig})", SYS_RT_SIGACTION, sig, 0, scratch.address, 8)
            handler, flags, restorer, mask = struct.unpack("<QQQQ", scratch.read(0, 32))
            actions[str(sig)] = [handler, flags, restorer, mask]
        injector.check("sigaltstack", SYS_SIGALTSTACK, 0, scratch.address)
        sp, flags, size = struct.unpack("<Qi4xQ", scratch.read(0, 24))  # stack_t
        brk = injector.check("brk", SYS_BRK, 0)
        itimers = []  # real, virtual, profiling: [interval s, us, value s, us]
        for which in ITIMERS:
            injector.check(f"getitimer({which})", SYS_GETITIMER, which, scratch.address)
            itimers.append(list(struct.unpack("<qqqq", scratch.read(0, 32))))
    finally:
        scratch.restore()
        inject.put_back(pid, regs)
    signals = {
        "actions": actions,
        "mask": int(status["SigBlk"], 16),
        "altstack": [sp, flags, size],
        "pending": [info.hex() for info in ptrace.pending_siginfo(pid, shared=False)],
        "shared_pending": [info.hex() for info in ptrace.pending_siginfo(pid, shared=True)],
        "itimers": itimers,
    }
    return signals, brk, injector.deferred


def robust_list(pid: int) -> list[int]:
    head = ctypes.c_ulong()
    length = ctypes.c_size_t()
    if (
        LIBC.syscall(ctypes.c_long(SYS_GET_ROBUST_LIST), ctypes.c_long(pid), ctypes.byref(head), ctypes.byref(length))
        != 0
    ):
        return [0, 0]
    return [head.value, length.value]


def dump_limits(pid: int) -> dict[str, list[int]]:
    return {name: list(resource.prlimit(pid, number)) for name, number in RLIMITS.items()}


def check_credentials(status: dict[str, str]) -> None:
    uids, gids = status["Uid"].split(), status["Gid"].split()
    if len(set(uids)) != 1 or len(set(gids)) != 1:
        raise CannotCheckpoint("processes with setuid/setgid privileges cannot be checkpointed")


# -- memory sent while the process runs (migration) ---------------------------------------------------
@attrs.define
class Precopy:
    """What went ahead of a migrating process's image while it ran on: the memory map
    then (the target built it) and the anonymous memory read from it. The image that
    follows at the stop sends only what the process wrote meanwhile, or did not have."""

    tracker: WriteTracker
    entries: list[dict[str, Any]]
    sent: run_set.Runs = attrs.Factory(list)

    def close(self) -> None:
        self.tracker.close()


def precopy(pid: int, writer: ImageWriter, tracker: WriteTracker, *, copy_private_files: bool = True) -> Precopy:
    """Start an image of *running* process ``pid``: its memory map (marked ``precopy``)
    and the pages of its anonymous memory, each mapping's writes tracked from just
    before it is read. Raises :class:`CannotCheckpoint` as :func:`write_image` would."""
    entries = dump_mappings(pid, procfs.read_maps(pid), copy_private_files=copy_private_files)
    tracked = []
    for entry in entries:
        if (
            entry["kind"] in ANONYMOUS_KINDS
            and entry["perms"][3] == "p"
            and tracker.track(entry["start"], entry["end"])
        ):
            try:
                tracker.protect(entry["start"], entry["end"])
            except WritesUntracked:
                continue  # the process is gone
            tracked.append(entry)
    writer.add_json(Kind.MEMORY_MAP, {"mappings": entries, "precopy": True})
    done = Precopy(tracker, entries)
    write_pages(pid, page_runs(pid, tracked), writer, copied=done.sent)
    return done


def _after_precopy(pid: int, entries: list[dict[str, Any]], before: Precopy) -> tuple[list[int], run_set.Runs, list]:
    """(the start of each mapping the target keeps as it was sent ahead, the runs it
    must drop from those — no longer there —, the page runs still to send).

    A mapping is kept when it lies within one of the same kind sent ahead and its
    writes were tracked all along (it was not unmapped and mapped again meanwhile); a
    part of a mapping, its protection changed since, is kept too."""
    kept, discard, still = [], [], []
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        for entry in entries:
            start, end = entry["start"], entry["end"]
            if not (
                entry["kind"] in ANONYMOUS_KINDS
                and entry["perms"][3] == "p"
                and kept_within(entry, before.entries)
                and before.tracker.tracked(start, end)
            ):
                continue
            kept.append(entry)
            present = [(a, a + n) for a, n in procfs.page_runs(fd, start, end, changed_only=False)]
            sent = run_set.intersect(before.sent, [(start, end)])
            written = before.tracker.written(start, end)
            # what it wrote, and what it has that did not go (made meanwhile, or unreadable then)
            needed = run_set.union(run_set.intersect(present, written), run_set.subtract(present, sent))
            still += [(a, b - a) for a, b in needed]
            discard += run_set.subtract(sent, present)
    finally:
        os.close(fd)
    kept_starts = {entry["start"] for entry in kept}
    rest = [entry for entry in entries if entry["start"] not in kept_starts]
    return sorted(kept_starts), discard, page_runs(pid, rest) + still


def kept_within(entry: dict[str, Any], earlier: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The mapping sent ahead that anonymous mapping ``entry`` lies within, with the
    same kind (a stack stays a stack); None if there is none."""
    for old in earlier:
        if old["start"] <= entry["start"] and entry["end"] <= old["end"]:
            return old if old["kind"] == entry["kind"] and old["kind"] in ANONYMOUS_KINDS else None
    return None


# -- the whole image ----------------------------------------------------------------------------------
def write_image(
    pid: int,
    writer: ImageWriter,
    *,
    identity: dict[str, Any],
    regs: ptrace.Registers,
    files: bool = True,
    copy_private_files: bool = False,
    ahead: Precopy | None = None,
    deferred_pending: bool = False,
) -> tuple[CaptureStats, list[int]]:
    """Capture stopped process ``pid`` into ``writer`` (not closed here).

    ``identity`` is the MOSIX side of the process (virtual pid, MOSIX state...);
    ``regs`` its live registers at the stop, which are put back when done. Returns
    the statistics and the signals that arrived while it was examined (the caller
    re-sends them). Raises :class:`CannotCheckpoint` before writing anything when
    the process cannot be checkpointed. ``files=False``: the image leaves the open
    files out (a migrating process keeps them at home, pipes and sockets too).
    ``ahead``: :func:`precopy` began the image on ``writer`` while the process ran;
    then only what changed since goes (and the memory map says what the target keeps).
    ``deferred_pending``: the signals that arrived meanwhile are pending in the image
    too (a checkpoint: the process goes on here and gets them re-sent, and the one
    recovered from the image must have them as well)."""
    status = procfs.status_fields(pid)
    check_credentials(status)
    if int(status.get("Threads", "1")) != 1:
        raise CannotCheckpoint("multi-threaded processes cannot be checkpointed")
    files = dump_files(pid) if files else []
    mappings = procfs.read_maps(pid)
    entries = dump_mappings(pid, mappings, copy_private_files=copy_private_files)
    saved_regs = inject.copy_registers(regs)
    signals, brk, deferred = ask_process(pid, saved_regs, mappings, status)
    if deferred_pending:
        # the injected calls took them before they were delivered: without this, a
        # signal pending at the checkpoint would be lost to the recovered process
        signals["shared_pending"] += [_user_siginfo(sig).hex() for sig in deferred]
    image_regs = inject.resumable_registers(saved_regs, new_process=True)
    rseq = ptrace.rseq_configuration(pid)
    process = dict(identity)
    process.update(
        exe=os.readlink(f"/proc/{pid}/exe"),
        cwd=os.readlink(f"/proc/{pid}/cwd"),
        cmdline=_cmdline(pid),
        umask=int(status.get("Umask", "022"), 8),
        personality=_personality(pid),
        robust_list=robust_list(pid),
    )
    writer.add_json(Kind.PROCESS, process)
    writer.add(Kind.REGISTERS, bytes(image_regs))
    writer.add(Kind.XSTATE, ptrace.get_xstate(pid))
    writer.add_json(Kind.SIGNALS, signals)
    writer.add_json(Kind.RSEQ, {"pointer": rseq[0], "size": rseq[1], "signature": rseq[2], "flags": rseq[3]})
    writer.add_json(Kind.LIMITS, dump_limits(pid))
    writer.add_json(Kind.FILES, files)
    write_unlinked_contents(pid, files, writer)
    layout: dict[str, Any] = {"mappings": entries, "mm": dump_mm(pid, brk)}
    if ahead is None:
        runs = page_runs(pid, entries)
        writer.add_json(Kind.MEMORY_MAP, layout)
    else:
        layout["kept"], discard, runs = _after_precopy(pid, entries, ahead)
        writer.add_json(Kind.MEMORY_MAP, layout)
        if discard:
            writer.add_json(Kind.DISCARD, [[start, end - start] for start, end in discard])
    page_bytes = write_pages(pid, runs, writer)
    return CaptureStats(page_bytes, writer.bytes_written, len(entries), len(files)), deferred


def _user_siginfo(sig: int) -> bytes:
    """A siginfo_t for ``sig`` as kill(2) makes it (SI_USER); the sender is not known."""
    return struct.pack("<iii", sig, 0, 0).ljust(128, b"\0")


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [arg.decode(errors="surrogateescape") for arg in f.read().split(b"\0")[:-1]]


def _personality(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/personality") as f:
            return int(f.read().strip(), 16)
    except OSError:
        return 0
