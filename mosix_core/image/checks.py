"""Checking what an image says, before the restorer acts on it.

An image is data from outside (a file anyone may edit and re-checksum, a stream from
another node): every number in it is checked against what the kernel and the
capture could have produced before it reaches a system call, the process's memory
or a register. A value out of range is a corrupt image — never a call that fails
half-way, and never an address that wraps round to 0 when it is put in a register.
"""

from __future__ import annotations

import bisect
import struct
from typing import Any

from mosix_core.image import runs as run_set
from mosix_core.image.capture import KERNEL_PLACED
from mosix_core.image.stream import CorruptImage, Kind, Record
from mosix_core.linux import ptrace

PAGE = 4096
SS_ONSTACK = 1

USER_LIMIT = 0x7FFF_FFFF_F000  # the top of a process's address space (x86-64, 4-level paging)
U64 = (1 << 64) - 1
NSIG = 64
MAX_FD = 1 << 20  # the kernel's NR_OPEN
MAX_PATH = 4096  # PATH_MAX, with its NUL
MAX_PENDING = 1 << 16  # queued signals: far above any RLIMIT_SIGPENDING in use
PID_MAX = 1 << 22  # PID_MAX_LIMIT
SIGINFO_SIZE = 128
AUXV_MAX = 1024  # mm->saved_auxv is smaller: the kernel refuses more
RSEQ_MIN, RSEQ_MAX, RSEQ_ALIGN = 32, PAGE, 32
ROBUST_LIST_HEAD = 24  # sizeof(struct robust_list_head): the only length accepted
# what rt_sigaction(2) keeps of sa_flags on x86-64 (the capture reads them back from it)
SA_FLAGS = 0x1 | 0x2 | 0x4 | 0x400 | 0x800 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x4000_0000 | 0x8000_0000
SS_DISABLE = 0x2
SS_FLAGS = SS_ONSTACK | SS_DISABLE | 0x8000_0000  # and SS_AUTODISARM
MINSIGSTKSZ = 2048
OPEN_FLAGS = 0o37777777  # every O_* bit open(2) knows
USER_CS, USER_DS = 0x33, 0x2B  # a 64-bit process's segment selectors
MAPPING_KINDS = frozenset({"file", "copy", "anon", "heap", "stack", "kernel"})
FILE_KINDS = frozenset({"file", "dir", "special", "unlinked"})
MM_FIELDS = (
    "start_code",
    "end_code",
    "start_data",
    "end_data",
    "start_brk",
    "brk",
    "start_stack",
    "arg_start",
    "arg_end",
    "env_start",
    "env_end",
)
XSAVE_HEADER = 512  # the legacy area, then the header: xstate_bv, xcomp_bv, reserved
XSAVE_HEADER_SIZE = 64
XSAVE_XCR0 = 464  # in the legacy area's software-reserved bytes


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


def user_range(start: Any, length: Any, what: str, *, align: int = PAGE) -> tuple[int, int]:
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
    if "pid" in process:  # an image going home from a guest has none
        _int(process["pid"], "the pid", 1, PID_MAX)
    if not isinstance(process.get("mosix", {}), dict):
        raise CorruptImage("the MOSIX state is not an object")
    for arg in _list(process.get("cmdline"), "the command line", most=1 << 16):
        if not isinstance(arg, str):
            raise CorruptImage("the command line is malformed")
    _text(process.get("cwd"), "the working directory", absolute=True)
    _text(process.get("exe"), "the executable", absolute=True)
    _int(process.get("umask"), "the umask", 0, 0o777)
    _int(process.get("personality", 0), "the personality", 0, 0xFFFF_FFFE)  # ~0 only asks
    for pair in _list(process.get("converted", []), "the privately mapped shared ranges", most=1 << 16):
        low, high = _list(pair, "a privately mapped shared range", 2)
        what = "a privately mapped shared range"
        if _address(low, what) >= _int(high, what, 1, USER_LIMIT):
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
        getattr(regs, name) not in (0, USER_DS) for name in ("ds", "es", "fs", "gs")
    ):
        raise CorruptImage("the segment registers are not a 64-bit process's")


