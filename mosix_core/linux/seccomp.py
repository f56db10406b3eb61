"""seccomp: a classic-BPF filter that stops only the system calls the supervisor must see.

The filter is built from a table ``{syscall number: Check}``: a call absent from the
table runs natively (a binary search over the numbers finds that it is absent; the
kernel, which sees at install time that the filter allows it whatever its arguments,
then skips the filter for it altogether); a present one is either always traced, or
traced only when its arguments say so.

Assembled here rather than by libseccomp: libseccomp builds the same filters 9-18 times
slower (they are built at every mosrun start and for every guest), runs them no faster,
and cannot say "every i386 call stops, x32 fails, other ABIs die" or "numbers above the
table stop"; and :func:`evaluate` reads our instructions. Figures: ``docs/dependencies.md``.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterable, Mapping, Sequence

import attrs

from mosix_core.linux.libc import LIBC, fail

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_BIT = 0x40000000

RET_KILL_PROCESS = 0x80000000
RET_ALLOW = 0x7FFF0000
RET_TRACE = 0x7FF00000
RET_ERRNO = 0x00050000

_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_ALU_AND = 0x54  # BPF_ALU | BPF_AND | BPF_K
_JA = 0x05  # BPF_JMP | BPF_JA
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K

PR_SET_NO_NEW_PRIVS = 38
SYS_SECCOMP = 317
SECCOMP_SET_MODE_FILTER = 1

Insn = tuple[int, int, int, int]  # code, jt, jf, k


def _nr() -> Insn:
    return (_LD_ABS, 0, 0, 0)


def _arch() -> Insn:
    return (_LD_ABS, 0, 0, 4)


def _arg_low(i: int) -> Insn:
    return (_LD_ABS, 0, 0, 16 + 8 * i)


def _arg_high(i: int) -> Insn:
    return (_LD_ABS, 0, 0, 16 + 8 * i + 4)


def _ret(value: int) -> Insn:
    return (_RET, 0, 0, value)


# -- per-call argument checks ----------------------------------------------------------------------
@attrs.frozen
class Check:
    """When a listed call is traced. ``code`` is a BPF block that ends in a return."""

    code: tuple[Insn, ...]


def always() -> Check:
    return Check((_ret(RET_TRACE),))


def fail_with(errno: int) -> Check:
    """Answered by the filter itself: the call fails with ``errno``, nobody stops."""
    return Check((_ret(RET_ERRNO | errno),))


def when_arg_in(i: int, values: Iterable[int], mask: int = 0xFFFFFFFF) -> Check:
    """Traced when the low 32 bits of argument ``i`` (masked) are one of ``values``."""
    values = sorted(set(values))
    code: list[Insn] = [_arg_low(i)]
    if mask != 0xFFFFFFFF:
        code.append((_ALU_AND, 0, 0, mask))
    n = len(values)
    for k, value in enumerate(values):
        # on a match jump to the RET_TRACE after the final RET_ALLOW
        code.append((_JEQ, n - k, 0, value))
    code += [_ret(RET_ALLOW), _ret(RET_TRACE)]
    return Check(tuple(code))


def unless_arg_in(i: int, values: Iterable[int]) -> Check:
    """Traced unless argument ``i`` (all 64 bits) is one of ``values``."""
    values = sorted(set(values))
    n = len(values)
    code: list[Insn] = [_arg_high(i), (_JEQ, 1, 0, 0), _ret(RET_TRACE), _arg_low(i)]
    for k, value in enumerate(values):
        code.append((_JEQ, n - k, 0, value))
    code += [_ret(RET_TRACE), _ret(RET_ALLOW)]
    return Check(tuple(code))


def custom(code: Sequence[Insn]) -> Check:
    return Check(tuple(code))


# the building blocks custom checks are written with
ld_arg_low, ld_arg_high, ret = _arg_low, _arg_high, _ret


def jeq(value: int, jt: int, jf: int) -> Insn:
    return (_JEQ, jt, jf, value)


def jset(mask: int, jt: int, jf: int) -> Insn:
    return (_JSET, jt, jf, mask)


def and_(mask: int) -> Insn:
    return (_ALU_AND, 0, 0, mask)


# -- the whole program -------------------------------------------------------------------------------
def build(table: Mapping[int, Check], highest_known: int) -> list[Insn]:
    """The filter. Default deny for the other ABIs: every i386 call (``int $0x80``,
    or ``sysenter``/``syscall`` from a 32-bit code segment, which a 64-bit program can
    reach) is traced, so its tracer judges it with the call's architecture in hand
    (``syscall_info().arch``) — never as the 64-bit call of the same number; any other
    architecture kills the process; x32 calls fail with ENOSYS. Numbers above
    ``highest_known`` are traced (so the supervisor can report an illegal system
    call); the table decides the rest."""
    program: list[Insn] = [
        _arch(),
        (_JEQ, 3, 0, AUDIT_ARCH_X86_64),
        (_JEQ, 1, 0, AUDIT_ARCH_I386),
        _ret(RET_KILL_PROCESS),
        _ret(RET_TRACE),
        _nr(),
        (_JSET, 0, 1, X32_BIT),
        _ret(RET_ERRNO | 38),
        (_JGE, 0, 1, highest_known + 1),
        _ret(RET_TRACE),
    ]
    program += _tree(sorted(table.items()))
    return program


def _tree(entries: list[tuple[int, Check]]) -> list[Insn]:
    """A binary search on the syscall number (already in the accumulator). Check
    blocks may clobber the accumulator: each ends in a return."""
    if len(entries) <= 4:
        code: list[Insn] = []
        for nr, check in entries:
            block = list(check.code)
            code.append((_JEQ, 0, len(block), nr))
            code += block
        code.append(_ret(RET_ALLOW))
        return code
    mid = len(entries) // 2
    left, right = _tree(entries[:mid]), _tree(entries[mid:])
    # nr >= pivot: fall into the JA that skips the left half; else skip the JA
    return [(_JGE, 0, 1, entries[mid][0]), (_JA, 0, 0, len(left))] + left + right


def evaluate(program: Sequence[Insn], nr: int, args: Sequence[int] = (), arch: int = AUDIT_ARCH_X86_64) -> int:
    """What ``program`` returns for call ``nr`` with ``args`` (only the instructions
    this module emits are understood). The home side of a migrated process asks it
    whether a call its guest could not forward would have stopped at home."""
    words = [nr & 0xFFFFFFFF, arch, 0, 0]
    for value in list(args) + [0] * (6 - len(args)):
        words += [value & 0xFFFFFFFF, (value >> 32) & 0xFFFFFFFF]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        if code == _LD_ABS:
            acc = words[k // 4]
        elif code == _ALU_AND:
            acc &= k
        elif code == _RET:
            return k
        elif code == _JA:
            pc += k
        elif code in (_JEQ, _JGE, _JSET):
            taken = acc == k if code == _JEQ else acc >= k if code == _JGE else bool(acc & k)
            pc += jt if taken else jf
        else:
            raise ValueError(f"BPF instruction {code:#x} is not one of ours")


def pack(program: Sequence[Insn]) -> bytes:
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(program: Sequence[Insn]) -> None:
    """Install the filter on the calling thread (and so on everything it execs and forks).

    ``no_new_privs`` is set first, as the kernel requires of non-root callers."""
    if len(program) > 4096:
        raise ValueError("seccomp filter too long")
    if LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise fail("prctl(PR_SET_NO_NEW_PRIVS)")
    code = ctypes.create_string_buffer(pack(program))
    prog = _SockFprog(len(program), ctypes.cast(code, ctypes.c_void_p))
    if LIBC.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, 0, ctypes.byref(prog)) != 0:
        raise fail("seccomp(SECCOMP_SET_MODE_FILTER)")
