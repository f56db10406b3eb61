"""Running real programs in the tests, natively or under mosrun, and watching what they
write: the installed tools' directory, a reader of the mosix(7) ``/proc/self`` files, a
hand-made 32-bit program, and waiting on a condition or on lines of output."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from pathlib import Path

#: the directory of the installed ``mos*`` tools (the virtual environment's bin/)
BIN = Path(sys.executable).parent

# A python3 -c script: reads MOSIX run-time parameters through the mosix(7) programming
# interface and prints them as JSON (the value, or the errno's name: ENOENT outside mosrun).
PROCSELF_READER = """\
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
values = {}
for name in sys.argv[1:]:
    got = libc.open(("/proc/self/" + name).encode(), 0)
    values[name] = got if got >= 0 else errno.errorcode[ctypes.get_errno()]
# one write: jobs run side by side share the pipe, and an unbuffered print (PYTHONUNBUFFERED)
# writes the line and its newline apart
os.write(1, (json.dumps(values) + "\\n").encode())
"""


def run(argv, env, **kwargs) -> subprocess.CompletedProcess:
    """Run to its end (60 s at most unless told), output captured as text."""
    kwargs.setdefault("timeout", 60)
    return subprocess.run(argv, env=env, capture_output=True, text=True, **kwargs)


def start(argv, env, cwd: Path, out: Path) -> subprocess.Popen:
    """Start in ``cwd`` with stdout in ``out`` and stderr added to ``cwd/stderr.txt``."""
    with open(out, "wb") as stdout, open(cwd / "stderr.txt", "ab") as stderr:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)


def native_output(argv, cwd: Path, env) -> bytes:
    """What a native run writes to stdout (it must succeed)."""
    return subprocess.run(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=120, check=True
    ).stdout


def wait_until(condition, timeout: float = 30.0, what: str = "condition"):
    """Poll ``condition`` until it is true; its value."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return result


def lines(path: Path) -> int:
    """The lines written to ``path`` so far (0 before it exists)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def elf32(directory: Path) -> Path:
    """A minimal static 32-bit x86 program: write(1, "hi\\n", 3); exit(0) through int 0x80."""
    base, code_at = 0x08048000, 52 + 32
    msg_at = base + code_at + 31
    code = (
        b"\xb8\x04\x00\x00\x00"
        + b"\xbb\x01\x00\x00\x00"
        + b"\xb9"
        + struct.pack("<I", msg_at)
        + b"\xba\x03\x00\x00\x00"
        + b"\xcd\x80"
        + b"\xb8\x01\x00\x00\x00"
        + b"\x31\xdb"
        + b"\xcd\x80"
    )
    assert len(code) == 31
    body = code + b"hi\n"
    size = code_at + len(body)
    header = (
        b"\x7fELF\x01\x01\x01"
        + b"\0" * 9
        + struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, base + code_at, 52, 0, 0, 52, 32, 1, 0, 0, 0)
    )
    phdr = struct.pack("<IIIIIIII", 1, 0, base, base, size, size, 5, 0x1000)
    path = directory / "hello32"
    path.write_bytes(header + phdr + body)
    path.chmod(0o755)
    return path
