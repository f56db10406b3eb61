"""One real checkpoint of a real program, and the checkpoint file's format spelled out
independently of mosix_core/image/stream.py: what the tests of damaged and edited images
(tests/linux/test_checkpoint_bad_images.py, tests/security/test_bad_images.py) start
from. The ``checkpoint`` and ``checkpoint_image`` fixtures (tests/helpers/fixtures.py)
make one per test module."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import xxhash

from tests.helpers.programs import BIN

CORRUPT = "Corrupt or improper checkpoint file"
STEPS = 200
TIMEOUT = 30

# The checkpointed program: its pid in a file first, then a counter every 50 ms (time.sleep
# is refused under mosrun, select's timeout is not). MARKER makes its command line unique,
# so a leftover (half-)restored process can be found in /proc.
PROGRAM = """\
import os, select, sys
MARKER = "{marker}"
with open("pid", "w") as f:
    f.write(str(os.getpid()))
for i in range({steps}):
    print("line", i, "pid", os.getpid(), flush=True)
    select.select([], [], [], 0.05)
print("done", flush=True)
"""

# The image format (mosix_core/image/stream.py), spelled out independently here.
HEADER = struct.Struct("<8sHHI")
RECORD = struct.Struct("<HHIIQ")
PAGES, FILES, END = 5, 6, 0xFFFF


@dataclass
class Record:
    offset: int
    kind: int
    flags: int
    raw_len: int
    payload: bytes

    @property
    def end(self) -> int:
        return self.offset + RECORD.size + len(self.payload)


@dataclass
class Checkpoint:
    directory: Path
    pid: int
    path: Path
    out: Path
    err: Path
    out_bytes: bytes
    env: dict[str, str]
    marker: str

    @property
    def lines_before(self) -> int:
        return len(self.out_bytes.decode().splitlines())


def parse(data: bytes) -> list[Record]:
    """An image's records, each checked against its own checksum."""
    magic, version, flags, _ = HEADER.unpack_from(data)
    assert (magic, version, flags) == (b"MOSIXIMG", 2, 0)
    records, offset = [], HEADER.size
    while offset < len(data):
        kind, rflags, raw_len, stored_len, check = RECORD.unpack_from(data, offset)
        payload = data[offset + RECORD.size : offset + RECORD.size + stored_len]
        assert xxhash.xxh3_64_intdigest(data[offset : offset + 12] + payload) == check
        records.append(Record(offset, kind, rflags, raw_len, payload))
        offset += RECORD.size + stored_len
    assert offset == len(data) and records[-1].kind == END
    return records


def environment(no_etc: Path) -> dict[str, str]:
    """As the ``mosrun_env`` fixture (which is per test; this one serves the module's fixture)."""
    env = dict(os.environ)
    env.pop("LC_ALL", None)
    env.update(LANG="C.UTF-8", PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}", MOSIX_ETC=str(no_etc))
    return env


def _wait_until(condition, what: str, timeout: float = TIMEOUT, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while True:
        got = condition()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            got = condition()
            if got:
                return got
            pytest.fail(f"the program ended (status {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def messages(text: str) -> list[str]:
    """stderr's lines, without the ``mosrun: `` that mosrun itself puts before its messages
    (those from the supervisor have none)."""
    return [line.removeprefix("mosrun: ") for line in text.splitlines()]


def processes_with(needle: str) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle.encode() in cmdline:
            found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]))
    return found


def wait_no_process_with(needle: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while (left := processes_with(needle)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes left behind: {left}"


# -- the good checkpoint --------------------------------------------------------------------------------
def make_checkpoint(directory: Path) -> Checkpoint:
    """A real checkpoint of a real program: PROGRAM run under mosrun in ``directory``,
    checkpointed and ended by ``mosmigrate PID chkexit`` after a few lines."""
    env = environment(directory / "no-etc")
    marker = f"ckpt-bad-images-{uuid.uuid4().hex}"
    out, err = directory / "out.txt", directory / "err.txt"
    script = PROGRAM.format(marker=marker, steps=STEPS)
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(
            ["mosrun", "python3", "-c", script], env=env, cwd=directory, stdin=subprocess.DEVNULL, stdout=o, stderr=e
        )
    try:
        pid_file = directory / "pid"
        pid = int(_wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), "the pid file", proc=proc))
        _wait_until(lambda: out.read_bytes().count(b"\n") >= 5, "a few lines of output", proc=proc)
        # the leftover-process check below finds the program by its command line
        assert pid in [found for found, _ in processes_with(marker)]
        migrate = subprocess.run(
            ["mosmigrate", str(pid), "chkexit"], env=env, capture_output=True, text=True, timeout=TIMEOUT
        )
        assert migrate.returncode == 0, migrate.stderr
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    path = directory / f"ckpt.{pid}.1"
    assert path.exists(), f"no checkpoint file; mosrun said: {err.read_text()!r}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    out_bytes = out.read_bytes()
    assert b"done" not in out_bytes, "the program ran to its end instead of exiting at the checkpoint"
    assert err.read_text() == ""
    wait_no_process_with(marker)
    return Checkpoint(directory, pid, path, out, err, out_bytes, env, marker)
