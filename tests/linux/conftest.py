"""Shared set-up for the tests that run real programs under mosrun."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROGRAMS = Path(__file__).parent / "programs"

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
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def programs(tmp_path_factory) -> Path:
    """Our C test programs (tests/linux/programs/*.c), compiled once per run."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the test programs (scripts/install.sh installs it)")
    out = tmp_path_factory.mktemp("programs")
    for source in sorted(PROGRAMS.glob("*.c")):
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out / source.stem), str(source)], check=True)
    os.chmod(out, 0o755)
    return out


@pytest.fixture
def mosrun_env(tmp_path) -> dict[str, str]:
    """An environment for running mosrun as a user of a stock Debian would: its default
    locale (C.UTF-8), our tools first on PATH, no MOSIX configuration."""
    env = dict(os.environ)
    env.pop("LC_ALL", None)
    env.update(LANG="C.UTF-8", PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}", MOSIX_ETC=str(tmp_path / "no-etc"))
    return env


def run(argv, env, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("timeout", 60)
    return subprocess.run(argv, env=env, capture_output=True, text=True, **kwargs)


def wait_until(condition, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def start(argv, env, cwd: Path, out: Path) -> subprocess.Popen:
    with open(out, "wb") as stdout, open(cwd / "stderr.txt", "ab") as stderr:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)


def native_output(argv, cwd: Path, env) -> bytes:
    return subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=120, check=True).stdout


def stop_traced(pid: int):
    """Stop ``pid`` (seized by us) at an interrupt stop, letting its signals through on
    the way; a copy of its registers there."""
    from mosix_core.linux import inject, ptrace

    ptrace.interrupt(pid)
    while (stop := ptrace.wait_for(pid)).kind != "event":
        ptrace.cont(pid, stop.sig if stop.kind == "signal" else 0)
    return inject.copy_registers(ptrace.get_regs(pid))

