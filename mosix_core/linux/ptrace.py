"""ptrace(2), the only way mosix-py touches it.

The supervisor seizes tracees (``PTRACE_SEIZE``, so group-stops and job control
keep working through ``PTRACE_LISTEN``), and learns everything from ``waitpid``.
The calls go straight to libc so an error is one errno, turned into
:class:`TraceError`. The register layout is declared here rather than taken from
python-ptrace: importing ``ptrace.binding`` pulls in logging and half the standard
library, a cost every ``mosrun`` start would pay before the program runs.
"""

from __future__ import annotations

import ctypes
import os
import signal

import attrs

from mosix_core.errors import TraceError
from mosix_core.linux.libc import LIBC, fail

__all__ = [
    "Registers",
    "Stop",
    "seize",
    "cont",
    "listen",
    "interrupt",
    "detach",
    "get_regs",
    "set_regs",
    "event_message",
    "syscall_info",
    "SyscallInfo",
    "decode_status",
    "syscall",
    "get_xstate",
    "set_xstate",
    "rseq_configuration",
    "pending_siginfo",
    "wait_for",
    "wait_gone",
]

PTRACE_CONT = 7
PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_GETEVENTMSG = 0x4201
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208
PTRACE_GET_SYSCALL_INFO = 0x420E
PTRACE_SYSCALL = 24
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_PEEKSIGINFO = 0x4209
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F
NT_X86_XSTATE = 0x202
PEEKSIGINFO_SHARED = 1

O_TRACESYSGOOD = 0x1
O_TRACEFORK = 0x2
O_TRACEVFORK = 0x4
O_TRACECLONE = 0x8
O_TRACEEXEC = 0x10
O_TRACESECCOMP = 0x80
O_EXITKILL = 0x100000

EVENT_FORK = 1
EVENT_VFORK = 2
EVENT_CLONE = 3
EVENT_EXEC = 4
EVENT_SECCOMP = 7
EVENT_STOP = 128

SUPERVISOR_OPTIONS = (
    O_TRACESYSGOOD | O_TRACEFORK | O_TRACEVFORK | O_TRACECLONE | O_TRACEEXEC | O_TRACESECCOMP | O_EXITKILL
)
STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
WALL = 0x40000000  # __WALL: wait for every kind of tracee


class Registers(ctypes.Structure):
    """x86-64 ``struct user_regs_struct`` (<sys/user.h>), what PTRACE_GETREGS fills."""

    _fields_ = [
        (name, ctypes.c_ulong)
        for name in (
            "r15",
            "r14",
            "r13",
            "r12",
            "rbp",
            "rbx",
            "r11",
            "r10",
            "r9",
            "r8",
            "rax",
            "rcx",
            "rdx",
            "rsi",
            "rdi",
            "orig_rax",
            "rip",
            "cs",
            "eflags",
            "rsp",
            "ss",
            "fs_base",
            "gs_base",
            "ds",
            "es",
            "fs",
            "gs",
        )
    ]


_regs = Registers()
_regs_ref = ctypes.byref(_regs)
_msg = ctypes.c_ulong()
_msg_ref = ctypes.byref(_msg)


def _call(request: int, pid: int, addr, data, what: str) -> int:
    result = LIBC.ptrace(request, pid, addr, data)
    if result == -1:
        raise fail(f"{what}({pid})")
    return result


def seize(pid: int, options: int = SUPERVISOR_OPTIONS) -> None:
    _call(PTRACE_SEIZE, pid, None, options, "PTRACE_SEIZE")


def cont(pid: int, sig: int = 0) -> None:
    _call(PTRACE_CONT, pid, None, sig, "PTRACE_CONT")


def step(pid: int, sig: int = 0) -> None:
    """Run one instruction (or deliver ``sig`` and stop at its handler's first)."""
    _call(PTRACE_SINGLESTEP, pid, None, sig, "PTRACE_SINGLESTEP")


def listen(pid: int) -> None:
    """Leave a tracee in its group-stop (job control) until a SIGCONT."""
    _call(PTRACE_LISTEN, pid, None, None, "PTRACE_LISTEN")


def interrupt(pid: int) -> None:
    _call(PTRACE_INTERRUPT, pid, None, None, "PTRACE_INTERRUPT")


def detach(pid: int, sig: int = 0) -> None:
    _call(PTRACE_DETACH, pid, None, sig, "PTRACE_DETACH")


def get_regs(pid: int) -> Registers:
    """The tracee's registers, in a shared buffer: copy what you keep."""
    _call(PTRACE_GETREGS, pid, None, _regs_ref, "PTRACE_GETREGS")
    return _regs


def set_regs(pid: int, regs: Registers) -> None:
    _call(PTRACE_SETREGS, pid, None, ctypes.byref(regs), "PTRACE_SETREGS")


def event_message(pid: int) -> int:
    """``PTRACE_GETEVENTMSG``: the new pid at fork/clone events, the old tid at exec."""
    _call(PTRACE_GETEVENTMSG, pid, None, _msg_ref, "PTRACE_GETEVENTMSG")
    return _msg.value


