"""Which system calls a MOSIX process may make (mosrun(1) LIMITATIONS), and what
happens when it makes one it may not.

Two halves: :func:`seccomp_table` says which calls stop at all (everything else
runs natively), and :func:`decide` says what to do with a call that stopped. The
answer to an unsupported feature depends on the process's ``unsupportok`` mode
(mosrun ``-e``/``-w``/``-u``): 0 kills the program with the manual's message, 1
fails the call with ENOSYS silently, 2 does the same and prints the message.

Modern glibc calls a few listed system calls in every program, before ``main``,
for its own housekeeping; refusing them would refuse every program, which is not
what the manual's list is for (it names features a migrated process cannot have).
So, in every mode:

* ``set_robust_list`` (and ``rseq``, which the manual predates) register the
  calling thread's own areas: allowed; the process-image engine re-registers them.
* ``prlimit64`` on the calling process is how glibc implements ``getrlimit`` and
  ``setrlimit``: treated as those (so RLIMIT_NOFILE gets the manual's WARNING);
  on another process it is unsupported.
* ``clock_nanosleep`` with a relative CLOCK_REALTIME/CLOCK_MONOTONIC sleep is how
  glibc implements ``nanosleep`` and ``sleep``: allowed.
* ``futex`` on a *private* futex (``FUTEX_PRIVATE_FLAG``): glibc's one-time
  initialisations wake such futexes even in single-threaded programs, and abort
  when the wake fails. A private futex lives in the process's own memory, which
  no other process shares under MOSIX, so it migrates with it: allowed. Shared
  futexes (the feature the manual refuses: waiting on memory shared with other
  processes) remain unsupported.
* ``clone3`` (newer than the manual) fails with ENOSYS, silently: glibc then falls
  back to ``clone``, whose flags are checked as the manual says.
* ``clone(CLONE_VM|CLONE_VFORK)`` is allowed with a child stack (glibc's
  ``posix_spawn``): the parent is suspended until the child execs or exits, as
  with ``vfork``.

Beyond that, by default (issue 18: today's glibc, coreutils and interpreters make
these calls routinely, for reasons that have nothing to do with shared memory or
threads), the calls that keep their meaning wherever the process runs are answered
with the meaning a program sees on one machine — see :data:`ANSWERED` and
``docs/system-calls.md`` (generated from this module's lists by
:mod:`mosix_core.mosrun.call_table`: ``python -m mosix_core.mosrun.rules --table``).
The one choice worth stating here: ``sched_getaffinity`` answers a mask of ONE
CPU. A MOSIX process cannot have threads, so a program that sizes a thread pool
from the mask (GNU sort, OpenBLAS...) runs single-threaded instead of being killed
at its first ``clone``; ``nproc`` says 1. Read-only ``MAP_SHARED`` of a regular file is mapped ``MAP_PRIVATE`` (the
same pages, as long as nobody writes the file); adding ``PROT_WRITE`` to such a
mapping later (``mprotect``) is the unsupported case instead, with the manual's
message. A strict process gets the manual's list exactly (only the housekeeping
above excepted): every process of a site whose ``mosd.conf`` says
``strict_limitations = yes``, unless the site's mosrun policy (``mosrun.conf``, a
``mosix_check_mosrun`` hook) decides otherwise for the invocation; children inherit it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import stat
from collections.abc import Callable

import attrs

from mosix_core.linux import seccomp
from mosix_core.linux.libc import LIBC
from mosix_core.linux.syscall_names import NAMES, NUMBERS
from mosix_core.remote.calls import FOREIGN_ABI_CALL

# The tables keep the manual's layout (names by the line, not one per line):
# fmt: off
# The LIMITATIONS list of mosrun(1), as the manual spells it. Names this kernel
# does not have on x86_64 (afs_syscall, tuxcall, security... exist as numbers;
# prof_counter_open, bdflush, timerfd, ... do not) are simply absent from the filter.
UNSUPPORTED = frozenset("""
acct add_key adjtimex afs_syscall bdflush capget capset chroot clock_getres clock_nanosleep
clock_settime create_module delete_module epoll_create epoll_create1 epoll_ctl epoll_pwait epoll_wait
eventfd eventfd2 fanotify_init fanotify_mark futex get_kernel_syms get_mempolicy get_robust_list
getcpu getpmsg init_module inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel
io_destroy io_getevents io_setup io_submit ioperm iopl ioprio_get ioprio_set kexec_load keyctl
lookup_dcookie madvise mbind migrate_pages mlock mlockall move_pages mq_getsetattr mq_notify
mq_open mq_timedreceive mq_timedsend mq_unlink munlock munlockall nfsservctl perf_event_open
personality pivot_root prlimit64 prof_counter_open ptrace quotactl reboot recvmmsg remap_file_pages
request_key rt_sigqueueinfo rt_sigtimedwait rt_tgsigqueueinfo sched_get_priority_max sched_get_priority_min
sched_getaffinity sched_getparam sched_getscheduler sched_rr_get_interval sched_setaffinity
sched_setparam sched_setscheduler security set_mempolicy setdomainname sethostname set_robust_list
settimeofday shmat signalfd signalfd4 swapoff swapon syslog timer_create timer_delete timer_getoverrun
timer_gettime timer_settime timerfd timerfd_gettime timerfd_settime tuxcall unshare uselib
vmsplice waitid
""".split())

# Newer relatives of listed calls: the same feature under another number.
UNSUPPORTED_TOO = frozenset({
    "epoll_pwait2", "futex_waitv", "futex_wake", "futex_wait", "futex_requeue", "kexec_file_load",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "io_pgetevents", "pidfd_getfd",
    "process_vm_readv", "process_vm_writev", "process_madvise", "memfd_secret", "set_mempolicy_home_node",
    "semtimedop", "mseal", "map_shadow_stack", "userfaultfd", "pkey_mprotect", "pkey_alloc", "pkey_free",
})

HOUSEKEEPING = frozenset({"set_robust_list"})   # see the module docstring

#: Calls of the manual's list answered by default with their one-machine meaning (on
#: the calling process itself only; a strict process has them refused as the
#: manual does). Their semantics: :data:`mosix_core.mosrun.call_table.CALL_NOTES`.
ANSWERED = frozenset({
    "clock_nanosleep", "madvise", "sched_getaffinity", "sched_getparam", "sched_getscheduler",
    "sched_get_priority_max", "sched_get_priority_min",
    # Python's selectors module makes and closes an epoll instance when imported (to
    # choose its DefaultSelector): every program importing subprocess does
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
})
#: of which these are answered as they are (they need no more than the mode)
_PLAINLY = ("sched_get_priority_max", "sched_get_priority_min", "epoll_create", "epoll_create1", "epoll_ctl",
            "epoll_wait", "epoll_pwait", "epoll_pwait2")

# ioctl requests mosrun(1) refuses (the manual's TIOCSESGSTRUCT/TIOCSEGETMULTI/
# TIOCSEASETMULTI are the serial-driver TIOCSERGSTRUCT/TIOCSERGETMULTI/TIOCSERSETMULTI).
UNSUPPORTED_IOCTLS = {
    0x5458: "TIOCSERGSTRUCT", 0x545A: "TIOCSERGETMULTI", 0x545B: "TIOCSERSETMULTI",
    0x8914: "SIOCSIFFLAGS", 0x891E: "SIOCSIFMETRIC", 0x8922: "SIOCSIFMTU", 0x8971: "SIOCSIFMAP",
    0x8924: "SIOCSIFHWADDR", 0x8930: "SIOCSIFSLAVE", 0x8931: "SIOCADDMULTI", 0x8932: "SIOCDELMULTI",
    0x8937: "SIOCSIFHWBROADCAST", 0x8943: "SIOCSIFTXQLEN", 0x8949: "SIOCSMIIREG",
    0x8990: "SIOCBONDENSLAVE", 0x8991: "SIOCBONDRELEASE", 0x8992: "SIOCBONDSETHWADDR",
    0x8993: "SIOCBONDSLAVEINFOQUERY", 0x8994: "SIOCBONDINFOQUERY", 0x8995: "SIOCBONDCHANGEACTIVE",
    0x89A2: "SIOCBRADDIF", 0x89A3: "SIOCBRDELIF",
}

PR_SET_PDEATHSIG, PR_GET_PDEATHSIG = 1, 2
#: prctl options that only read or set something of the calling process that means
#: the same on any node (made at home when the process is away): its name, its parent's
#: death signal, and flags it can only read. Setting dumpability, seccomp, no_new_privs,
#: capabilities... stays refused (it would change what the supervisor may do to it).
PR_GET_DUMPABLE, PR_GET_KEEPCAPS, PR_SET_NAME, PR_GET_NAME, PR_CAPBSET_READ = 3, 7, 15, 16, 23
PR_GET_SECUREBITS, PR_GET_TIMERSLACK, PR_GET_CHILD_SUBREAPER, PR_GET_NO_NEW_PRIVS = 27, 30, 37, 39
PR_GET_THP_DISABLE = 42
SELF_PRCTLS = (PR_SET_PDEATHSIG, PR_GET_PDEATHSIG, PR_GET_DUMPABLE, PR_GET_KEEPCAPS, PR_SET_NAME, PR_GET_NAME,
               PR_CAPBSET_READ, PR_GET_SECUREBITS, PR_GET_TIMERSLACK, PR_GET_CHILD_SUBREAPER, PR_GET_NO_NEW_PRIVS,
               PR_GET_THP_DISABLE)
#: madvise advice that cannot change what the memory holds (DONTNEED, FREE, REMOVE,
#: WIPEONFORK... can: a file page copied to a node reads back as zeros there, not as
#: the file; DONTFORK/DOFORK are not carried by a process image): NORMAL, RANDOM,
#: SEQUENTIAL, WILLNEED, MERGEABLE, UNMERGEABLE, HUGEPAGE, NOHUGEPAGE, DONTDUMP, DODUMP,
#: COLD, PAGEOUT, POPULATE_READ, POPULATE_WRITE, COLLAPSE
MADVISE_HINTS = (0, 1, 2, 3, 12, 13, 14, 15, 16, 17, 20, 21, 22, 23, 25)
TIMER_ABSTIME = 1
SHARED_MEMORY = "Shared memory (MAP_SHARED) not supported under MOSIX"
RLIMIT_NOFILE = 7
MAP_SHARED, MAP_PRIVATE, MAP_SHARED_VALIDATE, MAP_ANONYMOUS = 0x01, 0x02, 0x03, 0x20
PROT_WRITE = 0x2
SYS_SCHED_GETAFFINITY = NUMBERS["sched_getaffinity"]
#: more than any kernel's cpumask (8192 CPUs): a longer buffer is answered for this much
AFFINITY_ROOM = 1 << 16
MAP_TYPE = 0x0F
CLONE_VM, CLONE_VFORK = 0x100, 0x4000
CLONE_PARENT_SETTID, CLONE_CHILD_CLEARTID, CLONE_CHILD_SETTID = 0x00100000, 0x00200000, 0x01000000
CLONE_ALLOWED = CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID | CLONE_CHILD_SETTID
CSIGNAL = 0xFF
FUTEX_PRIVATE_FLAG = 128
O_CREAT, O_LARGEFILE, O_CLOEXEC = 0x40, 0x8000, 0x80000
# open flags under which "/proc/self/{special}" is special (mosix(7)): read 0,
# write 1|O_CREAT, read+write 2|O_CREAT, in_cluster O_CREAT; plain 1 and 2 too, as
# a program built without O_CREAT passes them. The O_CREAT forms also with O_CLOEXEC,
# which Python's os.open always adds (they return a value, never a descriptor, so it
# changes nothing); the plain read form only exactly, since an ordinary read of the
# file (Python's open(), which adds O_CLOEXEC) is the kernel's.
SPECIAL_OPEN_FLAGS = (0, 1, 2, O_CREAT, 1 | O_CREAT, 2 | O_CREAT,
                      O_CREAT | O_CLOEXEC, 1 | O_CREAT | O_CLOEXEC, 2 | O_CREAT | O_CLOEXEC)
# fmt: on


MODE_KILL, MODE_SILENT, MODE_WARN = 0, 1, 2
PREFIX = "MOSRUN: "


# -- verdicts --------------------------------------------------------------------------------------
@attrs.frozen
class Allow:
    """Let the call run as it is."""


@attrs.frozen
class Fail:
    errno: int


@attrs.frozen
class Return:
    value: int


@attrs.frozen
class Rewrite:
    """Change one argument, then let the call run."""

    arg: int
    value: int


@attrs.frozen
class Warn:
    """Print ``message`` (always), then do ``then``."""

    message: str
    then: object


@attrs.frozen
class Unsupported:
    """An unsupported feature: kill with ``message`` (mode 0), or ``fallback``
    silently (1) or with the message (2)."""

    message: str
    fallback: object = Fail(errno.ENOSYS)


@attrs.frozen
class Answer:
    """The call does not run: ``writes`` (argument index, bytes) are written where
    those arguments point, and it returns ``value``."""

    value: int
    writes: tuple[tuple[int, bytes], ...] = ()


@attrs.frozen
class MapPrivately:
    """A read-only MAP_SHARED of a regular file: map it MAP_PRIVATE (``flags``), and
    remember the range, where adding PROT_WRITE is then the unsupported case."""

    flags: int


@attrs.frozen
class SpecialOpen:
    """An open of a path that may be one of the ``/proc/self`` interface files."""

    path_addr: int
    flags: int
    value: int


ALLOW = Allow()


def unsupported_call(name: str) -> Unsupported:
    return Unsupported(f"system-call '{name}' not supported under MOSIX")


def foreign_call(nr: int) -> Unsupported:
    """A MOSIX process's call through the i386 ABI. It would run on the machine the
    process is on, past every rule of this module (a guest's would act on its host), so
    it is refused as any unsupported call is: the manual's message, then the process is
    killed, or the call fails with ENOSYS under ``-e``/``-w``."""
    return unsupported_call(f"32-bit #{nr & 0xFFFF}")


# -- the filter ------------------------------------------------------------------------------------
def _traced_names() -> set[str]:
    return (set(UNSUPPORTED) | set(UNSUPPORTED_TOO)) - HOUSEKEEPING


def seccomp_table() -> dict[int, seccomp.Check]:
    """Which calls stop, and under which arguments (the rest run natively). One
    filter for both modes (a strict site's and the default): what either must judge
    stops, and :func:`decide` answers by the mode."""
    s = seccomp
    table: dict[int, seccomp.Check] = {}
    for name in _traced_names():
        if name in NUMBERS:
            table[NUMBERS[name]] = s.always()
    # only opens that could be /proc/self specials, by their flags
    open_check = lambda i: s.custom(  # noqa: E731
        [
            s.ld_arg_low(i),
            s.and_(~O_LARGEFILE & 0xFFFFFFFF),
            *[s.jeq(f, len(SPECIAL_OPEN_FLAGS) - k, 0) for k, f in enumerate(SPECIAL_OPEN_FLAGS)],
            s.ret(s.RET_ALLOW),
            s.ret(s.RET_TRACE),
        ]
    )
    table[NUMBERS["open"]] = open_check(1)
    table[NUMBERS["openat"]] = open_check(2)
    # mmap: shared mappings, and file mappings (a character device must be refused)
    table[NUMBERS["mmap"]] = s.custom(
        [s.ld_arg_low(3), s.jset(MAP_SHARED, 2, 0), s.jset(MAP_ANONYMOUS, 0, 1), s.ret(s.RET_ALLOW), s.ret(s.RET_TRACE)]
    )
    table[NUMBERS["futex"]] = s.custom(
        [s.ld_arg_low(1), s.jset(FUTEX_PRIVATE_FLAG, 0, 1), s.ret(s.RET_ALLOW), s.ret(s.RET_TRACE)]
    )
    table[NUMBERS["clone"]] = s.always()
    table[NUMBERS["clone3"]] = s.fail_with(errno.ENOSYS)
    table[NUMBERS["prctl"]] = s.unless_arg_in(0, (PR_SET_PDEATHSIG, PR_GET_PDEATHSIG))
    table[NUMBERS["ioctl"]] = s.when_arg_in(1, UNSUPPORTED_IOCTLS)
    table[NUMBERS["setrlimit"]] = s.when_arg_in(0, (RLIMIT_NOFILE,))
    # prlimit64(pid, resource, new, old): traced unless pid == 0 and it is not a
    # change of RLIMIT_NOFILE
    table[NUMBERS["prlimit64"]] = s.custom(
        [
            s.ld_arg_low(0),
            s.jeq(0, 1, 0),
            s.ret(s.RET_TRACE),
            s.ld_arg_high(0),
            s.jeq(0, 1, 0),
            s.ret(s.RET_TRACE),
            s.ld_arg_low(1),
            s.jeq(RLIMIT_NOFILE, 1, 0),
            s.ret(s.RET_ALLOW),
            s.ld_arg_low(2),
            s.jeq(0, 1, 0),
            s.ret(s.RET_TRACE),
            s.ld_arg_high(2),
            s.jeq(0, 0, 1),
            s.ret(s.RET_ALLOW),
            s.ret(s.RET_TRACE),
        ]
    )
    # clock_nanosleep(clock, flags, ...): relative REALTIME/MONOTONIC sleeps run
    table[NUMBERS["clock_nanosleep"]] = s.custom(
        [
            s.ld_arg_low(1),
            s.jeq(0, 1, 0),
            s.ret(s.RET_TRACE),
            s.ld_arg_low(0),
            s.jeq(0, 2, 0),
            s.jeq(1, 1, 0),
            s.ret(s.RET_TRACE),
            s.ret(s.RET_ALLOW),
        ]
    )
    # getpriority/setpriority(which, who): only "who == 0" (self) runs untraced
    for name in ("getpriority", "setpriority"):
        table[NUMBERS[name]] = s.unless_arg_in(1, (0,))
    table[NUMBERS["sysfs"]] = s.unless_arg_in(0, (1, 2, 3))
    # mprotect adding PROT_WRITE: it may be to a read-only MAP_SHARED mapped privately
    table[NUMBERS["mprotect"]] = s.custom(
        [s.ld_arg_low(2), s.jset(PROT_WRITE, 0, 1), s.ret(s.RET_TRACE), s.ret(s.RET_ALLOW)]
    )
    return table


#: Calls that name the caller's own pid: traced in restored processes, whose pid the
#: supervisor virtualises (a restored process keeps the pid it was checkpointed with).
VIRTUAL_PID_CALLS = ("getpid", "gettid", "getppid", "kill", "tkill", "tgkill")


def build_filter(virtual_pids: bool = False) -> list:
    table = seccomp_table()
    if virtual_pids:
        for name in VIRTUAL_PID_CALLS:
            table.setdefault(NUMBERS[name], seccomp.always())
    return seccomp.build(table, max(NAMES))


# -- deciding a stopped call -----------------------------------------------------------------------
@attrs.frozen
class CallContext:
    """What :func:`decide` may ask about the process beyond the call's arguments."""

    pid: int
    fd_mode: Callable[[int], int | None]  # st_mode of the tracee's descriptor, None if closed
    strict: bool = False  # the process's strict_limitations: the manual's list exactly
    # whether (start, length) overlaps a read-only MAP_SHARED this process has mapped privately
    converted: Callable[[int, int], bool] = lambda start, length: False


def decide(nr: int, args: tuple[int, ...], ctx: CallContext) -> object:
    name = NAMES.get(nr)
    if FOREIGN_ABI_CALL <= nr < FOREIGN_ABI_CALL + 0x8000:
        return foreign_call(nr - FOREIGN_ABI_CALL)
    if name is None:
        return Unsupported(f"illegal system call #{nr}")
    handler = _HANDLERS.get(name)
    if handler is not None:
        return handler(args, ctx)
    if name in UNSUPPORTED or name in UNSUPPORTED_TOO:
        return unsupported_call(name)
    return ALLOW


_HOME_FILTER: list | None = None
_HOME_CHECKED: frozenset[int] = frozenset()


def home_verdict(nr: int, args: tuple[int, ...], ctx: CallContext) -> object | None:
    """What mosrun decides of a call at home; None when the call does not even stop
    there. A migrated process's calls are judged by it as if it never left."""
    global _HOME_FILTER, _HOME_CHECKED
    if _HOME_FILTER is None:
        _HOME_FILTER, _HOME_CHECKED = build_filter(), frozenset(seccomp_table())
    if nr in NAMES and nr not in _HOME_CHECKED:
        return None  # the common case: the filter lets it run untouched
    if seccomp.evaluate(_HOME_FILTER, nr, args) != seccomp.RET_TRACE:
        return None
    return decide(nr, args, ctx)


def refuses(verdict: object | None) -> bool:
    """A verdict that stops the call from running as it is (unsupported...)."""
    return isinstance(verdict, (Unsupported, Warn, Fail, Return, Answer))


def settle(verdict: object, mode: int) -> tuple[object, list[str], bool]:
    """Unwrap :class:`Warn` and :class:`Unsupported` under unsupported-feature ``mode``:
    (the verdict left to carry out, the messages to print first, whether the process
    must instead be killed)."""
    said: list[str] = []
    while True:
        if isinstance(verdict, Warn):
            said.append(verdict.message)
            verdict = verdict.then
        elif isinstance(verdict, Unsupported):
            if mode != MODE_SILENT:
                said.append(verdict.message)
            if mode == MODE_KILL:
                return verdict, said, True
            verdict = verdict.fallback
        else:
            return verdict, said, False


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _open(path_arg: int, flags_arg: int):
    def handle(args, ctx):
        return SpecialOpen(args[path_arg], args[flags_arg] & 0xFFFFFFFF, args[flags_arg + 1])

    return handle


def _mmap(args, ctx):
    prot, flags, fd = args[2], args[3] & 0xFFFFFFFF, _signed(args[4])
    if not flags & MAP_ANONYMOUS and fd >= 0:
        mode = ctx.fd_mode(fd)
        if mode is not None and stat.S_ISCHR(mode):
            return Unsupported("Mapping special character files not supported under MOSIX")
    if flags & MAP_TYPE in (MAP_SHARED, MAP_SHARED_VALIDATE):
        private = (flags & ~MAP_TYPE) | MAP_PRIVATE
        if prot & PROT_WRITE:
            return Unsupported(SHARED_MEMORY)
        if not ctx.strict and not flags & MAP_ANONYMOUS and fd >= 0:
            mode = ctx.fd_mode(fd)
            if mode is not None and stat.S_ISREG(mode):
                # the same pages as long as nobody writes the file (the manual's "unnecessarily used")
                return MapPrivately(private)
        return Unsupported(SHARED_MEMORY, fallback=Rewrite(3, private))
    return ALLOW


def _mprotect(args, ctx):
    if not ctx.strict and args[2] & PROT_WRITE and ctx.converted(args[0], args[1]):
        # writes would no longer reach the file: the shared mapping the program asked for
        return Unsupported(SHARED_MEMORY)
    return ALLOW


def _clone(args, ctx):
    flags, stack = args[0], args[1]
    vfork = flags & (CLONE_VM | CLONE_VFORK) == CLONE_VM | CLONE_VFORK
    extra = flags & ~CSIGNAL & ~CLONE_ALLOWED & ~(CLONE_VM | CLONE_VFORK if vfork else 0)
    if extra or flags & CSIGNAL != signal.SIGCHLD or (stack and not vfork):
        return unsupported_call("clone")
    return ALLOW


def _prctl(args, ctx):
    if not ctx.strict and args[0] & 0xFFFFFFFF in SELF_PRCTLS and args[0] >> 32 == 0:
        return ALLOW
    return Unsupported(f"Prctl option #{_signed(args[0])} not supported under MOSIX")


def _ioctl(args, ctx):
    return Unsupported(f"Ioctl 0x{args[1] & 0xFFFFFFFF:x} not supported under MOSIX")


NOFILE_WARNING = "WARNING: setrlimit(RLIMIT_NOFILE) ignored by MOSIX"


def _setrlimit(args, ctx):
    # the limit stays at 1024: the call "succeeds" without changing anything
    return Warn(NOFILE_WARNING, Return(0))


def _prlimit64(args, ctx):
    pid, resource, new = args[0], args[1] & 0xFFFFFFFF, args[2]
    if pid not in (0, ctx.pid):
        return unsupported_call("prlimit64")
    if resource == RLIMIT_NOFILE and new:
        # still report the old limit if asked: drop only the new one
        return Warn(NOFILE_WARNING, Rewrite(2, 0))
    return ALLOW


def _priority(args, ctx):
    which, who = args[0] & 0xFFFFFFFF, args[1] & 0xFFFFFFFF
    if which == 0 and who in (0, ctx.pid):
        return ALLOW
    return Unsupported("getpriority/setpriority supported under MOSIX only for self")


def _sysfs(args, ctx):
    return Unsupported(f"Sysfs option '{_signed(args[0])}' not supported under MOSIX")


def _shmat(args, ctx):
    return Unsupported("Attaching SYSV shared-memory not supported under MOSIX")


def _clock_nanosleep(args, ctx):
    # any clock, relative or absolute: away, the monotonic clocks are home's (a time
    # namespace) and an absolute wall-clock time is moved to the node's clock by the guest
    if (args[1] == 0 and args[0] in (0, 1)) or not ctx.strict:
        return ALLOW
    return unsupported_call("clock_nanosleep")


def _self(args) -> bool:
    return args[0] & 0xFFFFFFFF == 0


def _on_self(name: str):
    """A call answered on the calling process (pid 0, or its own pid) only."""

    def handle(args, ctx):
        if ctx.strict or not (_self(args) or _signed(args[0]) == ctx.pid):
            return unsupported_call(name)
        return ALLOW

    return handle


def _answered(name: str):
    def handle(args, ctx):
        return unsupported_call(name) if ctx.strict else ALLOW

    return handle


def _madvise(args, ctx):
    if not ctx.strict and args[2] & 0xFFFFFFFF in MADVISE_HINTS and args[2] >> 32 == 0:
        return ALLOW
    return unsupported_call("madvise")


def _sched_getaffinity(args, ctx):
    """A mask of one CPU (see the module docstring): the first CPU of the process's
    real mask, with the length checks and the length returned as the kernel's call
    does them (it is asked with the same length)."""
    pid, length = _signed(args[0]), args[1] & 0xFFFFFFFF
    if ctx.strict or not (_self(args) or pid == ctx.pid):
        return unsupported_call("sched_getaffinity")
    room = min(length, AFFINITY_ROOM)
    buffer = ctypes.create_string_buffer(room)
    got = LIBC.syscall(SYS_SCHED_GETAFFINITY, ctx.pid, ctypes.c_ulong(room), buffer)
    if got < 0:
        return Fail(ctypes.get_errno())
    real = int.from_bytes(buffer.raw[:got], "little")
    one = real & -real
    return Answer(got, ((2, one.to_bytes(got, "little")),))


_HANDLERS: dict[str, Callable] = {
    "open": _open(0, 1),
    "openat": _open(1, 2),
    "mmap": _mmap,
    "clone": _clone,
    "prctl": _prctl,
    "ioctl": _ioctl,
    "setrlimit": _setrlimit,
    "prlimit64": _prlimit64,
    "getpriority": _priority,
    "setpriority": _priority,
    "sysfs": _sysfs,
    "shmat": _shmat,
    "clock_nanosleep": _clock_nanosleep,
    "mprotect": _mprotect,
    "madvise": _madvise,
    "sched_getaffinity": _sched_getaffinity,
    "sched_getparam": _on_self("sched_getparam"),
    "sched_getscheduler": _on_self("sched_getscheduler"),
    **{name: _answered(name) for name in _PLAINLY},
}


def fd_mode_of(pid: int) -> Callable[[int], int | None]:
    def mode(fd: int) -> int | None:
        try:
            return os.stat(f"/proc/{pid}/fd/{fd}").st_mode
        except OSError:
            return None

    return mode


if __name__ == "__main__":
    import sys

    from mosix_core.mosrun.call_table import table_markdown

    if sys.argv[1:] != ["--table"]:
        sys.exit("usage: python -m mosix_core.mosrun.rules --table")
    sys.stdout.write(table_markdown())
