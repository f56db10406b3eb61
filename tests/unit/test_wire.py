"""The authenticated envelope and replay protection."""

from __future__ import annotations

import time
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mosix_core.errors import AuthenticationError, ProtocolError
from mosix_core.net import wire

KEY = wire.derive_key(b"cluster password")
ME = IPv4Address("127.0.0.2")


def test_seal_and_open_round_trip():
    data = wire.Sealer(KEY, ME).seal(wire.GOSSIP, b"payload")
    env = wire.open_envelope(KEY, data)
    assert (env.kind, env.sender, env.payload, env.seq) == (wire.GOSSIP, ME, b"payload", 1)
    assert len(data) == wire.OVERHEAD + len(b"payload")


def test_wrong_secret_is_an_authentication_error():
    data = wire.Sealer(wire.derive_key(b"other"), ME).seal(wire.GOSSIP, b"x")
    with pytest.raises(AuthenticationError):
        wire.open_envelope(KEY, data)


def test_every_tampered_byte_is_detected():
    data = wire.Sealer(KEY, ME).seal(wire.GOSSIP, b"some payload")
    for i in range(len(data)):
        bad = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]
        with pytest.raises((AuthenticationError, ProtocolError)):
            wire.open_envelope(KEY, bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_never_raises_anything_else(data):
    try:
        wire.open_envelope(KEY, data)
    except (AuthenticationError, ProtocolError):
        pass


def test_truncation_and_declared_size():
    data = wire.Sealer(KEY, ME).seal(wire.GOSSIP, b"abc")
    for n in range(len(data)):
        with pytest.raises(ProtocolError):
            wire.open_envelope(KEY, data[:n])
    with pytest.raises(ProtocolError):
        wire.peek_length(wire.HEADER.pack(wire.MAGIC, 1, 1, 0, ME.packed, 0, 0, 0, wire.MAX_PAYLOAD + 1))


def test_replay_guard_accepts_each_message_once_in_any_order():
    sealer = wire.Sealer(KEY, ME)
    envs = [wire.open_envelope(KEY, sealer.seal(wire.GOSSIP, b"")) for _ in range(10)]
    guard = wire.ReplayGuard()
    for env in (envs[5], envs[2], envs[9], envs[0]):
        guard.check(env)
    for env in (envs[5], envs[2], envs[9], envs[0]):
        with pytest.raises(AuthenticationError, match="replayed"):
            guard.check(env)
    guard.check(envs[7])  # late but never seen


def test_replay_guard_window_and_epochs():
    guard = wire.ReplayGuard()
    old = wire.Sealer(KEY, ME, epoch=1000)
    first = wire.open_envelope(KEY, old.seal(wire.GOSSIP, b""))
    guard.check(first)
    for _ in range(wire.ReplayGuard.WINDOW + 5):
        guard.check(wire.open_envelope(KEY, old.seal(wire.GOSSIP, b"")))
    with pytest.raises(AuthenticationError):
        guard.check(first)  # fell out of the window: refused, not accepted again
    new = wire.Sealer(KEY, ME, epoch=2000)  # the sender restarted
    guard.check(wire.open_envelope(KEY, new.seal(wire.GOSSIP, b"")))
    with pytest.raises(AuthenticationError, match="previous incarnation"):
        guard.check(wire.open_envelope(KEY, old.seal(wire.GOSSIP, b"")))


def test_replay_guard_refuses_stale_timestamps():
    guard = wire.ReplayGuard(max_skew=60)
    env = wire.open_envelope(KEY, wire.Sealer(KEY, ME).seal(wire.GOSSIP, b""))
    with pytest.raises(AuthenticationError, match="timestamp"):
        guard.check(env, now_ms=int(time.time() * 1000) + 120_000)
    guard.check(env)
