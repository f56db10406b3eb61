"""Issue 17, item 12: a checkpoint edited and re-checksummed — any field of any record
out of range — or cut short anywhere is refused with the manual's "Corrupt or improper
checkpoint file", promptly, with a non-zero exit and nothing left running.

Each case edits one field of one record of a real checkpoint of a real program, puts
a correct checksum on the record and a correct END (count and chained checksum) on the
stream, so only the restorer's own checks stand between the value and the kernel. A
mapping at 2^64 used to make ``mosrun -R`` spin forever (the address wrapped to 0 in
a register and the new mapping covered the restorer's own code), others died by
SIGKILL or with the kernel's error for a call made half-way.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import xxhash

from tests.helpers.checkpoints import (
    CORRUPT,
    END,
    HEADER,
    PAGES,
    RECORD,
    Checkpoint,
    Record,
    messages,
    parse,
    processes_with,
    wait_no_process_with,
)

pytestmark = pytest.mark.linux

PROCESS, REGISTERS, XSTATE, MEMORY_MAP, FILES, SIGNALS, RSEQ, LIMITS = 1, 2, 3, 4, 6, 7, 8, 9
PAGE = 4096
USER_LIMIT = 0x7FFF_FFFF_F000
PROMPTLY = 10.0  # seconds: a refusal is a matter of reading the file

#: values no address may have (each case picks those that are wrong for its field)
ADDRESSES = {
    "zero": 0,
    "negative": -4096,
    "2^63": 1 << 63,
    "2^64-4096": (1 << 64) - 4096,
    "2^64": 1 << 64,
    "2^64+4096": (1 << 64) + 4096,
    "limit": USER_LIMIT,
    "unaligned": 0x7F00_0000_0001,
}
NUMBERS = {"negative": -1, "2^63": 1 << 63, "2^64": 1 << 64, "string": "1", "null": None}


# -- writing an image: records edited, the stream's END made right -------------------------------------
def assemble(data: bytes, records: list[Record], payloads: dict[int, bytes | None]) -> bytes:
    """The image with record ``i``'s payload replaced by ``payloads[i]`` (None: dropped),
    every record checksummed and a correct END after them."""
    out = bytearray(data[: HEADER.size])
    chain = xxhash.xxh3_64(data[: HEADER.size])
    count = 0
    for i, rec in enumerate(records):
        if rec.kind == END:
            break
        payload = payloads.get(i, rec.payload)
        if payload is None:
            continue
        fields = RECORD.pack(rec.kind, 0, len(payload), len(payload), 0)[:12]  # parse(): not compressed
        head = fields + struct.pack("<Q", xxhash.xxh3_64_intdigest(fields + payload))
        chain.update(head)
        out += head + payload
        count += 1
    end = struct.pack("<QQ", count, chain.intdigest())
    fields = RECORD.pack(END, 0, len(end), len(end), 0)[:12]
    out += fields + struct.pack("<Q", xxhash.xxh3_64_intdigest(fields + end)) + end
    return bytes(out)


def first(records: list[Record], kind: int) -> int:
    return next(i for i, r in enumerate(records) if r.kind == kind)


def edit_json(kind: int, change: Callable[[Any], None]) -> Callable[[bytes, list[Record]], bytes]:
    def edit(data: bytes, records: list[Record]) -> bytes:
        i = first(records, kind)
        value = json.loads(records[i].payload)
        change(value)
        return assemble(data, records, {i: json.dumps(value).encode()})

    return edit


def edit_raw(kind: int, change: Callable[[bytearray], bytes | bytearray]) -> Callable[[bytes, list[Record]], bytes]:
    def edit(data: bytes, records: list[Record]) -> bytes:
        i = first(records, kind)
        return assemble(data, records, {i: bytes(change(bytearray(records[i].payload)))})

    return edit


def setter(path: tuple, value: Any) -> Callable[[Any], None]:
    def change(obj: Any) -> None:
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value

    return change


def mapping_index(kind: str) -> Callable[[list], int]:
    def find(mappings: list) -> int:
        return next(i for i, m in enumerate(mappings) if m["kind"] == kind)

    return find


def edit_mapping(kind: str, change: Callable[[dict, list], None]) -> Callable[[bytes, list[Record]], bytes]:
    def layout_change(layout: dict) -> None:
        mappings = layout["mappings"]
        change(mappings[mapping_index(kind)(mappings)], mappings)

    return edit_json(MEMORY_MAP, layout_change)


def register_offset(name: str) -> int:
    from mosix_core.linux.ptrace import Registers

    return getattr(Registers, name).offset


def set_u64(offset: int, value: int) -> Callable[[bytearray], bytearray]:
    def change(raw: bytearray) -> bytearray:
        struct.pack_into("<Q", raw, offset, value & ((1 << 64) - 1))
        return raw

    return change


def page_record(address: int, length: int = PAGE) -> Callable[[bytes, list[Record]], bytes]:
    """The largest page record moved to ``address`` (``length`` bytes of it)."""

    def edit(data: bytes, records: list[Record]) -> bytes:
        i = max((i for i, r in enumerate(records) if r.kind == PAGES), key=lambda i: len(records[i].payload))
        payload = struct.pack("<Q", address & ((1 << 64) - 1)) + records[i].payload[8 : 8 + length]
        return assemble(data, records, {i: payload})

    return edit


# -- the cases: every field of every record kind ----------------------------------------------------------
def cases() -> dict[str, Callable[[bytes, list[Record]], bytes]]:
    found: dict[str, Callable[[bytes, list[Record]], bytes]] = {}

    # memory map: each kind of mapping, its addresses, protection, file offset, kind
    for kind in ("file", "anon", "heap", "stack", "kernel"):
        for name, value in ADDRESSES.items():
            found[f"map-{kind}-start-{name}"] = edit_mapping(kind, lambda m, _, v=value: m.update(start=v))
            if value != USER_LIMIT:  # a mapping may end there
                found[f"map-{kind}-end-{name}"] = edit_mapping(kind, lambda m, _, v=value: m.update(end=v))
        found[f"map-{kind}-empty"] = edit_mapping(kind, lambda m, _: m.update(end=m["start"]))
        found[f"map-{kind}-backwards"] = edit_mapping(kind, lambda m, _: m.update(end=m["start"] - PAGE))
        found[f"map-{kind}-perms"] = edit_mapping(kind, lambda m, _: m.update(perms="rwxq"))
        found[f"map-{kind}-perms-type"] = edit_mapping(kind, lambda m, _: m.update(perms=7))
        found[f"map-{kind}-string-start"] = edit_mapping(kind, lambda m, _: m.update(start=str(m["start"])))
    found["map-file-offset-negative"] = edit_mapping("file", lambda m, _: m.update(offset=-PAGE))
    found["map-file-offset-unaligned"] = edit_mapping("file", lambda m, _: m.update(offset=m["offset"] + 1))
    found["map-file-offset-2^64"] = edit_mapping("file", lambda m, _: m.update(offset=1 << 64))
    found["map-file-offset-2^63"] = edit_mapping("file", lambda m, _: m.update(offset=1 << 63))
    found["map-file-relative-path"] = edit_mapping("file", lambda m, _: m.update(path="lib/x.so"))
    found["map-anon-shared"] = edit_mapping("anon", lambda m, _: m.update(perms=m["perms"][:3] + "s"))
    found["map-kind-unknown"] = edit_mapping("anon", lambda m, _: m.update(kind="device"))
    found["map-kernel-other-path"] = edit_mapping("kernel", lambda m, _: m.update(path="/etc/passwd"))
    found["map-overlapping"] = edit_mapping("heap", lambda m, all_: m.update(start=all_[all_.index(m) - 1]["start"]))
    found["map-below-lowest"] = edit_mapping("anon", lambda m, _: m.update(start=0, end=PAGE))
    found["map-huge-count"] = edit_json(
        MEMORY_MAP,
        lambda layout: layout["mappings"].extend(
            [{"start": USER_LIMIT - PAGE, "end": USER_LIMIT, "kind": "anon", "perms": "rw-p", "path": ""}] * 70000
        ),
    )
    found["map-not-a-list"] = edit_json(MEMORY_MAP, setter(("mappings",), {"start": 0}))
    for field in ("start_code", "end_code", "brk", "arg_start", "env_end", "start_stack"):
        for name, value in {**ADDRESSES, "string": "1"}.items():
            if name != "unaligned":
                found[f"mm-{field}-{name}"] = edit_json(MEMORY_MAP, setter(("mm", field), value))
    found["mm-code-backwards"] = edit_json(
        MEMORY_MAP, lambda layout: layout["mm"].update(end_code=layout["mm"]["start_code"])
    )
    found["mm-auxv-huge"] = edit_json(MEMORY_MAP, setter(("mm", "auxv"), "00" * 8192))
    found["mm-auxv-odd"] = edit_json(MEMORY_MAP, setter(("mm", "auxv"), "00" * 17))
    found["mm-auxv-not-hex"] = edit_json(MEMORY_MAP, setter(("mm", "auxv"), "zz"))

    # page data: where it goes and how much
    for name, value in ADDRESSES.items():
        found[f"pages-at-{name}"] = page_record(value)
    found["pages-at-2^64-4096-two-pages"] = page_record((1 << 64) - PAGE, 2 * PAGE)
    found["pages-outside-the-map"] = page_record(0x1000_0000_0000)
    found["pages-short"] = page_record(0x1000_0000_0000, 100)

    # registers: addresses, segments, size
    for reg in ("rip", "rsp", "fs_base", "gs_base"):
        for name, value in ADDRESSES.items():
            if value in (0, 0x7F00_0000_0001) and reg in ("fs_base", "gs_base"):
                continue  # no TLS, or an odd one: both are a program's right
            if value == 0x7F00_0000_0001 or value >= 1 << 64:
                continue  # code and stacks may be anywhere; a register has 64 bits
            found[f"regs-{reg}-{name}"] = edit_raw(REGISTERS, set_u64(register_offset(reg), value))
    for reg, value in (("cs", 0x23), ("cs", 0), ("ss", 0x33), ("ds", 0x63), ("fs", 0xFFFF), ("gs", 0x10)):
        found[f"regs-{reg}-{value:#x}"] = edit_raw(REGISTERS, set_u64(register_offset(reg), value))
    found["regs-short"] = edit_raw(REGISTERS, lambda raw: raw[:-8])
    found["regs-long"] = edit_raw(REGISTERS, lambda raw: raw + bytes(8))

    # FP state
    found["xstate-short"] = edit_raw(XSTATE, lambda raw: raw[:-64])
    found["xstate-long"] = edit_raw(XSTATE, lambda raw: raw + bytes(64))
    found["xstate-empty"] = edit_raw(XSTATE, lambda raw: b"")
    found["xstate-features"] = edit_raw(XSTATE, set_u64(512, 1 << 62))
    found["xstate-compacted"] = edit_raw(XSTATE, set_u64(520, 1 << 63 | 3))
    found["xstate-reserved"] = edit_raw(XSTATE, set_u64(540, 1))

    def mxcsr(raw: bytearray) -> bytearray:
        struct.pack_into("<I", raw, 24, 0xFFFF_FFFF)
        return raw

    found["xstate-mxcsr"] = edit_raw(XSTATE, mxcsr)

    # the process record
    for field, values in (
        ("pid", {"zero": 0, **NUMBERS, "huge": 1 << 40}),
        ("umask", {**NUMBERS, "too-big": 0o1000}),
        ("personality", {**NUMBERS, "query": 0xFFFF_FFFF}),
        ("cwd", {"relative": "tmp", "number": 5, "nul": "/tmp\0x", "null": None}),
        ("exe", {"relative": "python3", "number": 5, "long": "/" + "x" * 5000}),
        ("cmdline", {"string": "python3", "numbers": [1, 2]}),
    ):
        for name, value in values.items():
            found[f"process-{field}-{name}"] = edit_json(PROCESS, setter((field,), value))
    for name, value in ADDRESSES.items():
        if value:  # 0: no robust list
            found[f"process-robust-list-{name}"] = edit_json(PROCESS, setter(("robust_list", 0), value))
    found["process-robust-list-length"] = edit_json(PROCESS, setter(("robust_list", 1), 1 << 40))
    found["process-robust-list-short"] = edit_json(PROCESS, setter(("robust_list",), [0]))
    for name, value in (
        ("not-list", 5),
        ("short", [[4096]]),
        ("empty", [[8192, 8192]]),
        ("kernel", [[4096, 1 << 63]]),
        ("strings", [["a", "b"]]),
        ("many", [[4096, 8192]] * 70000),
    ):
        found[f"process-converted-{name}"] = edit_json(PROCESS, setter(("converted",), value))
    for field, value in (
        ("needmem", -1),
        ("needmem", 1 << 64),
        ("checkpoint_interval", "5"),
        ("lock", 1.5),
        ("checkpoint_file", 7),
        ("decayrate", None),
    ):
        found[f"process-mosix-{field}-{value!r}"] = edit_json(PROCESS, setter(("mosix", field), value))
    found["process-mosix-not-object"] = edit_json(PROCESS, setter(("mosix",), [1]))

    # signals: the actions, the alternate stack, the mask, pending signals, timers
    for sig in ("0", "65", "-1", "x", "9999999999999999999999"):
        found[f"signals-action-for-{sig}"] = edit_json(SIGNALS, setter(("actions", sig), [0, 0, 0, 0]))
    for index, field in enumerate(("handler", "flags", "restorer", "mask")):
        for name, value in ADDRESSES.items():
            if field in ("handler", "restorer") and name in ("zero", "unaligned"):
                continue  # SIG_DFL, no restorer; code may be at any byte
            if field == "mask" and 0 <= value < 1 << 64:
                continue  # any set of signals is a mask
            if field == "flags" and value == 0:
                continue
            found[f"signals-action-{field}-{name}"] = edit_json(SIGNALS, setter(("actions", "2", index), value))
    found["signals-action-short"] = edit_json(SIGNALS, setter(("actions", "2"), [0, 0]))
    for index, field in enumerate(("sp", "flags", "size")):
        for name, value in {**ADDRESSES, "string": "1"}.items():
            if field == "sp" and value == 0 or name == "unaligned" or field == "flags" and value == 0:
                continue  # no alignment is asked of an alternate stack; 0: enabled
            found[f"signals-altstack-{field}-{name}"] = edit_json(
                SIGNALS,
                lambda s, i=index, v=value: s.update(
                    altstack=[[0x10000, 0, 8192][j] if j != i else v for j in range(3)]
                ),
            )
    found["signals-altstack-tiny"] = edit_json(SIGNALS, setter(("altstack",), [0x10000, 0, 16]))
    for name, value in NUMBERS.items():
        if name != "2^63":
            found[f"signals-mask-{name}"] = edit_json(SIGNALS, setter(("mask",), value))
    for sig in (0, 65, -1):
        info = struct.pack("<iii", sig, 0, 0).ljust(128, b"\0").hex()
        found[f"signals-pending-{sig}"] = edit_json(SIGNALS, setter(("pending",), [info]))
        found[f"signals-shared-pending-{sig}"] = edit_json(SIGNALS, setter(("shared_pending",), [info]))
    found["signals-pending-short"] = edit_json(SIGNALS, setter(("pending",), ["0a00"]))
    found["signals-pending-not-hex"] = edit_json(SIGNALS, setter(("pending",), ["xyz"]))
    found["signals-pending-flood"] = edit_json(
        SIGNALS, setter(("pending",), [struct.pack("<iii", 10, 0, 0).ljust(128, b"\0").hex()] * 70000)
    )
    for name, timer in (
        ("usec", [0, 1_000_000, 0, 0]),
        ("negative", [-1, 0, 0, 0]),
        ("2^64", [0, 0, 1 << 64, 0]),
        ("short", [0, 0]),
    ):
        found[f"signals-itimer-{name}"] = edit_json(SIGNALS, setter(("itimers", 0), timer))

    # rseq
    for name, value in ADDRESSES.items():
        if value:
            found[f"rseq-pointer-{name}"] = edit_json(RSEQ, setter(("pointer",), value))
    for name, value in {"zero": 0, "small": 8, **NUMBERS, "huge": 1 << 40}.items():
        found[f"rseq-size-{name}"] = edit_json(RSEQ, setter(("size",), value))
    for name, value in NUMBERS.items():
        found[f"rseq-signature-{name}"] = edit_json(RSEQ, setter(("signature",), value))
    found["rseq-flags"] = edit_json(RSEQ, setter(("flags",), 1))

    # limits
    for name, value in {
        "soft-above-hard": [100, 10],
        "2^64": [1 << 64, 1 << 64],
        "negative": [-5, -5],
        "string": ["1", "1"],
        "short": [1],
    }.items():
        found[f"limits-nofile-{name}"] = edit_json(LIMITS, setter(("RLIMIT_NOFILE",), value))

    # the open files
    for field, values in (
        ("fd", {**NUMBERS, "too-big": 1 << 30}),
        ("flags", {**NUMBERS, "unknown": 1 << 40}),
        ("pos", {**NUMBERS}),
        ("path", {"relative": "out.txt", "number": 3, "nul": "/tmp/a\0b"}),
        ("kind", {"unknown": "socket", "number": 1}),
        ("cloexec", {"number": 2, "string": "yes"}),
    ):
        for name, value in values.items():
            if field == "fd" and name == "2^63":
                continue
            found[f"files-{field}-{name}"] = edit_json(FILES, setter((1, field), value))
    found["files-same-fd-twice"] = edit_json(FILES, setter((2, "fd"), 1))
    found["files-not-a-list"] = edit_json(FILES, lambda files: files.__setitem__(slice(None), [[1, 2]]))
    return found


CASES = cases()


def run_recovery(bad: Path, checkpoint: Checkpoint, directory: Path) -> tuple[int | None, str, float]:
    """mosrun -R on ``bad``: (status — None if it did not end promptly —, stderr, seconds)."""
    err = directory / "err"
    started = time.monotonic()
    # a case that restores after all writes to files of its own, not to the checkpoint's
    replacing = f"-O@1={directory / 'restored-out'}@2={directory / 'restored-err'}"
    with open(directory / "out", "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(
            ["mosrun", f"-R{bad}", replacing],
            env=checkpoint.env,
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=o,
            stderr=e,
        )
        try:
            status = proc.wait(timeout=PROMPTLY)
        except subprocess.TimeoutExpired:
            status = None
    elapsed = time.monotonic() - started
    if status is None:  # leave nothing of it spinning for the tests after
        for pid, _ in processes_with(str(bad)) + processes_with(checkpoint.marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        proc.wait()
    return status, err.read_text(errors="replace"), elapsed


def assert_refused(bad: Path, checkpoint: Checkpoint, directory: Path) -> None:
    status, text, elapsed = run_recovery(bad, checkpoint, directory)
    assert status is not None, f"mosrun -R still ran after {PROMPTLY} s (stderr: {text!r})"
    wait_no_process_with(str(bad))  # its supervisor too: it writes the message last
    wait_no_process_with(checkpoint.marker)  # no restored process
    text = (directory / "err").read_text(errors="replace")
    assert messages(text) == [CORRUPT], f"status {status}: {text!r}"
    assert status not in (0, -signal.SIGKILL, 128 + signal.SIGKILL), status
    assert status > 0, status
    assert elapsed < PROMPTLY
    for name in ("restored-out", "restored-err"):  # nothing of it ran
        assert not (directory / name).exists() or (directory / name).stat().st_size == 0
    assert checkpoint.out.read_bytes() == checkpoint.out_bytes


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_field_out_of_range_is_a_corrupt_image(case, checkpoint, checkpoint_image, tmp_path):
    records = parse(checkpoint_image)
    data = CASES[case](checkpoint_image, records)
    assert data != checkpoint_image
    parse(data)  # every checksum is right: only the values are wrong
    bad = tmp_path / f"bad-{case}"
    bad.write_bytes(data)
    assert_refused(bad, checkpoint, tmp_path)
    if case.startswith(("files-", "process-")):  # what mosrun -I shows of a checkpoint
        shown = subprocess.run(
            ["mosrun", f"-I{bad}"], env=checkpoint.env, capture_output=True, text=True, timeout=PROMPTLY
        )
        assert (shown.returncode != 0, messages(shown.stderr), shown.stdout) == (True, [CORRUPT], "")


def truncation_offsets(image: bytes, *, every_page_record: bool) -> list[int]:
    """Around every record boundary and inside every record (of page records, the first
    and last few unless ``every_page_record``), and spread evenly over the file."""
    records = parse(image)
    pages = [i for i, r in enumerate(records) if r.kind == PAGES]
    offsets = {1, HEADER.size - 1, HEADER.size, HEADER.size + 1}
    for i, rec in enumerate(records):
        if rec.kind == PAGES and not every_page_record and i not in pages[:3] + pages[-3:]:
            continue
        for delta in (-1, 0, 1, RECORD.size - 1, RECORD.size, RECORD.size + 1, RECORD.size + 8):
            offsets.add(rec.offset + delta)
        offsets.add(rec.offset + RECORD.size + len(rec.payload) // 2)
    offsets.update(range(0, len(image), max(1, len(image) // 40)))
    return sorted(o for o in offsets if 0 < o < len(image))


def test_an_image_cut_short_anywhere_is_a_corrupt_image(checkpoint, checkpoint_image, tmp_path):
    # MOSIX_TRUNCATION_ALL=1: every page record too (~2 min on 2 CPUs instead of ~40 s)
    offsets = truncation_offsets(checkpoint_image, every_page_record=bool(os.environ.get("MOSIX_TRUNCATION_ALL")))
    assert len(offsets) > 100
    for offset in offsets:
        bad = tmp_path / f"cut-at-{offset}"
        bad.write_bytes(checkpoint_image[:offset])
        try:
            assert_refused(bad, checkpoint, tmp_path)
        except AssertionError as err:
            raise AssertionError(f"cut at {offset} of {len(checkpoint_image)}: {err}") from None
        bad.unlink()
