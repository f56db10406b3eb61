"""Making a stopped tracee run system calls of our choosing.

The process-image engine asks a process things only it can answer (its signal
handlers, its ``brk``) and, when restoring, has the new process build its own
address space. Both are done by pointing the tracee's instruction pointer at a
``syscall`` instruction in its memory, loading the call's number and arguments,
and letting it run from the system-call entry stop to the exit stop
(``PTRACE_SYSCALL``): no user instruction runs, so the instruction after the
``syscall`` never matters — it may even be unmapped by the call itself.

Injection must start from a stop where registers may be changed freely: an
interrupt stop, a signal-delivery stop or a system-call exit stop. A seccomp stop
is in the middle of a call; :func:`finish_call` ends that call first.

A signal that arrives while calls are injected is held back and handed to the
caller (``Injector.deferred``), to be re-sent once the process is itself again.
"""

from __future__ import annotations

import ctypes
import errno
import signal

from mosix_core.errors import TraceError
from mosix_core.linux import memory, procfs, ptrace

MINUS_ONE = (1 << 64) - 1
ARG_REGISTERS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
SYSCALL_INSTRUCTION = b"\x0f\x05"
# -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK
RESTART_ERRORS = (512, 513, 514, 516)
ERESTARTNOINTR, ERESTART_NOHAND, ERESTART_RESTARTBLOCK = 513, 514, 516
SYS_RESTART_SYSCALL = 219
FAULTS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE})


class InjectedCallFailed(TraceError):
    """An injected call returned an error; ``errno`` is its errno."""


class TraceeEnded(TraceError):
    """The tracee ended while a call ran in it; ``stop`` says how (an injected
    ``exit_group``, a fatal signal)."""

    def __init__(self, stop: ptrace.Stop) -> None:
        self.stop = stop
        super().__init__(f"process {stop.pid} ended while being restored or saved", errno.ESRCH)


def signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def copy_registers(regs: ptrace.Registers) -> ptrace.Registers:
    out = ptrace.Registers()
    ctypes.pointer(out)[0] = regs
    return out


def resumable_registers(regs: ptrace.Registers, *, new_process: bool) -> ptrace.Registers:
    """Registers that, once set, make the tracee carry on as it would have.

    A process interrupted inside a restartable call holds ``-ERESTART*`` in ``rax``
    and relies on the kernel's signal path to back up and re-issue the call; after
    calls were injected that path no longer runs, so do it here: back up over the
    ``syscall`` instruction and put the call's number back. A restart-block call
    (``nanosleep``...) is re-issued through ``restart_syscall`` in the same process;
    a new process has no restart block, so there it starts over. Every register set
    we write has ``orig_rax = -1``: no call in progress."""
    out = copy_registers(regs)
    call = signed(out.orig_rax)
    if call >= 0 and -signed(out.rax) in RESTART_ERRORS:
        if -signed(out.rax) == ERESTART_RESTARTBLOCK and not new_process:
            out.rax = SYS_RESTART_SYSCALL
        else:
            out.rax = call
        out.rip -= 2
    out.orig_rax = MINUS_ONE
    return out


def put_back(pid: int, regs: ptrace.Registers) -> None:
    """Give stopped ``pid`` its registers ``regs`` back after calls were injected into
    it, so it goes on as it would have: a call it was interrupted in is made again
    (after injecting, the kernel no longer restarts it by itself — a raw
    ``-ERESTART*`` would reach the program)."""
    ptrace.set_regs(pid, resumable_registers(regs, new_process=False))


def finish_call(pid: int, result: int) -> None:
    """At a seccomp stop: skip the call, make it return ``result``, and stop at its
    exit, where registers may be changed freely."""
    regs = ptrace.get_regs(pid)
    regs.orig_rax = MINUS_ONE
    regs.rax = result & MINUS_ONE
    ptrace.set_regs(pid, regs)
    Injector(pid, 0).run_to(ptrace.INFO_EXIT)


def end_call(pid: int, result: int) -> list[int]:
    """:func:`finish_call`, for a call whose answer was waited for: the signals that
    arrived meanwhile, to be re-sent."""
    regs = ptrace.get_regs(pid)
    regs.orig_rax = MINUS_ONE
    regs.rax = result & MINUS_ONE
    ptrace.set_regs(pid, regs)
    injector = Injector(pid, 0)
    injector.run_to(ptrace.INFO_EXIT)
    return injector.deferred


def skip_call(pid: int, result: int) -> None:
    """At a seccomp stop: the call is not made, and returns ``result`` (-errno: fails)."""
    regs = ptrace.get_regs(pid)
    regs.orig_rax = MINUS_ONE
    regs.rax = result & MINUS_ONE
    ptrace.set_regs(pid, regs)


def set_result(pid: int, result: int) -> None:
    """At a system-call exit stop: the call returns ``result`` (-errno: fails)."""
    regs = ptrace.get_regs(pid)
    regs.rax = result & MINUS_ONE
    ptrace.set_regs(pid, regs)