def check_xstate(raw: bytes, own: bytes) -> None:
    """The FP state as this CPU and kernel hold it (``own``: the new process's): the
    same size, only features this CPU has, the standard format, MXCSR as the CPU allows."""
    if len(raw) != len(own) or len(raw) < XSAVE_HEADER + XSAVE_HEADER_SIZE:
        raise CorruptImage(f"the FP state has {len(raw)} bytes; this CPU's has {len(own)}")
    features, compacted = struct.unpack_from("<QQ", raw, XSAVE_HEADER)
    supported = struct.unpack_from("<Q", own, XSAVE_XCR0)[0]  # the kernel puts XCR0 there
    if compacted or any(raw[XSAVE_HEADER + 16 : XSAVE_HEADER + XSAVE_HEADER_SIZE]):
        raise CorruptImage("the FP state is not in the standard format")
    if features & ~supported:
        raise CorruptImage(f"the FP state has features {features:#x}; this CPU has {supported:#x}")
    mxcsr = struct.unpack_from("<I", raw, 24)[0]
    allowed = struct.unpack_from("<I", own, 28)[0] or 0xFFBF  # MXCSR_MASK; 0 means the default
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
        user_range(sp, size, "the alternate signal stack", align=1)
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
        user_range(pointer, size, "the rseq area", align=1)
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
        start, end = user_range(start, _int(end, "a mapping's end") - _int(start, "a mapping's start"), "a mapping")
        if start < max(low, end_before):
            raise CorruptImage(f"the mapping at {start:#x} overlaps another or lies below the lowest address")
        end_before = end
        perms = e.get("perms")
        if not (
            isinstance(perms, str)
            and len(perms) == 4
            and perms[0] in "r-"
            and perms[1] in "w-"
            and perms[2] in "x-"
            and perms[3] in "ps"
        ):
            raise CorruptImage(f"the mapping at {start:#x} has protection {perms!r}")
        path = _text(e.get("path", ""), f"the path of the mapping at {start:#x}")
        kind = e["kind"]
        if kind == "kernel":
            if path not in KERNEL_PLACED:
                raise CorruptImage(f"the kernel mapping at {start:#x} is {path!r}")
            continue
        if kind == "file":
            _text(path, f"the file of the mapping at {start:#x}", absolute=True)
            offset = _int(
                e.get("offset"), f"the file offset of the mapping at {start:#x}", 0, (1 << 63) - 1 - (end - start)
            )
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
        if not (
            values["start_code"] < values["end_code"]
            and values["start_data"] <= values["end_data"]
            and values["start_brk"] <= values["brk"]
            and values["arg_start"] <= values["arg_end"]
            and values["env_start"] <= values["env_end"]
        ):
            raise CorruptImage("the mm fields are out of order")
        try:
            auxv = bytes.fromhex(mm.get("auxv"))
        except (TypeError, ValueError):
            raise CorruptImage("the auxiliary vector is malformed") from None
        if len(auxv) > AUXV_MAX or len(auxv) % 16:
            raise CorruptImage("the auxiliary vector is malformed")
    return memory


CHECKS = {Kind.PROCESS: check_process, Kind.SIGNALS: check_signals, Kind.RSEQ: check_rseq, Kind.LIMITS: check_limits}


def check_pages(address: int, length: int, memory: run_set.Runs) -> None:
    """Page data goes only into the memory the image's map has (never the vDSO, the
    restorer's trampoline or past the end of the address space)."""
    start, end = user_range(address, length, "page data")
    at = bisect.bisect_right(memory, (start, U64)) - 1
    if at < 0 or memory[at][1] < end:
        raise CorruptImage(f"page data at {start:#x} is not in the memory map")


def record_object(record: Record) -> dict[str, Any]:
    """A record whose payload must be a JSON object."""
    value = record.json()
    if not isinstance(value, dict):
        raise CorruptImage(f"the {record.name} record is not an object")
    return value