class _SyscallInfo(ctypes.Structure):
    _fields_ = [
        ("op", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("arch", ctypes.c_uint32),
        ("instruction_pointer", ctypes.c_uint64),
        ("stack_pointer", ctypes.c_uint64),
        ("nr", ctypes.c_uint64),
        ("args", ctypes.c_uint64 * 6),
        ("ret_data", ctypes.c_uint32),
        ("tail", ctypes.c_uint32),
    ]


_info = _SyscallInfo()
_info_ref = ctypes.byref(_info)
_info_size = ctypes.sizeof(_SyscallInfo)
INFO_SECCOMP = 3


INFO_ENTRY = 1
INFO_EXIT = 2


@attrs.frozen
class SyscallInfo:
    nr: int
    args: tuple[int, ...]
    arch: int
    op: int = INFO_SECCOMP


def syscall_info(pid: int) -> SyscallInfo:
    """The call a tracee stopped in at a seccomp stop: number and six arguments."""
    _call(PTRACE_GET_SYSCALL_INFO, pid, _info_size, _info_ref, "PTRACE_GET_SYSCALL_INFO")
    return SyscallInfo(_info.nr, tuple(_info.args), _info.arch, _info.op)


def syscall_stop_op(pid: int) -> int:
    """At a syscall stop: INFO_ENTRY or INFO_EXIT."""
    _call(PTRACE_GET_SYSCALL_INFO, pid, _info_size, _info_ref, "PTRACE_GET_SYSCALL_INFO")
    return _info.op


def syscall(pid: int, sig: int = 0) -> None:
    """Resume until the next system-call entry or exit (``PTRACE_SYSCALL``)."""
    _call(PTRACE_SYSCALL, pid, None, sig, "PTRACE_SYSCALL")


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


XSTATE_MAX = 1 << 14


def get_xstate(pid: int) -> bytes:
    """The FPU/SSE/AVX(-512) state as the kernel's XSAVE layout (``NT_X86_XSTATE``)."""
    buf = ctypes.create_string_buffer(XSTATE_MAX)
    iov = _IoVec(ctypes.cast(buf, ctypes.c_void_p), XSTATE_MAX)
    _call(PTRACE_GETREGSET, pid, NT_X86_XSTATE, ctypes.byref(iov), "PTRACE_GETREGSET")
    return buf.raw[: iov.len]


def set_xstate(pid: int, data: bytes) -> None:
    buf = ctypes.create_string_buffer(data, len(data))
    iov = _IoVec(ctypes.cast(buf, ctypes.c_void_p), len(data))
    _call(PTRACE_SETREGSET, pid, NT_X86_XSTATE, ctypes.byref(iov), "PTRACE_SETREGSET")


class _RseqConfiguration(ctypes.Structure):
    _fields_ = [
        ("rseq_abi_pointer", ctypes.c_uint64),
        ("rseq_abi_size", ctypes.c_uint32),
        ("signature", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


def rseq_configuration(pid: int) -> tuple[int, int, int, int]:
    """``(pointer, size, signature, flags)`` of the thread's rseq area; pointer 0: none."""
    conf = _RseqConfiguration()
    _call(PTRACE_GET_RSEQ_CONFIGURATION, pid, ctypes.sizeof(conf), ctypes.byref(conf), "PTRACE_GET_RSEQ_CONFIGURATION")
    return conf.rseq_abi_pointer, conf.rseq_abi_size, conf.signature, conf.flags


class _PeekSiginfoArgs(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("flags", ctypes.c_uint32), ("nr", ctypes.c_int32)]


SIGINFO_SIZE = 128


def pending_siginfo(pid: int, shared: bool) -> list[bytes]:
    """The queued signals (raw 128-byte ``siginfo_t`` each) of the thread, or of the
    whole process with ``shared``, without dequeuing them."""
    out: list[bytes] = []
    batch = 32
    buf = ctypes.create_string_buffer(SIGINFO_SIZE * batch)
    while True:
        args = _PeekSiginfoArgs(len(out), PEEKSIGINFO_SHARED if shared else 0, batch)
        got = _call(PTRACE_PEEKSIGINFO, pid, ctypes.byref(args), buf, "PTRACE_PEEKSIGINFO")
        out += [buf.raw[i * SIGINFO_SIZE : (i + 1) * SIGINFO_SIZE] for i in range(got)]
        if got < batch:
            return out


def wait_gone(pid: int) -> None:
    """Let tracee ``pid`` run on, through any stops, until it has ended (killed, or
    told to exit): the tracer stays until then."""
    while True:
        try:
            stop = wait_for(pid)
        except ChildProcessError:
            return
        if stop.kind in ("exited", "killed"):
            return
        try:
            cont(pid, stop.sig if stop.kind == "signal" else 0)
        except TraceError:
            return


def wait_for(pid: int) -> Stop:
    """Block until ``pid`` (one of our tracees) stops or ends."""
    while True:
        try:
            got, status = os.waitpid(pid, WALL)
        except InterruptedError:
            continue
        return decode_status(got, status)


@attrs.frozen
class Stop:
    """One ``waitpid`` result, decoded.

    ``kind`` is one of: "exited" (``code``), "killed" (``sig``, ``core``),
    "event" (``event``: a ``PTRACE_EVENT_*``; for ``EVENT_STOP`` ``sig`` tells a
    group-stop from an initial/interrupt stop), "signal" (signal-delivery-stop of
    ``sig``), "syscall" (a ``PTRACE_SYSCALL`` stop).
    """

    pid: int
    kind: str
    sig: int = 0
    event: int = 0
    code: int = 0
    core: bool = False

    @property
    def group_stop(self) -> bool:
        return self.kind == "event" and self.event == EVENT_STOP and self.sig in STOP_SIGNALS


def decode_status(pid: int, status: int) -> Stop:
    if os.WIFEXITED(status):
        return Stop(pid, "exited", code=os.WEXITSTATUS(status))
    if os.WIFSIGNALED(status):
        return Stop(pid, "killed", sig=os.WTERMSIG(status), core=os.WCOREDUMP(status))
    sig = os.WSTOPSIG(status)
    event = status >> 16
    if event:
        return Stop(pid, "event", sig=sig, event=event)
    if sig == signal.SIGTRAP | 0x80:
        return Stop(pid, "syscall", sig=signal.SIGTRAP)
    return Stop(pid, "signal", sig=sig)
