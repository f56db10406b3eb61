"""Our x86_64 system-call table agrees with libseccomp's, the maintained one (Debian's
libseccomp2, installed by scripts/install.sh): same name for every number libseccomp
knows, and no call libseccomp knows is missing from ours (a new kernel call must be
added, and mosrun's rules decide how it is treated)."""

from __future__ import annotations

import ctypes

import pytest

from mosix_core.linux.syscall_names import NAMES, NUMBERS

AUDIT_ARCH_X86_64 = 0xC000003E
# far above any x86_64 number (x32's start at 0x40000000 and are not ours)
SEARCHED = range(2048)


@pytest.fixture(scope="module")
def libseccomp_names() -> dict[int, str]:
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError as error:
        pytest.fail(f"libseccomp.so.2 is missing ({error}): run scripts/install.sh")
    libc = ctypes.CDLL(None)
    name_of = lib.seccomp_syscall_resolve_num_arch
    name_of.restype, name_of.argtypes = ctypes.c_void_p, [ctypes.c_uint32, ctypes.c_int]
    libc.free.argtypes = [ctypes.c_void_p]
    names = {}
    for nr in SEARCHED:
        found = name_of(AUDIT_ARCH_X86_64, nr)
        if found:
            names[nr] = ctypes.string_at(found).decode()
            libc.free(found)
    assert len(names) > 300, "libseccomp answered for too few numbers to be its table"
    return names


def test_every_number_libseccomp_knows_has_the_same_name_here(libseccomp_names):
    differ = {nr: (NAMES.get(nr), name) for nr, name in libseccomp_names.items() if NAMES.get(nr) != name}
    assert not differ, f"ours vs libseccomp's, by number: {differ}"


def test_numbers_is_the_inverse_of_names():
    assert len(NUMBERS) == len(NAMES)
    assert all(NAMES[nr] == name for name, nr in NUMBERS.items())
