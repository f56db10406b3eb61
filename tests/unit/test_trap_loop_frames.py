"""The C trap loop's steps (mosix_core/remote/trap_loop.c) through a harness
(tests/c/trap_loop_frames.c) compiled with the loop's own flags and, where the compiler
has them, the address and undefined-behaviour sanitizers. Fed hand-made reply frames, a
good reply is taken whole and every malformed one is refused with the right verdict —
without a read past the bytes it came in (a sanitizer would end the harness). The
requests it builds are those frames.py decodes."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import attrs
import pytest

from mosix_core.remote import trap_build
from mosix_core.remote.calls import MAX_TRANSFER, Reply, Request
from mosix_core.remote.frames import MAX_FRAME, decode, encode_control, encode_reply, encode_signal

HARNESS = Path(__file__).resolve().parents[1] / "c" / "trap_loop_frames.c"
SANITIZERS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
ROOM = MAX_FRAME + 8  # what fastpath.TrapLoop gives the loop
PENDING_ROOM = 1 << 20
PIECE = 256 << 10  # trap_loop.c pours a reply above this into the guest as it comes
EPROTO, ECONNRESET, ENOBUFS, EFAULT = 71, 104, 105, 14
FILLER = b"\xee"  # the guest's memory before the reply
BUFFER = os.sysconf("SC_PAGE_SIZE")  # where the harness's guest has its buffer
SYS_READ, SYS_WRITE, SYS_ACCESS, SYS_GETPPID = 0, 1, 21, 110


@attrs.frozen
class Verdict:
    verdict: str
    error: int
    result: int
    memory: bytes  # the guest's buffer, and 16 bytes past it
    pending: bytes
    frame: bytes  # a request built: its head
    streamed: int  # and the bytes of its input that follow it


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler: the C trap loop is not built either")
    binary = tmp_path_factory.mktemp("trap") / "trap_loop_frames"
    defines = [f"-D{name}={value}" for name, value in trap_build.macros()]
    base = [compiler, *trap_build.COMPILE_ARGS, *defines, f"-I{trap_build.HERE}", str(HARNESS), "-o", str(binary)]
    built = subprocess.run(base[:1] + SANITIZERS + base[1:], capture_output=True, text=True)
    if built.returncode != 0:  # no sanitizer runtime: the verdicts are still checked
        print(f"built without sanitizers: {built.stderr}", file=sys.stderr)
        built = subprocess.run(base, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return binary


def run(
    harness: Path,
    mode: str,
    data: bytes,
    kind: str = "out",
    capacity: int = 144,
    room: int = ROOM,
    pending_room: int = PENDING_ROOM,
) -> Verdict:
    """The harness's verdict on ``data``: in mode "receive" sent on a socket (then
    closed), in mode "take" one reply body handed over whole."""
    command = [str(harness), mode, kind, str(capacity), str(room), str(pending_room)]
    env = {"ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=99", "UBSAN_OPTIONS": "halt_on_error=1"}
    if mode in ("take", "build"):
        done = subprocess.run(command, input=data, capture_output=True, env=env, timeout=60)
    else:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            proc = subprocess.Popen(command, stdin=theirs, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            theirs.close()

            def feed() -> None:
                try:
                    ours.sendall(data)
                    ours.shutdown(socket.SHUT_WR)
                except OSError:  # the harness stopped reading: it refused the frame
                    pass

            writer = threading.Thread(target=feed, daemon=True)
            writer.start()
            out, err = proc.communicate(timeout=60)
            writer.join(timeout=10)
        done = subprocess.CompletedProcess(command, proc.returncode, out, err)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-4000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.decode().splitlines())
    _, verdict, _, error, _, result = ("verdict " + lines["verdict"]).split()
    return Verdict(
        verdict,
        int(error),
        int(result),
        bytes.fromhex(lines.get("memory", "")),
        bytes.fromhex(lines.get("pending", "")),
        bytes.fromhex(lines.get("frame", "")),
        int(lines.get("streamed", 0)),
    )


def reply_body(result: int, *outputs: tuple[int, bytes]) -> bytes:
    return encode_reply(Reply(result, outputs))[4:]


def framed(body: bytes, length: int | None = None) -> bytes:
    return struct.pack("<I", len(body) if length is None else length) + body


def raw_reply(result: int, noutputs: int, *parts: bytes) -> bytes:
    """A reply body put together by hand (it may lie)."""
    return struct.pack("<cqB", b"R", result, noutputs) + b"".join(parts)


def output_head(index: int, size: int) -> bytes:
    return struct.pack("<BI", index, size)


# -- good replies ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["receive", "take"])
def test_a_reply_with_values_only(harness: Path, mode: str) -> None:
    body = reply_body(4711)
    got = run(harness, mode, framed(body) if mode == "receive" else body, kind="values")
    assert (got.verdict, got.result, got.pending) == ("DONE", 4711, b"")


@pytest.mark.parametrize("mode", ["receive", "take"])
@pytest.mark.parametrize("size", [0, 10, 144])
def test_an_output_within_the_capacity_goes_into_the_guest(harness: Path, mode: str, size: int) -> None:
    data = bytes(range(size))
    body = reply_body(size, (1, data))
    got = run(harness, mode, framed(body) if mode == "receive" else body, capacity=144)
    assert (got.verdict, got.result) == ("DONE", size)
    assert got.memory == data + FILLER * (144 + 16 - size)  # not a byte past it


def test_a_large_output_is_poured_into_the_guest(harness: Path) -> None:
    size = PIECE + 44_000  # above PIECE: written into the guest as it arrives
    data = bytes(k * 7 % 251 for k in range(size))
    got = run(harness, "receive", framed(reply_body(size, (1, data))), capacity=size + 100)
    assert (got.verdict, got.result) == ("DONE", size)
    assert got.memory == data + FILLER * 116


def test_a_large_reply_that_is_not_one_output_is_taken_whole(harness: Path) -> None:
    """Above PIECE, but no output (a large result frame padded by nothing is no reply):
    the frame is received whole and judged."""
    body = raw_reply(3, 0, b"\0" * (PIECE + 10))
    got = run(harness, "receive", framed(body), capacity=PIECE * 2)
    assert (got.verdict, got.error) == ("MALFORMED", EPROTO)


@pytest.mark.parametrize("restart", [-512, -513, -514, -516])
def test_a_call_interrupted_at_home_is_restarted(harness: Path, restart: int) -> None:
    got = run(harness, "receive", framed(reply_body(restart)), kind="values")
    assert (got.verdict, got.result) == ("RESTARTED", restart)


@pytest.mark.parametrize("result", [-511, -517, -EFAULT])
def test_other_errors_are_results(harness: Path, result: int) -> None:
    assert run(harness, "receive", framed(reply_body(result)), kind="values").verdict == "DONE"


def test_signal_and_control_frames_before_the_reply_are_kept_for_python(harness: Path) -> None:
    early = encode_signal(10) + encode_control({"op": "go"})
    got = run(harness, "receive", early + framed(reply_body(5, (1, b"hello"))), capacity=64)
    assert (got.verdict, got.result, got.memory[:5]) == ("DONE", 5, b"hello")
    assert got.pending == early  # each whole, with its length, in order


# -- malformed replies ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["receive", "take"])
@pytest.mark.parametrize("length", [1, 5, 9])
def test_a_reply_shorter_than_its_head_is_refused(harness: Path, mode: str, length: int) -> None:
    body = reply_body(4711)[:length]
    got = run(harness, mode, framed(body) if mode == "receive" else body, kind="values")
    assert (got.verdict, got.error) == ("MALFORMED", EPROTO)


def test_an_empty_frame_is_refused(harness: Path) -> None:
    assert run(harness, "receive", framed(b"")).verdict == "MALFORMED"


def test_a_frame_larger_than_the_room_is_refused_before_it_is_read(harness: Path) -> None:
    got = run(harness, "receive", framed(reply_body(1), length=1 << 30), room=1 << 20)
    assert (got.verdict, got.error) == ("MALFORMED", EPROTO)


@pytest.mark.parametrize("cut", [2, 12, 40])
def test_a_frame_longer_than_what_arrived_fails_the_link(harness: Path, cut: int) -> None:
    """The connection ends inside the frame: the link failed, nothing is taken."""
    body = reply_body(100, (1, bytes(100)))
    got = run(harness, "receive", framed(body)[:cut])
    assert (got.verdict, got.error) == ("FAILED", ECONNRESET)
    assert got.memory == FILLER * (144 + 16)


def test_a_large_frame_longer_than_what_arrived_fails_the_link(harness: Path) -> None:
    size = PIECE + 1000
    frame = framed(reply_body(size, (1, bytes(size))))
    got = run(harness, "receive", frame[:-500], capacity=size)
    assert (got.verdict, got.error) == ("FAILED", ECONNRESET)


@pytest.mark.parametrize("mode", ["receive", "take"])
@pytest.mark.parametrize("declared", [11, 100, 1 << 31])
def test_an_output_longer_than_its_frame_is_refused(harness: Path, mode: str, declared: int) -> None:
    body = raw_reply(10, 1, output_head(1, declared), bytes(10))
    got = run(harness, mode, framed(body) if mode == "receive" else body)
    assert (got.verdict, got.error) == ("MALFORMED", EPROTO)
    assert got.memory == FILLER * (144 + 16)


@pytest.mark.parametrize("mode", ["receive", "take"])
def test_an_output_head_cut_short_is_refused(harness: Path, mode: str) -> None:
    body = raw_reply(10, 1, output_head(1, 0)[:3])
    got = run(harness, mode, framed(body) if mode == "receive" else body)
    assert (got.verdict, got.error) == ("MALFORMED", EPROTO)


@pytest.mark.parametrize("mode", ["receive", "take"])
def test_an_output_larger_than_the_capacity_asked_is_refused(harness: Path, mode: str) -> None:
    body = reply_body(145, (1, bytes(145)))
    got = run(harness, mode, framed(body) if mode == "receive" else body, capacity=144)
    assert (got.verdict, got.error) == ("MALFORMED", EPROTO)
    assert got.memory == FILLER * (144 + 16)


def test_a_large_output_larger_than_the_capacity_asked_is_refused(harness: Path) -> None:
    size = PIECE + 1000
    got = run(harness, "receive", framed(reply_body(size, (1, bytes(size)))), capacity=size - 1)
    assert (got.verdict, got.error) == ("MALFORMED", EPROTO)
    assert got.memory == FILLER * (size - 1 + 16)


def test_a_large_output_whose_frame_disagrees_is_refused(harness: Path) -> None:
    size = PIECE + 1000
    body = raw_reply(size, 1, output_head(1, size - 1), bytes(size))  # one byte more than it says
    got = run(harness, "receive", framed(body), capacity=size)
    assert (got.verdict, got.error) == ("MALFORMED", EPROTO)


@pytest.mark.parametrize("mode", ["receive", "take"])
def test_an_output_for_another_argument_is_refused(harness: Path, mode: str) -> None:
    body = reply_body(3, (2, b"abc"))
    got = run(harness, mode, framed(body) if mode == "receive" else body)
    assert (got.verdict, got.error) == ("MALFORMED", EPROTO)


@pytest.mark.parametrize("mode", ["receive", "take"])
@pytest.mark.parametrize("kind", ["values", "in"])
def test_an_output_for_a_call_without_one_is_refused(harness: Path, mode: str, kind: str) -> None:
    body = reply_body(3, (1, b"abc"))
    got = run(harness, mode, framed(body) if mode == "receive" else body, kind=kind)
    assert (got.verdict, got.error) == ("MALFORMED", EPROTO)


@pytest.mark.parametrize("mode", ["receive", "take"])
def test_bytes_after_the_outputs_are_refused(harness: Path, mode: str) -> None:
    body = reply_body(3, (1, b"abc")) + b"?"
    got = run(harness, mode, framed(body) if mode == "receive" else body)
    assert (got.verdict, got.error) == ("MALFORMED", EPROTO)


@pytest.mark.parametrize("kind", [b"X", b"Q", b"\0"])
def test_a_frame_of_another_kind_is_refused(harness: Path, kind: bytes) -> None:
    got = run(harness, "receive", framed(kind + reply_body(1)[1:]), kind="values")
    assert (got.verdict, got.error, got.pending) == ("MALFORMED", EPROTO, b"")


def test_a_wrong_kind_after_a_kept_frame_is_refused(harness: Path) -> None:
    got = run(harness, "receive", encode_signal(10) + framed(b"X" + reply_body(1)[1:]), kind="values")
    assert (got.verdict, got.error) == ("MALFORMED", EPROTO)


def test_frames_for_python_beyond_their_room_fail(harness: Path) -> None:
    early = encode_control({"op": "go", "pad": "x" * 100})
    got = run(harness, "receive", early + framed(reply_body(1)), kind="values", pending_room=len(early) - 1)
    assert (got.verdict, got.error, got.pending) == ("FAILED", ENOBUFS, b"")


def test_a_kept_frame_then_the_end_of_the_link_fails(harness: Path) -> None:
    got = run(harness, "receive", encode_signal(10), kind="values")
    assert (got.verdict, got.error) == ("FAILED", ECONNRESET)


# -- requests -------------------------------------------------------------------------


def built(harness: Path, kind: str, capacity: int, guest_data: bytes = b"", room: int = ROOM) -> Request | str:
    got = run(harness, "build", guest_data, kind=kind, capacity=capacity, room=room)
    if got.verdict != "DONE":
        return got.verdict
    (length,) = struct.unpack_from("<I", got.frame)
    assert length == len(got.frame) - 4 + got.streamed
    return decode(got.frame[4:])


def test_a_request_with_values_only(harness: Path) -> None:
    assert built(harness, "values", 0) == Request(SYS_GETPPID, (), (), ())


def test_a_request_for_an_output(harness: Path) -> None:
    assert built(harness, "out", 144) == Request(SYS_READ, (3, BUFFER, 144), (), ((1, 144),))


def test_a_read_larger_than_one_transfer_is_cut(harness: Path) -> None:
    assert built(harness, "out", MAX_TRANSFER + 5) == Request(
        SYS_READ, (3, BUFFER, MAX_TRANSFER), (), ((1, MAX_TRANSFER),)
    )


@pytest.mark.parametrize("size", [0, 1, 1000])
def test_a_request_carries_its_input(harness: Path, size: int) -> None:
    data = bytes(k % 253 for k in range(size))
    assert built(harness, "in", size, data) == Request(SYS_WRITE, (3, BUFFER, size), ((1, data),), ())


def test_a_write_larger_than_one_transfer_is_for_python(harness: Path) -> None:
    assert built(harness, "in", MAX_TRANSFER + 1) == "NOT_OURS"


def test_a_request_carries_its_path_with_its_nul(harness: Path) -> None:
    assert built(harness, "path", 4, b"/etc/hostname\0") == Request(
        SYS_ACCESS, (BUFFER, 4), ((0, b"/etc/hostname\0"),), ()
    )


def test_a_path_without_its_nul_is_for_python(harness: Path) -> None:
    assert built(harness, "path", 4, b"x" * 5000) == "NOT_OURS"


def test_a_request_that_does_not_fit_the_room_is_for_python(harness: Path) -> None:
    assert built(harness, "in", 1000, bytes(1000), room=5000) == "NOT_OURS"
