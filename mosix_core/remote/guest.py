"""The guest: a MOSIX process running away from home, and the loop that traces it.

The process is restored (``RestoreOptions(away=True)``) with no files, cwd or umask
of its own — they are at home — under :func:`guest_filter`: the calls that only
touch the process itself (memory, signal masks and handlers, futexes, sleeping,
the clock) run here natively; every other call stops, and :class:`Guest` sends it
home as a :class:`~mosix_core.remote.calls.Request` through ``forward`` (whatever
carries it: a socket to the home node, or the deputy itself in a test), writes the
reply's buffers into the process, and makes the call return the home result. A
call the table does not describe fails with ENOSYS. ``exit``/``exit_group`` go home
too — the process ends there, with its status — and the guest is then removed.

Signals for the process reach it here: the home side forwards what reaches the
home process (:meth:`Guest.signal`).

The guest's memory, and the calls whose data is in buffers scattered through it
(readv/writev, sendmsg/recvmsg), are :mod:`mosix_core.remote.guest_buffers`; the wall
clock of home a guest may have to read is :mod:`mosix_core.remote.guest_clock`.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable

from mosix_core.errors import TraceError
from mosix_core.linux import inject, memory, procfs, ptrace, seccomp
from mosix_core.linux.syscall_names import NAMES, NUMBERS
from mosix_core.remote import guest_buffers
from mosix_core.remote.calls import (
    FOREIGN_ABI_CALL,
    MAPPED_PRIVATELY,
    MAX_TRANSFER,
    RUN_WHERE_IT_IS,
    CannotForward,
    Reply,
    Request,
    marshal,
    spec_of,
    unmarshal,
)
from mosix_core.remote.guest_buffers import SYS_RECVMSG, SYS_SENDMSG, VECTORED, WRITES, GuestMemory
from mosix_core.remote.guest_clock import (
    FUTEX_CLOCK_REALTIME,
    FUTEX_CMD,
    FUTEX_LOCK_PI,
    FUTEX_PRIVATE_FLAG,
    SYS_CLOCK_GETTIME,
    SYS_GETTIMEOFDAY,
    SYS_TIME,
    WALL_CALLS,
    WALL_CLOCKS,
    HomeClock,
    futex_waits_for_wall_time,
)

#: run where the process is: they concern only the process itself (and home's rules
#: let them run: what mosrun refuses or answers itself at home — mlock,
#: sched_getaffinity... — stops here too and is judged at home; mprotect adding
#: PROT_WRITE, madvise and the sleeps other than relative ones are asked of home's
#: rules first, then made here: calls.RUN_WHERE_IT_IS). None of them may name another
#: process: prlimit64 runs here only on pid 0 (see guest_filter); tests/security
#: checks the rest.
LOCAL = frozenset(
    {
        "brk",
        "munmap",
        "mprotect",
        "mremap",
        "msync",
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "rt_sigpending",
        "rt_sigsuspend",
        "sigaltstack",
        "arch_prctl",
        "set_tid_address",
        "set_robust_list",
        "rseq",
        "sched_yield",
        "nanosleep",
        "clock_nanosleep",
        "clock_gettime",
        "gettimeofday",
        "time",
        "getrandom",
        "pause",
        "getrusage",
        "times",
        "prlimit64",
        "getrlimit",
        "setrlimit",
        "alarm",
        "setitimer",
        "getitimer",
        "restart_syscall",
    }
)
SYS_FUTEX = NUMBERS["futex"]
JOB_STOPS = (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
#: local when they only wait (no descriptors: ``nfds``, at this argument, is 0)
WAITING = {"select": 0, "pselect6": 0, "poll": 1, "ppoll": 1}
EXITS = (NUMBERS["exit"], NUMBERS["exit_group"])
# one forwarded call carries at most MAX_TRANSFER bytes: a larger read returns less (as
# reads may), a larger write is sent in pieces and returns the total (as if whole)
READS = {NUMBERS[name]: 2 for name in ("read", "pread64", "getdents64", "getdents", "recvfrom")}
SYS_MMAP, SYS_MUNMAP, SYS_PREAD = NUMBERS["mmap"], NUMBERS["munmap"], NUMBERS["pread64"]
SYS_GETPID, SYS_PRLIMIT64 = NUMBERS["getpid"], NUMBERS["prlimit64"]
SYS_MPROTECT, SYS_MADVISE, SYS_CLOCK_NANOSLEEP = NUMBERS["mprotect"], NUMBERS["madvise"], NUMBERS["clock_nanosleep"]
PROT_WRITE, TIMER_ABSTIME, MAP_SHARED_TYPES = 0x2, 1, (0x01, 0x03)
MAP_TYPE, MAP_PRIVATE, MAP_ANONYMOUS = 0x0F, 0x02, 0x20
#: calls that make a new process or program: they are made at home, where the
#: process goes back for them (see :attr:`Guest.wants_home`)
HOMEWARD_NAMES = ("fork", "vfork", "clone", "clone3", "execve", "execveat")
HOMEWARD = frozenset(NUMBERS[name] for name in HOMEWARD_NAMES)
UNSIGNED = (1 << 64) - 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def guest_filter(*, wall_clock: bool = False) -> list:
    """The seccomp program a guest runs under: everything stops but the local calls.
    ``wall_clock``: reading the wall clock stops too (it is home's, see
    :meth:`Guest.read_home_wall_clock`)."""
    table = {nr: seccomp.always() for nr, name in NAMES.items() if name not in LOCAL}
    if wall_clock:
        table[SYS_CLOCK_GETTIME] = seccomp.when_arg_in(0, WALL_CLOCKS)
        table[SYS_GETTIMEOFDAY] = table[SYS_TIME] = seccomp.always()
    table[SYS_MMAP] = seccomp.when_arg_in(3, [0], mask=MAP_ANONYMOUS)  # file mappings stop
    # a private futex lives in the process's own memory (shared ones are refused at home)
    if not wall_clock:
        table[SYS_FUTEX] = seccomp.when_arg_in(1, [0], mask=FUTEX_PRIVATE_FLAG)
    else:
        # ...and a private one waited on until a wall-clock time stops too (the time is
        # home's, see Guest._until_home_time)
        table[SYS_FUTEX] = seccomp.custom(
            [
                seccomp.ld_arg_low(1),
                seccomp.jset(FUTEX_PRIVATE_FLAG, 0, 4),
                seccomp.jset(FUTEX_CLOCK_REALTIME, 3, 0),
                seccomp.and_(FUTEX_CMD),
                seccomp.jeq(FUTEX_LOCK_PI, 1, 0),
                seccomp.ret(seccomp.RET_ALLOW),
                seccomp.ret(seccomp.RET_TRACE),
            ]
        )
    for name, nfds in WAITING.items():
        table[NUMBERS[name]] = seccomp.unless_arg_in(nfds, [0])
    # the process's own limits only: on another pid (another guest's host, say) it is
    # judged at home, where mosrun refuses it (its own home pid: made here, as pid 0)
    table[SYS_PRLIMIT64] = seccomp.unless_arg_in(0, [0])
    # asked of home's rules (calls.RUN_WHERE_IT_IS): PROT_WRITE may be added to a
    # read-only MAP_SHARED mapped privately; madvise and all but the relative
    # REALTIME/MONOTONIC sleeps are refused by a strict site
    table[SYS_MPROTECT] = seccomp.custom(
        [
            seccomp.ld_arg_low(2),
            seccomp.jset(PROT_WRITE, 0, 1),
            seccomp.ret(seccomp.RET_TRACE),
            seccomp.ret(seccomp.RET_ALLOW),
        ]
    )
    table[SYS_MADVISE] = seccomp.always()
    table[SYS_CLOCK_NANOSLEEP] = seccomp.custom(
        [
            seccomp.ld_arg_low(1),
            seccomp.jeq(0, 1, 0),
            seccomp.ret(seccomp.RET_TRACE),
            seccomp.ld_arg_low(0),
            seccomp.jeq(0, 2, 0),
            seccomp.jeq(1, 1, 0),
            seccomp.ret(seccomp.RET_TRACE),
            seccomp.ret(seccomp.RET_ALLOW),
        ]
    )
    return seccomp.build(table, max(NAMES))


class Guest:
    """Traces restored guest ``pid`` until its process ends (at home)."""

    def __init__(self, pid: int, forward: Callable[[Request], Reply]) -> None:
        self.pid = pid
        self.forward = forward
        self.forwarded = 0
        self.exit_status: int | None = None
        self.stepping = False
        self.killed_by: int | None = None  # the signal that ended it here, if one did
        # a call it must make at home (fork, exec...): it is backed up to be made again
        # there, and the guest is stopped at that call's exit, ready to be sent home
        self.wants_home: str | None = None
        self.stopped_by: int | None = None  # the job-control signal it was stopped for
        self.leaving = False  # home asked for it: its next call is made there
        self.memory = GuestMemory(pid)
        self.clock = HomeClock(pid, self.memory)  # home's wall clock, once read_home_wall_clock is called
        self._home_pid: int | None = None  # the process's pid at home, once asked

    def run(self) -> int:
        """Let the process run; its exit status (as it ended at home)."""
        ptrace.cont(self.pid)
        while True:
            status = self.on_stop(ptrace.wait_for(self.pid))
            if status is not None:
                return status

    def on_stop(self, stop: ptrace.Stop) -> int | None:
        """Handle one stop of the guest; its exit status once it has ended (at home).
        With :attr:`stepping` set, the guest is resumed only to its next system-call
        stop, so a caller waiting for a clean point to capture it gets one."""
        if stop.kind in ("exited", "killed"):
            if self.exit_status is None:
                if stop.kind != "killed":
                    raise TraceError(f"guest {self.pid} ended without going home: {stop}", errno.ESRCH)
                self.killed_by = stop.sig  # a signal's default action, here
                return 128 + stop.sig
            return self.exit_status
        if stop.kind == "event" and stop.event == ptrace.EVENT_SECCOMP:
            self._trapped()
        elif stop.kind == "signal":
            self._resume(stop.sig)  # its own signals are delivered here
        elif stop.kind == "event" and stop.event == ptrace.EVENT_STOP and stop.group_stop:
            ptrace.listen(self.pid)  # stopped (SIGTSTP...) until SIGCONT
        else:
            self.put_back_deadline()
            self._resume()
        return None

    def _resume(self, sig: int = 0) -> None:
        if self.stepping:
            ptrace.syscall(self.pid, sig)
        else:
            ptrace.cont(self.pid, sig)

    def resume(self) -> None:
        """Let it go on from a stop whose call is done (its result set)."""
        self._resume()

    def memory_fd(self) -> int:
        """The descriptor of its ``/proc/PID/mem`` (read and write)."""
        return self.memory.fd()

    def signal(self, sig: int) -> None:
        """A signal that reached the process at home."""
        if sig in JOB_STOPS and self._takes_default_action(sig):
            # here its process group is an orphan (the host's, under mosd), whose
            # members the kernel does not stop for ^Z and the like: SIGSTOP does it
            self.stopped_by = sig
            sig = signal.SIGSTOP
        os.kill(self.pid, sig)

    def _takes_default_action(self, sig: int) -> bool:
        status = procfs.status_fields(self.pid)
        bit = 1 << (sig - 1)
        return not (int(status.get("SigCgt", "0"), 16) | int(status.get("SigIgn", "0"), 16)) & bit

    def utime(self) -> float | None:
        """User CPU seconds the process has used here (None once it is gone)."""
        fields = procfs.stat_fields(self.pid)
        return None if fields is None else round(int(fields[11]) / CLOCK_TICKS, 2)

    def _trapped(self) -> None:
        pid = self.pid
        info = ptrace.syscall_info(pid)
        if info.arch != seccomp.AUDIT_ARCH_X86_64:
            # an i386 call (int $0x80...) would run here, on the host, as the guest's
            # uid: it never runs; home judges it as mosrun would (the manual's
            # message, then a kill or ENOSYS)
            self._finish(self.forward(Request(FOREIGN_ABI_CALL + (info.nr & 0x7FFF), ())).result)
            return
        if info.nr in HOMEWARD:
            self._go_home_for(info.nr, NAMES[info.nr])
            return
        if self.leaving:
            self._go_home_for(info.nr, "home")  # asked home: the call is made there
            return
        if info.nr == SYS_MMAP:
            self._map_file(info.args)
            return
        if info.nr in RUN_WHERE_IT_IS:
            self._run_here_if_allowed(info.nr, info.args)
            return
        if info.nr == SYS_PRLIMIT64 and self._is_home_pid(info.args[0]):
            regs = ptrace.get_regs(pid)
            regs.rdi = 0  # its own limits: they are here
            ptrace.set_regs(pid, regs)
            self._resume()
            return
        if info.nr in WALL_CALLS and self.clock.offset is not None:
            self._finish(self.clock.read(info.nr, info.args))
            return
        if info.nr == SYS_FUTEX and info.args[1] & FUTEX_PRIVATE_FLAG:
            self._until_home_time(info.args)  # only stops so when the wall clock is home's
            return
        if info.nr in EXITS:
            status = info.args[0] & 0xFF
            self.forward(Request(NUMBERS["exit_group"], (status,)))
            self.exit_status = status
            os.kill(pid, signal.SIGKILL)  # it has ended at home
            return
        args = list(info.args)
        if info.nr in READS:
            args[READS[info.nr]] = min(args[READS[info.nr]], MAX_TRANSFER)
        if info.nr in VECTORED:
            result = guest_buffers.vectored(self.memory, self._send, info.nr, args)
        elif info.nr in (SYS_SENDMSG, SYS_RECVMSG):
            result = guest_buffers.message(self.memory, self._send, info.nr, args)
        elif info.nr in WRITES and args[2] > MAX_TRANSFER:
            result = self._write_in_pieces(info.nr, args)
        else:
            result = self._call_home(info.nr, tuple(args))
        if -result in inject.RESTART_ERRORS:
            self.interrupted(info.nr, result)
        else:
            self._finish(result)

    # -- the wall clock (see mosix_core.remote.guest_clock) ------------------------------------------
    def read_home_wall_clock(self, offset_ns: int) -> list[int]:
        """From now on the process reads home's wall clock: this node's, ``offset_ns``
        ahead (:meth:`HomeClock.follow_home`). Called on the stopped process; the
        signals that came meanwhile, to be delivered."""
        return self.clock.follow_home(offset_ns)

    def put_back_deadline(self) -> None:
        """At the end of a call whose wall-clock deadline was moved: the timespec as it was."""
        self.clock.put_back_deadline()

    def _run_here_if_allowed(self, nr: int, args: tuple[int, ...]) -> None:
        """A call home's rules judge and the process makes here (calls.RUN_WHERE_IT_IS).
        An absolute sleep on a wall clock sleeps until home's time, on this node's clock."""
        allowed = self.forward(Request(nr, tuple(args))).result
        if allowed < 0:
            self._finish(allowed)
        elif (
            nr == SYS_CLOCK_NANOSLEEP
            and self.clock.offset is not None
            and args[1] & TIMER_ABSTIME
            and args[0] & 0xFFFFFFFF in WALL_CLOCKS
        ):
            self._deadline_to_here(args[2])
        else:
            self._resume()

    def _is_home_pid(self, value: int) -> bool:
        if value in (0, UNSIGNED) or value >> 31:
            return False
        if self._home_pid is None:
            self._home_pid = self.forward(Request(SYS_GETPID, ())).result
        return value == self._home_pid

    def _deadline_to_here(self, address: int) -> None:
        """A wait until home's wall-clock time at ``address``: until the same moment on
        this node's clock (:meth:`HomeClock.deadline_to_here`)."""
        if not self.clock.deadline_to_here(address):
            self._resume()

    def _until_home_time(self, args: tuple[int, ...]) -> None:
        """A private futex wait (it runs here) whose timeout may be a wall-clock time:
        that time is home's, so while the call runs it holds the same moment on this
        node's clock."""
        if futex_waits_for_wall_time(args):
            self._deadline_to_here(args[3])
        else:
            self._resume()

    def interrupted(self, nr: int, result: int) -> None:
        """A signal interrupted the call at home (it came first, and is pending here):
        end the call with its -ERESTART* so this kernel decides, as it would have for a
        call interrupted here — run the handler and restart the call (SA_RESTART) or
        fail it with EINTR, or restart it if the signal is ignored or blocked. Nothing
        of the call runs here: getpid stands in for it."""
        pid = self.pid
        regs = ptrace.get_regs(pid)
        regs.orig_rax = SYS_GETPID
        ptrace.set_regs(pid, regs)
        injector = inject.Injector(pid, 0)
        injector.run_to(ptrace.INFO_EXIT)
        for sig in injector.deferred:
            self.signal(sig)
        regs = ptrace.get_regs(pid)
        if self._signal_due():
            regs.orig_rax = nr  # what the kernel restarts, if it does
            # the restart block (poll's remaining time...) was at home: start over instead
            regs.rax = -(inject.ERESTART_NOHAND if -result == inject.ERESTART_RESTARTBLOCK else -result) & UNSIGNED
        else:
            # nothing to deliver (home ended the call to let the process leave, or the
            # signal is blocked here): the kernel looks at no restart code, so restart it
            regs.orig_rax, regs.rax, regs.rip = inject.MINUS_ONE, nr, regs.rip - 2
        ptrace.set_regs(pid, regs)
        self._resume()

    def _signal_due(self) -> bool:
        """A signal is pending and not blocked: the kernel will deliver one on return."""
        status = procfs.status_fields(self.pid)
        pending = int(status.get("SigPnd", "0"), 16) | int(status.get("ShdPnd", "0"), 16)
        return bool(pending & ~int(status.get("SigBlk", "0"), 16))

    def _call_home(self, nr: int, args: tuple[int, ...]) -> int:
        pid = self.pid
        try:
            request = marshal(nr, args, self.memory.read, lambda address: memory.read_cstring(pid, address, limit=4096))
        except CannotForward:
            try:
                spec_of(nr, args)
            except CannotForward:
                # not a call home can make for it: home says what mosrun's rules say
                return self.forward(Request(nr, args)).result
            return -errno.ENOSYS
        except TraceError:
            return -errno.EFAULT
        self.forwarded += 1
        return unmarshal(request, self.forward(request), self.memory.write)

    def _go_home_for(self, nr: int, reason: str) -> None:
        """A call to make at home (a new process or program; any call, once home asked
        for the process): skip it here, back up to make it again, and stop at the
        skipped call's exit (a clean point to leave)."""
        regs = ptrace.get_regs(self.pid)
        regs.orig_rax = inject.MINUS_ONE
        regs.rax = nr
        regs.rip -= 2  # the syscall instruction again
        ptrace.set_regs(self.pid, regs)
        self.wants_home = reason
        self.stepping = True
        ptrace.syscall(self.pid)

    def stay_instead(self) -> None:
        """Home could not take the process back: a fork or exec fails (EAGAIN), any
        other call is made again from here."""
        if self.wants_home in HOMEWARD_NAMES:
            regs = ptrace.get_regs(self.pid)
            regs.rip += 2
            regs.rax = -errno.EAGAIN & UNSIGNED
            ptrace.set_regs(self.pid, regs)
        self.wants_home = None
        self.leaving = False
        self.stepping = False

    def _map_file(self, args: tuple[int, ...]) -> None:
        """mmap of a file: a private anonymous mapping here, filled with the file's
        pages read at home through the process's descriptor (home's rules decide
        first, and say which flags to map with). The file's later changes are not seen,
        as with MAP_PRIVATE after the pages were touched."""
        pid = self.pid
        flags = self.forward(Request(SYS_MMAP, tuple(args))).result
        if flags < 0:
            self._finish(flags)
            return
        length, fd, offset = args[1], args[4], args[5]
        regs = ptrace.get_regs(pid)
        regs.r10 = (flags & ~MAP_TYPE) | MAP_PRIVATE | MAP_ANONYMOUS
        regs.r8, regs.r9 = UNSIGNED, 0  # fd -1, offset 0
        ptrace.set_regs(pid, regs)
        injector = inject.Injector(pid, 0)
        address = injector.run_to(ptrace.INFO_EXIT)  # at its exit now: a clean point
        if address >= 0:
            done = 0
            while done < length:
                piece = min(MAX_TRANSFER, length - done)
                got = self._call_home(SYS_PREAD, (fd, address + done, piece, offset + done))
                if got <= 0:
                    if got < 0 and done == 0:
                        # no copy to be had: the mapping goes, the call fails as mmap would
                        inject.Injector(pid, ptrace.get_regs(pid).rip - 2).call(SYS_MUNMAP, address, length)
                        address = -errno.EACCES if got == -errno.EBADF else -errno.ENODEV
                    break
                done += got
        if address >= 0 and flags & MAP_TYPE == MAP_PRIVATE and args[3] & MAP_TYPE in MAP_SHARED_TYPES:
            # home's rules mapped a read-only MAP_SHARED privately: home keeps where
            self.forward(Request(MAPPED_PRIVATELY, (address, length)))
        regs = ptrace.get_regs(pid)
        regs.rax = address & UNSIGNED
        ptrace.set_regs(pid, regs)
        for sig in injector.deferred:
            self.signal(sig)
        self._resume()

    def _finish(self, result: int) -> None:
        regs = ptrace.get_regs(self.pid)
        regs.orig_rax = inject.MINUS_ONE  # skip the call here...
        regs.rax = result & UNSIGNED  # ...it returns what it did at home
        ptrace.set_regs(self.pid, regs)
        self._resume()

    def _send(self, request: Request) -> Reply:
        """Forward one request home, counted."""
        self.forwarded += 1
        return self.forward(request)

    def _write_in_pieces(self, nr: int, args: list[int]) -> int:
        """A write larger than one call may carry: piece by piece, stopping at the first
        short or failed piece (the total so far, or the error if nothing was written)."""
        done, count, offset_arg = 0, args[2], WRITES[nr]
        while done < count:
            piece = list(args)
            piece[1], piece[2] = args[1] + done, min(MAX_TRANSFER, count - done)
            if offset_arg is not None:
                piece[offset_arg] = args[offset_arg] + done
            result = self._call_home(nr, tuple(piece))
            if result < 0:
                return done or result
            done += result
            if result < piece[2]:
                break
        return done
