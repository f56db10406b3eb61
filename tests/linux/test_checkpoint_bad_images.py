"""mosrun -R / -I with damaged, truncated, tampered and foreign checkpoint files, and
the -O error messages of mosrun(1) — against one real checkpoint of a real program.

A bad file must be refused with the manual's "Corrupt or improper checkpoint file",
a non-zero exit, and nothing restored: no file of the program's opened (the -O
replacement is not even created), no bytes added to its old output, no process left.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import uuid
from pathlib import Path

import pytest
import xxhash

from mosix_core.image.stream import CorruptImage, ImageReader
from tests.helpers.checkpoints import (
    CORRUPT,
    FILES,
    HEADER,
    PAGES,
    RECORD,
    STEPS,
    Checkpoint,
    Record,
    messages,
    parse,
    wait_no_process_with,
)

pytestmark = pytest.mark.linux


def run_to_files(argv: list[str], env: dict[str, str], directory: Path, timeout: float = 60):
    """Run with stdout/stderr in regular files (a MOSIX process with an open pipe cannot be
    checkpointed or restored); (status, stdout, stderr path)."""
    tag = uuid.uuid4().hex[:8]
    out, err = directory / f"mosrun-{tag}.out", directory / f"mosrun-{tag}.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        done = subprocess.run(
            argv, env=env, cwd=directory, stdin=subprocess.DEVNULL, stdout=o, stderr=e, timeout=timeout
        )
    return done.returncode, out.read_text(errors="replace"), err


def record_bytes(kind: int, flags: int, payload: bytes) -> bytes:
    """A record with correct lengths and a correct checksum of its own."""
    fields = RECORD.pack(kind, flags, len(payload), len(payload), 0)[:12]
    return fields + struct.pack("<Q", xxhash.xxh3_64_intdigest(fields + payload))


def replaced(data: bytes, record: Record, payload: bytes) -> bytes:
    return data[: record.offset] + record_bytes(record.kind, record.flags, payload) + payload + data[record.end :]


def largest_pages(records: list[Record]) -> Record:
    return max((r for r in records if r.kind == PAGES), key=lambda r: len(r.payload))


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1 :]


def _tamper_pages(data: bytes, records: list[Record]) -> bytes:
    rec = largest_pages(records)
    return replaced(data, rec, flip(rec.payload, len(rec.payload) // 2))


def _tamper_files(data: bytes, records: list[Record]) -> bytes:
    rec = next(r for r in records if r.kind == FILES)
    payload, count = re.subn(rb'"pos":[1-9][0-9]*', b'"pos":0', rec.payload)
    assert count == 1
    return replaced(data, rec, payload)


def _drop_record(data: bytes, records: list[Record]) -> bytes:
    rec = [r for r in records if r.kind == PAGES][1]
    return data[: rec.offset] + data[rec.end :]


def _swap_records(data: bytes, records: list[Record]) -> bytes:
    first, second = [r for r in records if r.kind == PAGES][:2]
    assert first.end == second.offset
    return data[: first.offset] + data[second.offset : second.end] + data[first.offset : first.end] + data[second.end :]


def _header(version: int = 1, flags: int = 0) -> bytes:
    return HEADER.pack(b"MOSIXIMG", version, flags, 0)


BAD_IMAGES = {
    # damaged: a byte changed, nothing recomputed
    "corrupt-page-byte": lambda d, r: flip(
        d, largest_pages(r).offset + RECORD.size + len(largest_pages(r).payload) // 2
    ),
    "corrupt-record-header": lambda d, r: flip(d, r[0].offset + 4),
    "corrupt-magic": lambda d, r: flip(d, 3),
    "corrupt-end-record": lambda d, r: flip(d, len(d) - 3),
    # truncated
    "truncated-inside-header-8": lambda d, r: d[:8],
    "truncated-inside-header-15": lambda d, r: d[:15],
    "truncated-after-header": lambda d, r: d[: HEADER.size],
    "truncated-inside-record-header": lambda d, r: d[: r[1].offset + 7],
    "truncated-after-record-header": lambda d, r: d[: largest_pages(r).offset + RECORD.size],
    "truncated-mid-record": lambda d, r: d[
        : largest_pages(r).offset + RECORD.size + len(largest_pages(r).payload) // 2
    ],
    "truncated-just-before-end": lambda d, r: d[: r[-1].offset],
    "truncated-inside-end": lambda d, r: d[: len(d) - 5],
    # each record sound by its own checksum: only END's count and chained checksum can tell
    "tampered-page-data": _tamper_pages,
    "tampered-file-table": _tamper_files,
    "spliced-record-missing": _drop_record,
    "spliced-records-swapped": _swap_records,
    # not a checkpoint of this MOSIX at all
    "foreign-elf-binary": lambda d, r: Path(shutil.which("ls") or "/bin/ls").read_bytes(),
    "foreign-empty-file": lambda d, r: b"",
    "foreign-text-file": lambda d, r: b"This is not a checkpoint.\n" * 100,
    "foreign-other-version": lambda d, r: _header(version=1) + d[HEADER.size :],
    "foreign-unknown-flags": lambda d, r: _header(flags=0x80) + d[HEADER.size :],
}
ONLY_END_CATCHES = {"tampered-page-data", "tampered-file-table", "spliced-record-missing", "spliced-records-swapped"}


@pytest.fixture(params=sorted(BAD_IMAGES))
def bad_image(request, checkpoint_image, tmp_path) -> Path:
    data = BAD_IMAGES[request.param](checkpoint_image, parse(checkpoint_image))
    assert data != checkpoint_image
    path = tmp_path / f"bad-{request.param}"
    path.write_bytes(data)
    if request.param in ONLY_END_CATCHES:
        # Made right: every record passes its own checksum; the stream's END refuses it.
        with open(path, "rb") as f, pytest.raises(CorruptImage) as caught:
            for _ in ImageReader(f):
                pass
        assert caught.value.detail == "the image's records do not add up (truncated or spliced)"
    return path


def assert_nothing_restored(checkpoint: Checkpoint, replacement: Path, needle: str) -> None:
    wait_no_process_with(needle)  # the supervisor of the attempt, too
    wait_no_process_with(checkpoint.marker)
    assert not replacement.exists() or replacement.stat().st_size == 0
    assert checkpoint.out.read_bytes() == checkpoint.out_bytes
    assert checkpoint.err.read_bytes() == b""


# -- bad files ----------------------------------------------------------------------------------------------
def test_recover_refuses_a_bad_file_and_restores_nothing(checkpoint, bad_image, tmp_path):
    replacement = tmp_path / "restored-out.txt"
    status, stdout, stderr = run_to_files(["mosrun", f"-R{bad_image}", f"-O1={replacement}"], checkpoint.env, tmp_path)
    assert_nothing_restored(checkpoint, replacement, str(bad_image))
    text = stderr.read_text()  # read after the supervisor is gone: it writes last
    assert messages(text) == [CORRUPT], text
    assert status != 0
    assert stdout == ""


def test_inspect_refuses_a_bad_file(checkpoint, bad_image, tmp_path):
    status, stdout, stderr = run_to_files(["mosrun", f"-I{bad_image}"], checkpoint.env, tmp_path)
    text = stderr.read_text()
    assert messages(text) == [CORRUPT], text
    assert status != 0
    assert stdout == ""


# -- missing file -------------------------------------------------------------------------------------------
def test_recover_from_a_missing_file(mosrun_env, tmp_path):
    assert not os.path.exists("/nonexistent")
    status, stdout, stderr = run_to_files(["mosrun", "-R/nonexistent"], mosrun_env, tmp_path)
    assert messages(stderr.read_text()) == ["Could not restart with /nonexistent: No such file or directory"]
    assert status != 0 and stdout == ""


def test_inspect_a_missing_file(mosrun_env, tmp_path):
    assert not os.path.exists("/nonexistent")
    status, stdout, stderr = run_to_files(["mosrun", "-I/nonexistent"], mosrun_env, tmp_path)
    assert messages(stderr.read_text()) == ["Checkpoint file /nonexistent: No such file or directory"]
    assert status != 0 and stdout == ""


# -- -O errors ----------------------------------------------------------------------------------------------
def test_replacing_a_descriptor_that_was_not_open(checkpoint, tmp_path):
    replacement = tmp_path / "x"
    status, stdout, stderr = run_to_files(
        ["mosrun", f"-R{checkpoint.path}", f"-O7={replacement}"], checkpoint.env, tmp_path
    )
    assert_nothing_restored(checkpoint, replacement, f"-O7={replacement}")
    assert not replacement.exists()
    text = stderr.read_text()
    assert messages(text) == ["File-descriptor 7 was not open at the time of checkpoint!"], text
    assert status != 0 and stdout == ""


def test_replacement_file_that_cannot_be_created(checkpoint, tmp_path):
    assert not os.path.exists("/nonexistent-dir")
    status, stdout, stderr = run_to_files(
        ["mosrun", f"-R{checkpoint.path}", "-O1=/nonexistent-dir/x"], checkpoint.env, tmp_path
    )
    assert_nothing_restored(checkpoint, Path("/nonexistent-dir/x"), "-O1=/nonexistent-dir/x")
    text = stderr.read_text()
    assert messages(text) == [
        "Could not restore file-descriptor 1 with \u2018/nonexistent-dir/x\u2019: No such file or directory"
    ], text
    assert status != 0 and stdout == ""


# -- good recovery and inspection ---------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["comma", "separator"])
def test_recovery_continues_in_the_replacement_file(checkpoint, tmp_path, form):
    if form == "comma":
        new_out, new_err = tmp_path / "new-out.txt", None
        options = [f"-O1={new_out}"]
    else:
        new_out, new_err = tmp_path / "new,out,with,commas.txt", tmp_path / "new,err.txt"
        options = [f"-O@1={new_out}@2={new_err}"]
    status, stdout, stderr = run_to_files(["mosrun", f"-R{checkpoint.path}", *options], checkpoint.env, tmp_path)
    wait_no_process_with(checkpoint.marker)
    assert (status, stdout, stderr.read_text()) == (0, "", "")
    data = new_out.read_bytes()
    offset = len(checkpoint.out_bytes)
    assert len(data) > offset
    assert data[:offset] == bytes(offset)  # a hole up to the checkpointed offset
    expected = [f"line {i} pid {checkpoint.pid}" for i in range(checkpoint.lines_before, STEPS)] + ["done"]
    assert data[offset:].decode().splitlines() == expected
    if new_err is not None:
        assert new_err.read_bytes() == b""
    # the files the program had are left alone when replaced
    assert checkpoint.out.read_bytes() == checkpoint.out_bytes
    assert checkpoint.err.read_bytes() == b""


def test_inspect_lists_the_open_files(checkpoint, tmp_path):
    status, stdout, stderr = run_to_files(["mosrun", f"-I{checkpoint.path}"], checkpoint.env, tmp_path)
    assert (status, stderr.read_text()) == (0, "")
    lines = stdout.splitlines()
    assert lines[0].startswith(f"Checkpoint of process {checkpoint.pid}: python3 -c ")
    heading = next(i for i, line in enumerate(lines) if line.split()[:3] == ["fd", "mode", "offset"])
    rows = {}
    for line in lines[heading + 1 :]:
        fd, mode, offset, kind, flags, path = line.split(None, 5)
        rows[int(fd)] = (mode, int(offset), kind, flags, path)
    assert sorted(rows) == [0, 1, 2]
    assert rows[0] == ("read-write", 0, "special", "O_RDWR", "/dev/null")
    assert rows[1] == ("write", len(checkpoint.out_bytes), "file", "O_WRONLY", str(checkpoint.out))
    assert rows[1][1] == checkpoint.out.stat().st_size
    assert rows[2] == ("write", 0, "file", "O_WRONLY", str(checkpoint.err))
