"""The table of system calls under mosrun (``docs/system-calls.md``): for every
x86-64 call, what it means under mosrun, where it is made when the process is away
from home, and why — read from the rules themselves (:mod:`mosix_core.mosrun.rules`
for the lists, :mod:`mosix_core.remote.guest` and :mod:`mosix_core.remote.calls` for
where a call is made away), with the notes of :data:`CALL_NOTES` for the calls that
have a rule of their own. ``python -m mosix_core.mosrun.rules --table`` prints it.
"""

from __future__ import annotations

from mosix_core.linux.syscall_names import NAMES, NUMBERS
from mosix_core.mosrun.rules import ANSWERED, UNSUPPORTED, UNSUPPORTED_TOO
from mosix_core.remote import calls, guest

#: what each call with a rule of its own means under mosrun, and why
CALL_NOTES: dict[str, tuple[str, str]] = {
    "sched_getaffinity": (
        "supported, with a difference",
        "on itself: a mask of ONE CPU (the first of its real mask). A MOSIX process has no "
        "threads, so programs sizing a thread pool from it (GNU sort, OpenBLAS) run "
        "single-threaded; `nproc` says 1",
    ),
    "sched_getparam": ("supported", "on itself (pid 0 or its own pid): as the process at home has it"),
    "sched_getscheduler": ("supported", "on itself (pid 0 or its own pid): as the process at home has it"),
    "sched_get_priority_max": ("supported", "a constant of the kernel"),
    "sched_get_priority_min": ("supported", "a constant of the kernel"),
    "clock_nanosleep": (
        "supported",
        "relative and absolute, every clock; away on home's clocks (the monotonic "
        "ones by a time namespace, an absolute wall-clock time moved to the node's clock)",
    ),
    "madvise": (
        "supported, with a difference",
        "hints that cannot change content (NORMAL, RANDOM, SEQUENTIAL, WILLNEED, HUGEPAGE, NOHUGEPAGE, "
        "DONTDUMP, COLD, PAGEOUT, POPULATE_*...); DONTNEED, FREE, REMOVE, WIPEONFORK, DONTFORK stay "
        "refused: away a file's pages are a copy, which they would empty",
    ),
    "mmap": (
        "depends on its arguments",
        "MAP_SHARED without PROT_WRITE of a regular file: mapped MAP_PRIVATE (the same pages while nobody "
        "writes the file); writable or anonymous MAP_SHARED and character devices refused (the manual's "
        "messages); away a file mapping is a copy of home's file",
    ),
    "mprotect": (
        "depends on its arguments",
        "adding PROT_WRITE to a read-only MAP_SHARED mapped privately is refused with the manual's "
        "MAP_SHARED message (writes would no longer reach the file); the mark stays on the range until "
        "exec, even if it is unmapped or moved (mremap)",
    ),
    "prctl": (
        "depends on its arguments",
        "on itself: PR_SET/GET_NAME, PR_SET/GET_PDEATHSIG and the PR_GET_* of flags (made on the process at "
        'home when away); every other option refused ("Prctl option #N not supported")',
    ),
    "epoll_create": (
        "supported",
        "Python's selectors module makes one on import; away the instance is at home "
        "and its waits are made there, like poll's",
    ),
    "prlimit64": (
        "depends on its arguments",
        "on itself (pid 0 or its own pid); RLIMIT_NOFILE changes are ignored "
        "with the manual's WARNING; on another process refused",
    ),
    "setrlimit": ("depends on its arguments", "RLIMIT_NOFILE ignored with the manual's WARNING"),
    "getpriority": ("depends on its arguments", "only for self"),
    "setpriority": ("depends on its arguments", "only for self"),
    "futex": ("depends on its arguments", "private futexes (its own memory); shared ones refused"),
    "clone": ("depends on its arguments", "fork-like and vfork-like clones; threads refused (no shared memory)"),
    "clone3": ("refused quietly", "fails with ENOSYS, so glibc falls back to clone"),
    "ioctl": ("depends on its arguments", "the manual's network and serial requests refused"),
    "sysfs": ("depends on its arguments", "options 1-3 only"),
    "shmat": ("refused", "SysV shared memory (the manual's message)"),
    "open": ("supported", "/proc/self/{migrate, whereami, ...}: the manual's interface files"),
    "openat": ("supported", "/proc/self/{migrate, whereami, ...}: the manual's interface files"),
    "set_robust_list": ("supported", "glibc's housekeeping for the calling thread; re-registered after moves"),
}
for _name in ("epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2"):
    CALL_NOTES[_name] = CALL_NOTES["epoll_create"]


def call_table() -> list[tuple[str, str, str, str]]:
    """(call, under mosrun, away from home, why) for every x86-64 call."""
    rows = []
    for nr, name in sorted(NAMES.items(), key=lambda item: item[1]):
        listed = name in UNSUPPORTED or name in UNSUPPORTED_TOO
        status, why = CALL_NOTES.get(name, ("refused", "the manual's LIMITATIONS") if listed else ("supported", ""))
        if name in ANSWERED:
            why += " (refused for a strict process)"
        if status == "refused":
            away = "judged at home (refused)"
        elif nr in guest.HOMEWARD:
            away = "the process goes home for it"
        elif nr in calls.RUN_WHERE_IT_IS:
            away = "home's rules first, then where it runs"
        elif name in guest.LOCAL:
            away = "where it runs"
        elif nr == NUMBERS["mmap"]:
            away = "anonymous: where it runs; a file: a copy of home's file"
        elif name in ("exit", "exit_group"):
            away = "at home"
        elif nr in calls.SPECS or nr in calls.BY_COMMAND or nr == calls.SYS_PRCTL or nr == NUMBERS["futex"]:
            away = "where it runs" if nr == NUMBERS["futex"] else "made at home"
        else:
            away = "fails with ENOSYS (not forwarded yet)"
        rows.append((name, status, away, why))
    return rows


def table_markdown() -> str:
    lines = [
        "# System calls under mosrun",
        "",
        "Generated from `mosix_core/mosrun/rules.py` and `call_table.py` "
        "(`python -m mosix_core.mosrun.rules --table`); "
        "tests/unit/test_call_table.py checks it is up to date.",
        "",
        "*Refused* calls are the manual's LIMITATIONS: the program is killed with the manual's message, "
        "or the call fails with ENOSYS under `-e` (silently) or `-w` (with the message). By default the "
        "calls of that list that keep their meaning wherever the process runs are answered as on one machine "
        "(issue 18). A *strict* process has them refused as the manual does: every process of a site whose "
        "`mosd.conf` says `strict_limitations = yes`, unless the site's mosrun policy (`strict_limitations` in "
        "`mosrun.conf`, or a `mosix_check_mosrun` hook setting `request.strict_limitations`) decides otherwise "
        "for that invocation. A strict process's children, and the programs they start with mosrun, stay strict.",
        "",
        "Programs that start threads are refused at their first thread (`clone`), as the manual says: "
        "`xz -T0` (use `-T1`), `zstd` by default (use `--single-thread --no-asyncio`; `-T1` alone still starts a "
        "worker), `pigz`, `sort --parallel` beyond the one CPU of the affinity mask, OpenMP programs "
        "(set `OMP_NUM_THREADS=1`), Java, Go programs.",
        "",
        "| call | under mosrun | away from home | why |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {status} | {away} | {why} |" for name, status, away, why in call_table()]
    return "\n".join(lines) + "\n"
