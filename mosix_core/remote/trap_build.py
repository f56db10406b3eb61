"""Build the C trap loop (``trap_loop.c``) next to :mod:`mosix_core.remote.fastpath`:
``python -m mosix_core.remote.trap_build`` (scripts/install.sh runs it). Without a C
compiler the guest host runs its Python loop alone."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DECLARATIONS = """
struct shape { uint8_t kind, nargs, buffer, size_arg; uint32_t fixed; uint8_t flags, string, pad[2]; };
int trap_serve(int pid, int sock, int mem, int sigfd, int wakefd, const struct shape *shapes, int nshapes, int timeout_ms,
               uint8_t *buf, size_t room, uint8_t *pending, size_t pending_room, size_t *pending_len,
               int *status, int64_t *result, long *handled, long spin_ns);
"""


def build() -> Path:
    from cffi import FFI

    builder = FFI()
    builder.cdef(DECLARATIONS)
    builder.set_source("_trap_loop", (HERE / "trap_loop.c").read_text(), extra_compile_args=["-O2", "-Wall"])
    with tempfile.TemporaryDirectory() as scratch:
        built = Path(builder.compile(tmpdir=scratch, verbose=False))
        target = HERE / built.name
        target.write_bytes(built.read_bytes())
    return target


if __name__ == "__main__":
    try:
        print(f"built {build()}")
    except Exception as err:                      # the Python loop serves without it
        print(f"trap_build: the C trap loop was not built: {err}", file=sys.stderr)
        sys.exit(1)
