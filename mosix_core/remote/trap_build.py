"""Build the C trap loop (``trap_loop.c``) next to :mod:`mosix_core.remote.fastpath`:
``python -m mosix_core.remote.trap_build`` (scripts/install.sh runs it). Without a C
compiler the guest host runs its Python loop alone."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "trap_loop.c"
#: trap_loop.c's interface (cffi checks it against the C when it compiles)
DECLARATIONS = """
struct shape { uint8_t kind, nargs, buffer, size_arg; uint32_t fixed; uint8_t flags, string, pad[2]; };
struct trap_loop {
    int pid, sock, mem, sigfd, wakefd;
    const struct shape *shapes;
    int nshapes;
    uint8_t *buf;
    size_t room;
    uint8_t *pending;
    size_t pending_room, pending_len;
    long handled, spin_ns;
    int error;
};
int trap_serve(struct trap_loop *loop, int timeout_ms, int *status, int64_t *result);
"""
#: besides Python's own flags for an extension (tests/unit/test_trap_loop_frames.py
#: compiles its harness of trap_loop.c with these too)
COMPILE_ARGS = ["-O2", "-Wall"]


def macros() -> list[tuple[str, str]]:
    """The constants the C side shares with Python, from Python's definitions."""
    from mosix_core.remote import calls, fastpath

    names = ("STOP", "SOCKET", "TIMEOUT", "INTERRUPTED", "RESTART", "ERROR")
    shared = {f"TRAP_{name}": getattr(fastpath, name) for name in names}
    shared.update(
        {
            name: getattr(fastpath, name)
            for name in ("SHAPE_NONE", "SHAPE_VALUES", "SHAPE_IN", "SHAPE_OUT", "FLAG_CLAMP")
        }
    )
    shared["MAX_TRANSFER"] = calls.MAX_TRANSFER
    return [(name, str(value)) for name, value in shared.items()]


def build() -> Path:
    from cffi import FFI

    builder = FFI()
    builder.cdef(DECLARATIONS)
    builder.set_source("_trap_loop", SOURCE.read_text(), define_macros=macros(), extra_compile_args=COMPILE_ARGS)
    with tempfile.TemporaryDirectory() as scratch:
        built = Path(builder.compile(tmpdir=scratch, verbose=False))
        target = HERE / built.name
        fresh = target.with_name(target.name + ".new")
        fresh.write_bytes(built.read_bytes())
        # renamed over, not written into: a process that has the old one loaded (a
        # guest host, or this one) keeps it whole
        os.replace(fresh, target)
    return target


if __name__ == "__main__":
    try:
        print(f"built {build()}")
    except Exception as err:  # the Python loop serves without it
        print(f"trap_build: the C trap loop was not built: {err}", file=sys.stderr)
        sys.exit(1)
