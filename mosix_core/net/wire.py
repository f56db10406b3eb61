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

That is enough for gossip, where a replayed status is at worst stale news; a TCP
request (``migrate-in`` gets a guest host) must not be replayable at all, not even
to a receiver that has just restarted. So a TCP connection starts with both ends
sending a :func:`hello` carrying a fresh random nonce, and every frame on it is
sealed over both nonces (``binding``): a frame is worth nothing on any other
connection.
"""

from __future__ import annotations

import hashlib
import hmac
import os
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
# Over TCP, requests and replies are small JSON objects (the image of a moving process
# goes directly between the processes that own the move, not in frames). A
# connection's first request is read before anyone knows who sent it, so it gets room
# for a request and little more; later frames, and replies, a little more again.
MAX_FIRST_REQUEST = 4 * 1024
MAX_RPC_PAYLOAD = 64 * 1024

# A connection's opening: magic, then a nonce of the sender's. Unauthenticated (a
# forged nonce only makes the frames sealed over it fail to verify).
HELLO_MAGIC = b"MOSXHELO"
NONCE_SIZE = 16
HELLO_SIZE = len(HELLO_MAGIC) + NONCE_SIZE
# Put before the bound MAC input: its fifth byte can never be an envelope's version,
# so a frame sealed for a connection can never pass as a datagram, nor the reverse.
_BOUND_TAG = b"MOSX-bound\0"

# message kinds
GOSSIP = 1
RPC_REQUEST = 2
RPC_REPLY = 3

# flags
FLAG_ANSWER = 1  # gossip: the receiver should answer the sender at once (a liveness probe)


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

    def seal(self, kind: int, payload: bytes, flags: int = 0, binding: bytes = b"") -> bytes:
        """One message; with ``binding`` (a connection's :func:`channel_binding`) it is
        valid on that connection only."""
        if len(payload) > MAX_PAYLOAD:
            raise ProtocolError(f"message too large ({len(payload)} bytes)")
        with self._lock:
            self._seq += 1
            seq = self._seq
        header = HEADER.pack(
            MAGIC, WIRE_VERSION, kind, flags, self.sender.packed, self.epoch, seq, int(time.time() * 1000), len(payload)
        )
        return header + payload + _mac(self._key, header + payload, binding)


def _mac(key: bytes, body: bytes, binding: bytes) -> bytes:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    if binding:
        mac.update(_BOUND_TAG + struct.pack("!H", len(binding)) + binding)
    mac.update(body)
    return mac.digest()


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def hello(nonce: bytes) -> bytes:
    """The first bytes each end of a TCP connection sends."""
    return HELLO_MAGIC + nonce


def parse_hello(data: bytes) -> bytes:
    """The nonce of the other end's :func:`hello`; ProtocolError if it is not one."""
    if len(data) != HELLO_SIZE or not data.startswith(HELLO_MAGIC):
        raise ProtocolError("the connection did not open with a MOSIX hello")
    return data[len(HELLO_MAGIC) :]


def channel_binding(listener_nonce: bytes, caller_nonce: bytes) -> bytes:
    """What both ends seal a connection's frames over (the listener's nonce first)."""
    return listener_nonce + caller_nonce


def peek_length(header: bytes, max_payload: int = MAX_PAYLOAD) -> int:
    """Total message length from its header (for stream framing); checks magic and size.

    A stream reader passes the most it is willing to hold for this frame, so a
    header declaring more is refused before anything of the payload is read.
    """
    if len(header) < HEADER.size:
        raise ProtocolError("truncated header")
    magic, version, _kind, _flags, _ip, _epoch, _seq, _t, length = HEADER.unpack_from(header)
    if magic != MAGIC:
        raise ProtocolError("not a MOSIX message")
    if version != WIRE_VERSION:
        raise ProtocolError(f"incompatible wire version {version}")
    if length > min(max_payload, MAX_PAYLOAD):
        raise ProtocolError(f"declared payload too large ({length} bytes)")
    return HEADER.size + length + MAC_SIZE


def open_envelope(key: bytes, data: bytes, binding: bytes = b"") -> Envelope:
    """Check framing and HMAC (over ``binding`` too: see :meth:`Sealer.seal`); return
    the envelope. Replay is checked separately.

    Raises ProtocolError for garbled/truncated data and AuthenticationError when the
    HMAC does not match (wrong secret or tampering).
    """
    total = peek_length(data)
    if len(data) != total:
        raise ProtocolError(f"length mismatch ({len(data)} bytes, header says {total})")
    body, mac = data[:-MAC_SIZE], data[-MAC_SIZE:]
    if not hmac.compare_digest(mac, _mac(key, body, binding)):
        raise AuthenticationError("message authentication code does not match")
    _magic, _version, kind, flags, ip, epoch, seq, time_ms, length = HEADER.unpack_from(body)
    return Envelope(
        kind=kind,
        sender=IPv4Address(ip),
        epoch=epoch,
        seq=seq,
        time_ms=time_ms,
        payload=body[HEADER.size : HEADER.size + length],
        flags=flags,
    )


@attrs.define
class _SenderWindow:
    epoch: int
    highest: int
    seen: int  # bit i set: highest - i was seen


class ReplayGuard:
    """Accept each (sender, epoch, seq) once, and only recent messages.

    It keeps a window per sender, so check only envelopes whose MAC verified and
    whose sender is in the map: then no stranger can grow the table.
    """

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
