"""The restorer's last part: what the kernel keeps of the process beyond its memory
and files — signals, rseq and the robust list, the personality, the mm fields and
``exe`` (``PR_SET_MM_MAP``), resource limits, the MOSIX seccomp filter, interval
timers — and at the very end its FP state and registers.

Each is set by calls injected into the process from the trampoline (see
:mod:`mosix_core.image.restore_memory`), once the whole image has been verified.
"""

from __future__ import annotations

import os
import resource
import struct
from typing import Any

from mosix_core.image.checks import PAGE, SS_ONSTACK
from mosix_core.image.restore_memory import O_CLOEXEC, O_RDONLY, AddressSpace, RestoreFailed
from mosix_core.linux import procfs, ptrace, seccomp

SYS_CLOSE, SYS_RT_SIGACTION, SYS_RT_SIGPROCMASK, SYS_SETITIMER = 3, 13, 14, 38
SYS_SIGALTSTACK, SYS_PERSONALITY, SYS_PRCTL = 131, 135, 157
SYS_SET_ROBUST_LIST, SYS_RSEQ, SYS_SECCOMP = 273, 334, 317
SYS_RT_SIGQUEUEINFO, SYS_RT_TGSIGQUEUEINFO = 129, 297
PR_SET_MM, PR_SET_MM_MAP, PR_SET_NO_NEW_PRIVS = 35, 14, 38
UNCATCHABLE = (9, 19)
_MM_MAP = struct.Struct("<11QQII")


def restore_personality(space: AddressSpace, process: dict[str, Any]) -> None:
    if process.get("personality"):
        space.injector.call(SYS_PERSONALITY, process["personality"])


def restore_signals(space: AddressSpace, signals: dict[str, Any]) -> None:
    """Actions, the alternate stack, the mask, then the pending signals queued again."""
    inj, pid = space.injector, space.pid
    actions = {int(sig): value for sig, value in signals["actions"].items()}
    ignored_now = set(procfs.signal_set(procfs.status_fields(pid)["SigIgn"]))
    for sig in sorted(set(actions) | ignored_now):
        if sig in UNCATCHABLE:
            continue
        handler, flags, restorer, mask = actions.get(sig, (0, 0, 0, 0))
        address = space.scratch(struct.pack("<QQQQ", handler, flags, restorer, mask))
        inj.check(f"rt_sigaction({sig})", SYS_RT_SIGACTION, sig, address, 0, 8)
    sp, flags, size = signals["altstack"]
    if sp or size:
        address = space.scratch(struct.pack("<Qi4xQ", sp, flags & ~SS_ONSTACK, size))
        inj.check("sigaltstack", SYS_SIGALTSTACK, address, 0)
    inj.check("rt_sigprocmask", SYS_RT_SIGPROCMASK, 2, space.scratch(struct.pack("<Q", signals["mask"])), 0, 8)
    for shared, infos in ((False, signals["pending"]), (True, signals["shared_pending"])):
        for text in infos:
            info = bytes.fromhex(text)
            sig = struct.unpack_from("<i", info)[0]
            address = space.scratch(info)
            if shared:
                inj.call(SYS_RT_SIGQUEUEINFO, pid, sig, address)
            else:
                inj.call(SYS_RT_TGSIGQUEUEINFO, pid, pid, sig, address)


def restore_rseq(space: AddressSpace, rseq: dict[str, Any]) -> None:
    if rseq["pointer"]:
        space.injector.check("rseq", SYS_RSEQ, rseq["pointer"], rseq["size"], 0, rseq["signature"])


def restore_robust_list(space: AddressSpace, process: dict[str, Any]) -> None:
    head, length = process.get("robust_list", [0, 0])
    if head:
        space.injector.check("set_robust_list", SYS_SET_ROBUST_LIST, head, length)


def restore_mm(space: AddressSpace, mm: dict[str, Any], exe: str | None) -> None:
    """The kernel's memory descriptor fields; the executable too unless ``exe`` is
    None (-1 leaves it as it is)."""
    inj = space.injector
    auxv = bytes.fromhex(mm["auxv"])
    auxv_at = space.scratch(auxv, offset=2 * PAGE)
    exe_fd = space.open(exe, O_RDONLY | O_CLOEXEC, 0, exe) if exe and os.path.exists(exe) else -1

    def set_map(fd: int) -> int:
        data = _MM_MAP.pack(
            mm["start_code"],
            mm["end_code"],
            mm["start_data"],
            mm["end_data"],
            mm["start_brk"],
            mm["brk"],
            mm["start_stack"],
            mm["arg_start"],
            mm["arg_end"],
            mm["env_start"],
            mm["env_end"],
            auxv_at,
            len(auxv),
            fd & 0xFFFFFFFF,
        )
        return inj.call(SYS_PRCTL, PR_SET_MM, PR_SET_MM_MAP, space.scratch(data), len(data), 0)

    result = set_map(exe_fd)
    if result < 0 and exe_fd >= 0:
        result = set_map(-1)  # exe needs CAP_CHECKPOINT_RESTORE: keep the rest
    if exe_fd >= 0:
        inj.call(SYS_CLOSE, exe_fd)
    if result < 0:
        raise RestoreFailed(f"prctl(PR_SET_MM_MAP): {os.strerror(-result)}")


def restore_limits(pid: int, limits: dict[str, list[int]]) -> None:
    for name, (soft, hard) in limits.items():
        number = getattr(resource, name, None)
        if number is None:
            continue
        try:
            resource.prlimit(pid, number, (soft, hard))
        except (OSError, ValueError):
            try:  # a hard limit above ours needs privilege: keep what we can
                _, current_hard = resource.prlimit(pid, number)
                within = soft if current_hard == resource.RLIM_INFINITY else min(soft, current_hard)
                resource.prlimit(pid, number, (within, current_hard))
            except (OSError, ValueError):
                pass


def install_filter(space: AddressSpace, filter_program: tuple) -> None:
    """The seccomp filter the process runs under (no_new_privs first, as the kernel wants)."""
    inj = space.injector
    program = list(filter_program)
    code = space.scratch(seccomp.pack(program), offset=PAGE)
    fprog = space.scratch(struct.pack("<H6xQ", len(program), code))
    inj.check("prctl(PR_SET_NO_NEW_PRIVS)", SYS_PRCTL, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    inj.check("seccomp", SYS_SECCOMP, seccomp.SECCOMP_SET_MODE_FILTER, 0, fprog)


def restore_timers(space: AddressSpace, itimers: list[list[int]]) -> None:
    """The interval timers (alarm, setitimer) as they were."""
    for which, timer in enumerate(itimers):
        if any(timer):
            space.injector.check(
                f"setitimer({which})", SYS_SETITIMER, which, space.scratch(struct.pack("<qqqq", *timer)), 0
            )


def set_registers(pid: int, xstate: bytes, registers: bytes) -> None:
    """The FP state and the registers: the process carries on from there."""
    ptrace.set_xstate(pid, xstate)
    ptrace.set_regs(pid, ptrace.Registers.from_buffer_copy(registers))
