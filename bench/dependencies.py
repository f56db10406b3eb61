#!/usr/bin/env python3
"""What the hand-written parts that a library could replace cost, against the library.

Figures behind the decisions of ``docs/dependencies.md``:

``table``     obtaining the x86_64 system-call table: importing our module
              (``mosix_core/linux/syscall_names.py``), importing python-ptrace's, and
              asking libseccomp (``seccomp_syscall_resolve_num_arch``) for every
              number, through ctypes and through cffi. Each in a fresh interpreter
              (ctypes already imported, as it is in mosrun), median of the runs, in ms.
``build``     building the seccomp filter of a process at home (mosrun) and of a
              guest: our assembler against libseccomp (rules added through ctypes,
              ``seccomp_export_bpf``), median ms and the program's length. The
              libseccomp rules mirror ours one comparison per rule; what libseccomp
              cannot express (the i386/x32/other-ABI split, "numbers above the table
              stop") is left out, which only flatters it.
``per call``  a C loop of N system calls in a process under each filter: ``getppid``
              and ``times`` (never stop), ``futex(FUTEX_WAKE_PRIVATE)`` (its argument
              is checked), best of the rounds, in ns per call; "none" is the loop
              without a filter. Filters are measured in turns so a change of load on
              the machine falls on every one alike.

Needs gcc and libseccomp.so.2 (Debian's libseccomp2). python-ptrace is no longer a
dependency: its line says "not available" unless it is installed by hand.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mosix_core.linux import seccomp  # noqa: E402
from mosix_core.linux.syscall_names import NAMES  # noqa: E402
from mosix_core.mosrun import rules  # noqa: E402
from mosix_core.remote import guest  # noqa: E402

AUDIT_ARCH_X86_64 = 0xC000003E

# -- the table ---------------------------------------------------------------------------------------
TABLE_SOURCES = {
    "our module": "import mosix_core.linux.syscall_names",
    "python-ptrace": "import ptrace.syscall.linux.x86_64",
    "libseccomp (ctypes)": """
lib = ctypes.CDLL('libseccomp.so.2'); libc = ctypes.CDLL(None)
name_of = lib.seccomp_syscall_resolve_num_arch
name_of.restype, name_of.argtypes = ctypes.c_void_p, [ctypes.c_uint32, ctypes.c_int]
libc.free.argtypes = [ctypes.c_void_p]
NAMES = {}
for nr in range(1024):
    p = name_of(0xC000003E, nr)
    if p:
        NAMES[nr] = ctypes.string_at(p).decode()
        libc.free(p)
""",
    "libseccomp (cffi)": """
import cffi
ffi = cffi.FFI(); ffi.cdef('char *seccomp_syscall_resolve_num_arch(uint32_t, int); void free(void *);')
lib = ffi.dlopen('libseccomp.so.2'); libc = ffi.dlopen(None)
NAMES = {}
for nr in range(1024):
    p = lib.seccomp_syscall_resolve_num_arch(0xC000003E, nr)
    if p != ffi.NULL:
        NAMES[nr] = ffi.string(p).decode()
        libc.free(p)
