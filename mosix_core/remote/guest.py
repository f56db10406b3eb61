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
"""

from __future__ import annotations

import errno
import os
import signal
from typing import Callable

from mosix_core.errors import TraceError
from mosix_core.linux import inject, memory, ptrace, seccomp
from mosix_core.linux.syscall_names import NAMES, NUMBERS
from mosix_core.remote.calls import MAX_TRANSFER, CannotForward, Reply, Request, marshal, unmarshal

#: run where the process is: they concern only the process itself
LOCAL = frozenset({
    "brk", "munmap", "mprotect", "mremap", "madvise", "msync", "mlock", "munlock",
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigsuspend",
    "rt_sigtimedwait", "sigaltstack", "arch_prctl", "set_tid_address", "set_robust_list",
    "get_robust_list", "rseq", "futex", "sched_yield", "nanosleep", "clock_nanosleep",
    "clock_gettime", "clock_getres", "gettimeofday", "time", "getrandom", "pause",
    "getrusage", "times", "prlimit64", "getrlimit", "setrlimit", "sched_getaffinity",
    "restart_syscall",
})
#: local when they only wait (no descriptors: ``nfds``, at this argument, is 0)
WAITING = {"select": 0, "pselect6": 0, "poll": 1, "ppoll": 1}
EXITS = (NUMBERS["exit"], NUMBERS["exit_group"])
# one forwarded call carries at most MAX_TRANSFER bytes: a larger read returns less (as
# reads may), a larger write is sent in pieces and returns the total (as if whole)
READS = {NUMBERS["read"]: 2, NUMBERS["pread64"]: 2, NUMBERS["getdents64"]: 2}
WRITES = {NUMBERS["write"]: None, NUMBERS["pwrite64"]: 3}     # the offset argument, if any
SYS_MMAP = NUMBERS["mmap"]
MAP_ANONYMOUS = 0x20
UNSIGNED = (1 << 64) - 1


def guest_filter() -> list:
    """The seccomp program a guest runs under: everything stops but the local calls."""
    table = {nr: seccomp.always() for nr, name in NAMES.items() if name not in LOCAL}
    table[SYS_MMAP] = seccomp.when_arg_in(3, [0], mask=MAP_ANONYMOUS)   # file mappings stop
    for name, nfds in WAITING.items():
        table[NUMBERS[name]] = seccomp.unless_arg_in(nfds, [0])
    return seccomp.build(table, max(NAMES))


class Guest:
    """Traces restored guest ``pid`` until its process ends (at home)."""

    def __init__(self, pid: int, forward: Callable[[Request], Reply]) -> None:
        self.pid = pid
        self.forward = forward
        self.forwarded = 0
        self.exit_status: int | None = None
        self.stepping = False
        self.killed_by: int | None = None        # the signal that ended it here, if one did

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
                self.killed_by = stop.sig             # a signal's default action, here
                return 128 + stop.sig
            return self.exit_status
        if stop.kind == "event" and stop.event == ptrace.EVENT_SECCOMP:
            self._trapped()
        elif stop.kind == "signal":
            self._resume(stop.sig)                    # its own signals are delivered here
        elif stop.kind == "event" and stop.event == ptrace.EVENT_STOP and stop.group_stop:
            ptrace.listen(self.pid)                   # stopped (SIGTSTP...) until SIGCONT
        else:
            self._resume()
        return None

    def _resume(self, sig: int = 0) -> None:
        if self.stepping:
            ptrace.syscall(self.pid, sig)
        else:
            ptrace.cont(self.pid, sig)

    def signal(self, sig: int) -> None:
        """A signal that reached the process at home."""
        os.kill(self.pid, sig)

    def _trapped(self) -> None:
        pid = self.pid
        info = ptrace.syscall_info(pid)
        if info.nr in EXITS:
            status = info.args[0] & 0xFF
            self.forward(Request(NUMBERS["exit_group"], (status,)))
            self.exit_status = status
            os.kill(pid, signal.SIGKILL)              # it has ended at home
            return
        args = list(info.args)
        if info.nr in READS:
            args[READS[info.nr]] = min(args[READS[info.nr]], MAX_TRANSFER)
        if info.nr in WRITES and args[2] > MAX_TRANSFER:
            result = self._write_in_pieces(info.nr, args)
        else:
            result = self._call_home(info.nr, tuple(args))
        regs = ptrace.get_regs(pid)
        regs.orig_rax = inject.MINUS_ONE              # skip the call here...
        regs.rax = result & UNSIGNED                  # ...it returns what it did at home
        ptrace.set_regs(pid, regs)
        self._resume()

    def _call_home(self, nr: int, args: tuple[int, ...]) -> int:
        pid = self.pid
        try:
            request = marshal(nr, args, lambda address, size: memory.read_bytes(pid, address, size),
                              lambda address: memory.read_cstring(pid, address, limit=4096))
        except CannotForward:
            return -errno.ENOSYS
        except TraceError:
            return -errno.EFAULT
        self.forwarded += 1
        return unmarshal(request, self.forward(request), lambda address, data: memory.write_bytes(pid, address, data))

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
