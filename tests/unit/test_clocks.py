"""Comparing clocks between home and a guest host (remote/clocks.py), the vDSO's
clock entry points (linux/vdso.py) and mosd.conf's wall_clock_tolerance_ms."""

from __future__ import annotations

import os
import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mosix_core.config.daemon import DaemonSettings
from mosix_core.errors import ConfigError, ProtocolError, TraceError
from mosix_core.linux import procfs, timens, vdso
from mosix_core.remote import clocks
from mosix_core.remote.frames import Channel, encode_control


def exchange(local_time: bool):
    home, guest = socket.socketpair()
    home_channel, guest_channel = Channel(home), Channel(guest)
    thread = threading.Thread(
        target=clocks.answer_home_side,
        args=(lambda m: home_channel.send(encode_control(m)), home_channel.receive),
        kwargs={"local_time": local_time},
    )
    thread.start()
    try:
        return clocks.measure_guest_side(lambda m: guest_channel.send(encode_control(m)), guest_channel.receive)
    finally:
        thread.join(10)
        home.close()
        guest.close()


def test_one_machines_clocks_agree_to_within_the_round_trip():
    measured = exchange(local_time=False)
    assert not measured.local_time and set(measured.offsets) == set(timens.COMPARED)
    assert 0 < measured.round_trip_ns < 1_000_000_000
    for name in timens.COMPARED:
        assert abs(measured.of(name)) <= measured.round_trip_ns


def test_with_local_time_nothing_is_measured():
    measured = exchange(local_time=True)
    assert measured.local_time and measured.offsets == {} and measured.of("realtime") == 0


@pytest.mark.parametrize(
    "answers",
    [
        [{"op": "stay"}],
        [{"op": "hello"}],
        [{"op": "hello", "local_time": False}, {"op": "clock", "clocks": {"realtime": "x"}}],
        [{"op": "hello", "local_time": False}, {"op": "image"}],
        [{"op": "hello", "local_time": False}, 5],
    ],
)
def test_garbled_answers_from_home_are_protocol_errors(answers):
    replies = iter(answers)

    def receive():
        answer = next(replies)
        if not isinstance(answer, dict):
            raise ProtocolError("a signal")
        return answer

    with pytest.raises(ProtocolError):
        clocks.measure_guest_side(lambda m: None, receive)


def test_home_refuses_a_guest_host_that_never_gets_ready():
    with pytest.raises(ProtocolError, match="too often"):
        clocks.answer_home_side(lambda m: None, lambda: {"op": "clock"}, local_time=False)
    with pytest.raises(ProtocolError):
        clocks.answer_home_side(lambda m: None, lambda: 17, local_time=False)


def own_vdso() -> bytes:
    mapping = next(m for m in procfs.read_maps(os.getpid()) if m.path == "[vdso]")
    with open("/proc/self/mem", "rb", buffering=0) as memory:
        memory.seek(mapping.start)
        return memory.read(mapping.size)


def test_the_vdso_has_the_three_clock_functions():
    entries = vdso.clock_entry_points(own_vdso())
    assert sorted(entries.values()) == sorted({228, 96, 201})
    assert vdso.syscall_stub(228) == b"\xb8\xe4\x00\x00\x00\x0f\x05\xc3"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096), st.integers(0, 8191))
def test_a_damaged_vdso_image_is_a_trace_error_never_a_crash(noise, at):
    image = bytearray(own_vdso())
    image[at : at + len(noise)] = noise
    try:
        entries = vdso.clock_entry_points(bytes(image[:8192]))
    except TraceError:
        return
    assert all(0 <= offset <= 8192 - 8 for offset in entries)


def test_wall_clock_tolerance_setting():
    assert DaemonSettings.default().wall_clock_tolerance_ms == 1.0
    assert DaemonSettings.parse("wall_clock_tolerance_ms = 0\n", "mosd.conf").wall_clock_tolerance_ms == 0
    assert DaemonSettings.parse("wall_clock_tolerance_ms = 2.5\n", "mosd.conf").wall_clock_tolerance_ms == 2.5
    for bad in ("-1", "60001", "soon", "1 2"):
        with pytest.raises(ConfigError, match="wall_clock_tolerance_ms"):
            DaemonSettings.parse(f"wall_clock_tolerance_ms = {bad}\n", "mosd.conf")