""",
}


def table_times(runs: int) -> None:
    print("table: obtaining the x86_64 system-call table (fresh interpreter, ms)")
    for name, code in TABLE_SOURCES.items():
        script = f"import ctypes, time\nt = time.perf_counter()\n{code}\nprint((time.perf_counter() - t) * 1e3)"
        times = []
        for _ in range(runs):
            done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
            if done.returncode != 0:
                times = []
                break
            times.append(float(done.stdout))
        print(f"  {name:22s} " + (f"{statistics.median(times):7.2f}" if times else "   (not available)"))


# -- libseccomp building our filters -------------------------------------------------------------------
class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


SCMP_CMP_NE, SCMP_CMP_MASKED_EQ = 1, 7
SCMP_FLTATR_ACT_BADARCH, SCMP_FLTATR_CTL_NNP, SCMP_FLTATR_CTL_OPTIMIZE = 2, 3, 8


class Libseccomp:
    def __init__(self) -> None:
        lib = self.lib = ctypes.CDLL("libseccomp.so.2")
        lib.seccomp_init.restype, lib.seccomp_init.argtypes = ctypes.c_void_p, [ctypes.c_uint32]
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_rule_add_exact_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(_ArgCmp),
        ]
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]

    def build(self, table: dict[int, seccomp.Check], tree: bool = True) -> list[seccomp.Insn]:
        lib = self.lib
        ctx = lib.seccomp_init(seccomp.RET_ALLOW)
        lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0)
        lib.seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, seccomp.RET_TRACE)
        if tree:
            lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2)  # a binary tree, as ours
        for nr, check in table.items():
            for action, conds in _rules_of(check):
                cmps = (_ArgCmp * max(1, len(conds)))(*[_ArgCmp(*cond) for cond in conds])
                lib.seccomp_rule_add_exact_array(ctx, action, nr, len(conds), cmps)
        fd = os.memfd_create("bpf")
        try:
            if lib.seccomp_export_bpf(ctx, fd) != 0:
                raise RuntimeError("seccomp_export_bpf failed")
            lib.seccomp_release(ctx)
            os.lseek(fd, 0, os.SEEK_SET)
            data = b""
            while chunk := os.read(fd, 1 << 16):
                data += chunk
        finally:
            os.close(fd)
        return [struct.unpack_from("=HBBI", data, i) for i in range(0, len(data), 8)]


def _rules_of(check: seccomp.Check) -> list[tuple[int, list[tuple[int, int, int, int]]]]:
    """libseccomp rules (action, [(arg, op, a, b)]) doing the work of one of our checks:
    one rule per comparison in it."""
    code = check.code
    if len(code) == 1:
        return [(code[0][3], [])]

    def traces(pc: int) -> bool:
        return code[pc][0] == seccomp._RET and code[pc][3] == seccomp.RET_TRACE

    found, arg, mask = [], 0, 0xFFFFFFFF
    for pc, (op, jt, jf, k) in enumerate(code):
        if op == seccomp._LD_ABS:
            arg, mask = (k - 16) // 8, 0xFFFFFFFF
        elif op == seccomp._ALU_AND:
            mask = k
        elif op in (seccomp._JEQ, seccomp._JSET):
            when_true, when_false = pc + 1 + jt, pc + 1 + jf
            if traces(when_false) and not traces(when_true):  # stops unless this holds
                cond = (arg, SCMP_CMP_MASKED_EQ, k, 0) if op == seccomp._JSET else (arg, SCMP_CMP_NE, k, 0)
            else:
                cond = (arg, SCMP_CMP_MASKED_EQ, k, k) if op == seccomp._JSET else (arg, SCMP_CMP_MASKED_EQ, mask, k)
            found.append((seccomp.RET_TRACE, [cond]))
    return found


def guest_table() -> dict[int, seccomp.Check]:
    table = {nr: seccomp.always() for nr, name in NAMES.items() if name not in guest.LOCAL}
    table[guest.SYS_FUTEX] = seccomp.when_arg_in(1, [0], mask=guest.FUTEX_PRIVATE_FLAG)
    return table


def median_ms(make, runs: int) -> tuple[float, int]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        program = make()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), len(program)


# -- the cost per call ---------------------------------------------------------------------------------
LOOP_C = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <sys/syscall.h>
#include <linux/futex.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
/* loop WHICH N ROUNDS < program.bpf: a child installs the filter (none if stdin is
   empty) and makes N calls, ROUNDS times; the best ns per call comes back through
   shared memory, since under a guest's filter even write and exit stop (and, with
   nobody tracing, fail): the child ends by a fault, which is no system call. */
int main(int argc, char **argv) {
    const char *which = argv[1]; long n = atol(argv[2]); int rounds = atoi(argv[3]);
    static struct sock_filter prog[8192];
    ssize_t got = read(0, prog, sizeof prog);
    double *best = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    *best = 1e18;
    pid_t pid = fork();
    if (pid == 0) {
        if (got > 0) {
            struct sock_fprog fprog = { (unsigned short)(got / 8), prog };
            prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog)) _exit(1);
        }
        static int word;
        for (int r = 0; r < rounds; r++) {
            struct timespec a, b;
            clock_gettime(CLOCK_MONOTONIC, &a);
            for (long i = 0; i < n; i++) {
                if (which[0] == 'g') syscall(SYS_getppid);
                else if (which[0] == 'f') syscall(SYS_futex, &word, FUTEX_WAKE_PRIVATE, 1, 0, 0, 0);
                else syscall(SYS_times, 0);
            }
            clock_gettime(CLOCK_MONOTONIC, &b);
            double ns = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n;
            if (ns < *best) *best = ns;
        }
        *(volatile int *)0 = 0;
    }
    waitpid(pid, 0, 0);
    printf("%.1f\n", *best);
    return 0;
}
"""
CALLS = {"getppid": "g", "times": "t", "futex(WAKE_PRIVATE)": "f"}


def per_call(filters: dict[str, list | None], calls: int, turns: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        loop = Path(tmp) / "loop"
        (Path(tmp) / "loop.c").write_text(LOOP_C)
        subprocess.run(["gcc", "-O2", "-o", str(loop), str(loop) + ".c"], check=True)
        best: dict[tuple[str, str], float] = {}
        for _ in range(turns):
            for name, program in filters.items():
                for call, letter in CALLS.items():
                    if "guest" in name and call == "getppid":
                        continue  # a guest's getppid stops (it is home's)
                    data = seccomp.pack(program) if program else b""
                    out = subprocess.run(
                        [str(loop), letter, str(calls), "5"], input=data, capture_output=True, check=True
                    ).stdout
                    key = (name, call)
                    best[key] = min(best.get(key, float("inf")), float(out))
    print(f"per call: ns per call, best of {turns} turns x 5 rounds of {calls}")
    for name, program in filters.items():
        row = "  ".join(f"{call} {best[(name, call)]:6.1f}" for call in CALLS if (name, call) in best)
        print(f"  {name:26s} {len(program) if program else 0:5d} insns  {row}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="fresh interpreters / builds per figure")
    parser.add_argument("--calls", type=int, default=300_000)
    parser.add_argument("--turns", type=int, default=5)
    args = parser.parse_args()

    table_times(args.runs)
    lsc = Libseccomp()
    home, guest_rules = rules.seccomp_table(), guest_table()
    print("build: median ms, instructions")
    builds = {
        "ours, home": lambda: rules.build_filter(),
        "libseccomp, home": lambda: lsc.build(rules.seccomp_table()),
        "ours, guest": lambda: guest.guest_filter(),
        "libseccomp, guest": lambda: lsc.build(guest_table()),
    }
    for name, make in builds.items():
        ms, length = median_ms(make, args.runs * 2)
        print(f"  {name:22s} {ms:7.3f} ms  {length:5d} insns")
    per_call(
        {
            "none": None,
            "ours, home": rules.build_filter(),
            "libseccomp, home (tree)": lsc.build(home),
            "libseccomp, home (linear)": lsc.build(home, tree=False),
            "ours, guest": guest.guest_filter(),
            "libseccomp, guest (tree)": lsc.build(guest_rules),
            "libseccomp, guest (linear)": lsc.build(guest_rules, tree=False),
        },
        args.calls,
        args.turns,
    )


if __name__ == "__main__":
    main()