def set_arguments(pid: int, values: dict[int, int]) -> ptrace.Registers:
    """At a seccomp stop: the call is made with argument ``index`` (0-5) ``value``
    instead, for each item of ``values``; the registers the call then has."""
    regs = ptrace.get_regs(pid)
    for index, value in values.items():
        setattr(regs, ARG_REGISTERS[index], value & MINUS_ONE)
    ptrace.set_regs(pid, regs)
    return regs


# -- what a process that moved leaves behind (the shell at home, see remote/deputy.py) --------
SYS_RT_SIGACTION, SYS_RT_SIGPROCMASK, SYS_SETITIMER = 13, 14, 38
SIG_SETMASK = 2
ITIMERS = (0, 1, 2)  # ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF


def unblock_every_signal(injector: Injector, zeros: int) -> None:
    """The tracee's signal mask emptied (``zeros``: 8 zero bytes in its memory)."""
    injector.check("rt_sigprocmask", SYS_RT_SIGPROCMASK, SIG_SETMASK, zeros, 0, 8)


def stop_interval_timers(injector: Injector, zeros: int) -> None:
    """Every interval timer of the tracee stopped (``zeros``: 32 zero bytes in its memory)."""
    for which in ITIMERS:
        injector.check("setitimer", SYS_SETITIMER, which, zeros, 0)


def default_action(injector: Injector, sig: int, zeros: int) -> int:
    """Signal ``sig``'s action set to SIG_DFL in the tracee (``zeros``: a zeroed
    ``struct sigaction`` in its memory); the call's raw result."""
    return injector.call(SYS_RT_SIGACTION, sig, zeros, 0, 8)


class Injector:
    """Runs system calls in ``pid`` through the ``syscall`` instruction at ``address``."""

    def __init__(self, pid: int, address: int) -> None:
        self.pid = pid
        self.address = address
        self.deferred: list[int] = []  # signals held back while injecting

    def call(self, nr: int, *args: int) -> int:
        """The call's raw result (negative errno on failure)."""
        self.load(nr, *args)
        return self.run_to(ptrace.INFO_EXIT)

    def load(self, nr: int, *args: int) -> None:
        """Point the stopped tracee at the call (it runs when resumed)."""
        regs = copy_registers(ptrace.get_regs(self.pid))
        regs.rip = self.address
        regs.rax = nr
        regs.orig_rax = MINUS_ONE
        for name, value in zip(ARG_REGISTERS, args):
            setattr(regs, name, value & MINUS_ONE)
        ptrace.set_regs(self.pid, regs)

    def check(self, what: str, nr: int, *args: int) -> int:
        """The call's result; :class:`InjectedCallFailed` when it fails."""
        result = self.call(nr, *args)
        if -4096 < result < 0:
            raise InjectedCallFailed(f"{what}: {errno.errorcode.get(-result, -result)}", -result)
        return result

    def run_to(self, op: int) -> int:
        """Resume the tracee to the loaded call's entry or exit stop (``op``); ``rax``
        there (at the exit: the result). Signals meanwhile are kept in ``deferred``."""
        ptrace.syscall(self.pid)
        fault_at: tuple[int, int] | None = None
        while True:
            stop = ptrace.wait_for(self.pid)
            if stop.kind in ("exited", "killed"):
                raise TraceeEnded(stop)
            if stop.kind == "syscall" and ptrace.syscall_stop_op(self.pid) == op:
                return signed(ptrace.get_regs(self.pid).rax)
            if stop.kind == "signal":
                if stop.sig in FAULTS:
                    # the injected instruction itself faults (its page gone, say): resumed,
                    # it faults again forever; a second fault at the same place ends it
                    here = (stop.sig, ptrace.get_regs(self.pid).rip)
                    if here == fault_at:
                        raise TraceError(
                            f"process {self.pid}: the injected call faults (signal {stop.sig} at {here[1]:#x})",
                            errno.EFAULT,
                        )
                    fault_at = here
                self.deferred.append(stop.sig)
            ptrace.syscall(self.pid)


def find_syscall_instruction(pid: int, mappings: list[procfs.Mapping] | None = None) -> int:
    """An address holding a ``syscall`` instruction in one of the executable mappings
    of ``pid`` (the vDSO first: it is small and always has one)."""
    if mappings is None:
        mappings = procfs.read_maps(pid)
    ordered = sorted((m for m in mappings if "x" in m.perms), key=lambda m: m.path != "[vdso]")
    for mapping in ordered:
        if mapping.path == "[vsyscall]":
            continue
        try:
            data = memory.read_bytes(pid, mapping.start, min(mapping.size, 1 << 20))
        except (OSError, TraceError):
            continue
        at = data.find(SYSCALL_INSTRUCTION)
        if at >= 0:
            return mapping.start + at
    raise TraceError("no system-call instruction found in the process")
