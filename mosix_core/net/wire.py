"""The authenticated envelope every peer message travels in.

Layout (network byte order)::

    magic "MOSX" | version u8 | kind u8 | flags u16 | sender IPv4 (4) |
    epoch u64 | seq u64 | time_ms u64 | payload_len u32 | payload | HMAC-SHA256 (32)

The HMAC covers everything before it and is keyed from the cluster secret
(``/etc/mosix/secret``). ``epoch`` is the sender's start time in nanoseconds, so it
grows with every restart; ``seq`` grows with every message of one channel. A
receiver accepts a message once: a :class:`ReplayGuard` remembers, per sender,
the newest epoch and a 64-message window of sequence numbers, and refuses
messages whose timestamp is further than ``max_skew`` from its own clock (which
bounds what a receiver that restarted, and so forgot, could be fooled with).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import threading
import time
from ipaddress import IPv4Address

import attrs

from mosix_core.errors import AuthenticationError, ProtocolError

MAGIC = b"MOSX"
WIRE_VERSION = 1
HEADER = struct.Struct("!4sBBH4sQQQI")
MAC_SIZE = 32
OVERHEAD = HEADER.size + MAC_SIZE
MAX_PAYLOAD = 64 * 1024 * 1024

# message kinds
GOSSIP = 1
RPC_REQUEST = 2
RPC_REPLY = 3

# flags
FLAG_ANSWER = 1   # gossip: the receiver should answer the sender at once (a liveness probe)


def derive_key(secret: bytes) -> bytes:
    """The HMAC key: the secret itself never appears in a message or a log."""
    return hashlib.sha256(b"mosix-py wire v1\0" + secret).digest()


@attrs.frozen
class Envelope:
    kind: int
    sender: IPv4Address
    epoch: int
    seq: int
    time_ms: int
    payload: bytes
    flags: int = 0


class Sealer:
    """Seals outgoing messages of one channel (thread-safe sequence numbering)."""

    def __init__(self, key: bytes, sender: IPv4Address, epoch: int | None = None) -> None:
        self._key = key
        self.sender = sender
        self.epoch = epoch if epoch is not None else time.time_ns()
        self._seq = 0
        self._lock = threading.Lock()

    def seal(self, kind: int, payload: bytes, flags: int = 0) -> bytes:
        if len(payload) > MAX_PAYLOAD:
            raise ProtocolError(f"message too large ({len(payload)} bytes)")
        with self._lock:
            self._seq += 1
            seq = self._seq
        header = HEADER.pack(MAGIC, WIRE_VERSION, kind, flags, self.sender.packed, self.epoch, seq,
                             int(time.time() * 1000), len(payload))
        mac = hmac.new(self._key, header + payload, hashlib.sha256).digest()
        return header + payload + mac


def peek_length(header: bytes) -> int:
    """Total message length from its header (for stream framing); checks magic and size."""
    if len(header) < HEADER.size:
        raise ProtocolError("truncated header")
    magic, version, _kind, _flags, _ip, _epoch, _seq, _t, length = HEADER.unpack_from(header)
    if magic != MAGIC:
        raise ProtocolError("not a MOSIX message")
    if version != WIRE_VERSION:
        raise ProtocolError(f"incompatible wire version {version}")
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"declared payload too large ({length} bytes)")
    return HEADER.size + length + MAC_SIZE


def open_envelope(key: bytes, data: bytes) -> Envelope:
    """Check framing and HMAC; return the envelope. Replay is checked separately.

    Raises ProtocolError for garbled/truncated data and AuthenticationError when the
    HMAC does not match (wrong secret or tampering).
    """
    total = peek_length(data)
    if len(data) != total:
        raise ProtocolError(f"length mismatch ({len(data)} bytes, header says {total})")
    body, mac = data[:-MAC_SIZE], data[-MAC_SIZE:]
    expected = hmac.new(key, body, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise AuthenticationError("message authentication code does not match")
    _magic, _version, kind, flags, ip, epoch, seq, time_ms, length = HEADER.unpack_from(body)
    return Envelope(kind=kind, sender=IPv4Address(ip), epoch=epoch, seq=seq, time_ms=time_ms,
                    payload=body[HEADER.size:HEADER.size + length], flags=flags)


@attrs.define
class _SenderWindow:
    epoch: int
    highest: int
    seen: int  # bit i set: highest - i was seen


class ReplayGuard:
    """Accept each (sender, epoch, seq) once, and only recent messages."""

    WINDOW = 64

    def __init__(self, max_skew: float = 300.0) -> None:
        self.max_skew_ms = int(max_skew * 1000)
        self._senders: dict[IPv4Address, _SenderWindow] = {}
        self._lock = threading.Lock()

    def check(self, env: Envelope, now_ms: int | None = None) -> None:
        """Raise AuthenticationError if ``env`` is stale or a replay; else record it."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        if abs(now_ms - env.time_ms) > self.max_skew_ms:
            raise AuthenticationError("message timestamp outside the accepted window (replay or clock skew)")
        with self._lock:
            win = self._senders.get(env.sender)
            if win is None or env.epoch > win.epoch:
                self._senders[env.sender] = _SenderWindow(env.epoch, env.seq, 1)
                return
            if env.epoch < win.epoch:
                raise AuthenticationError("message from a previous incarnation of the sender (replay)")
            if env.seq > win.highest:
                shift = env.seq - win.highest
                win.seen = ((win.seen << shift) | 1) & ((1 << self.WINDOW) - 1) if shift < self.WINDOW else 1
                win.highest = env.seq
                return
            offset = win.highest - env.seq
            if offset >= self.WINDOW or win.seen & (1 << offset):
                raise AuthenticationError("replayed message")
            win.seen |= 1 << offset

    def forget(self, sender: IPv4Address) -> None:
        with self._lock:
            self._senders.pop(sender, None)
