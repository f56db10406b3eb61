"""The vDSO's clock functions, made to enter the kernel.

``clock_gettime``, ``gettimeofday`` and ``time`` normally never reach the kernel:
the C library calls the vDSO, which reads the clock in user space, and so no
tracer sees them. A guest that must read its home's wall clock gets those entry
points overwritten (in its own copy-on-write copy of the vDSO page) with the real
system call: ``mov eax, NR; syscall; ret``. Their arguments already sit where the
system call takes them (rdi, rsi), and the registers a syscall clobbers (rcx, r11)
are ones a call may clobber anyway.
"""

from __future__ import annotations

import struct

from mosix_core.errors import TraceError
from mosix_core.linux.syscall_names import NUMBERS

#: entry point names → the system call each one stands for (the plain names are
#: aliases of the __vdso_ ones, at the same addresses)
CLOCK_ENTRIES = {
    f"{prefix}{name}": NUMBERS[name] for name in ("clock_gettime", "gettimeofday", "time") for prefix in ("__vdso_", "")
}
ELF_MAGIC = b"\x7fELF\x02\x01"  # 64-bit, little-endian
SHT_DYNSYM = 11
PT_LOAD = 1
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")


def syscall_stub(nr: int) -> bytes:
    return b"\xb8" + struct.pack("<I", nr) + b"\x0f\x05\xc3"


def clock_entry_points(image: bytes) -> dict[int, int]:
    """Offsets (from the start of the mapped vDSO ``image``) of its clock functions,
    each with the system call it stands for. TraceError if it is not a vDSO we know."""
    try:
        if not image.startswith(ELF_MAGIC):
            raise ValueError("no 64-bit little-endian ELF header")
        (_, _, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _) = _EHDR.unpack_from(image)
        base = min(
            (
                _PHDR.unpack_from(image, phoff + k * phentsize)[3]
                for k in range(phnum)
                if _PHDR.unpack_from(image, phoff + k * phentsize)[0] == PT_LOAD
            ),
            default=0,
        )
        sections = [_SHDR.unpack_from(image, shoff + k * shentsize) for k in range(shnum)]
        found: dict[int, int] = {}
        for kind, offset, size, link in ((s[1], s[4], s[5], s[6]) for s in sections):
            if kind != SHT_DYNSYM:
                continue
            strings = sections[link][4]
            for at in range(offset, offset + size, _SYM.size):
                name_at, _, _, _, value, _ = _SYM.unpack_from(image, at)
                end = image.index(b"\0", strings + name_at)
                name = image[strings + name_at : end].decode("ascii", "replace")
                if name in CLOCK_ENTRIES and value:
                    found[value - base] = CLOCK_ENTRIES[name]
        if not found:
            raise ValueError("no clock functions among its symbols")
        if any(not 0 <= offset <= len(image) - len(syscall_stub(0)) for offset in found):
            raise ValueError("a clock function outside the image")
        return found
    except (ValueError, struct.error, IndexError, OverflowError) as err:
        raise TraceError(f"reading the vDSO: {err}") from None
