"""Whose clock a process away reads: its home node's (unless ``mosrun -t``).

Before the image is sent, the two ends compare clocks over the link, NTP-style::

    home  → guest host   {"op": "hello", "local_time": false}
    guest host → home    {"op": "clock"}                          (SAMPLES times)
    home  → guest host   {"op": "clock", "clocks": {name: ns}}
    guest host → home    {"op": "ready"}                          then the image

Each sample's offset is home's reading less the middle of the guest host's
reading before and after; the sample with the shortest round trip is kept, so the
error is at most half of it. With ``-t`` (``local_time``) there is no sampling and
every offset is 0.

The offsets are fixed for the whole stay: the local clocks run on, so a monotonic
clock stays monotonic here; the move itself takes longer than the error, so it
stays monotonic across moves too.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from mosix_core.errors import ProtocolError
from mosix_core.linux import timens

SAMPLES = 5


@attrs.frozen
class ClockOffsets:
    """How far home's clocks are ahead of this node's (nanoseconds, by clock name),
    and the round trip of the sample they were measured with."""

    offsets: dict[str, int] = attrs.field(factory=dict)
    round_trip_ns: int = 0
    local_time: bool = True

    def of(self, name: str) -> int:
        return self.offsets.get(name, 0)


def answer_home_side(send: Callable[[dict], None], receive: Callable[[], object], *, local_time: bool) -> None:
    """Home's part: say whose clock the process reads, answer the guest host's clock
    requests until it is ready for the image."""
    send({"op": "hello", "local_time": local_time})
    for _ in range(SAMPLES + 1):
        message = receive()
        if not isinstance(message, dict):
            raise ProtocolError("the target sent a call or signal while clocks were compared")
        if message.get("op") == "ready":
            return
        if message.get("op") != "clock":
            raise ProtocolError(f"the target sent {message.get('op')!r} while clocks were compared")
        send({"op": "clock", "clocks": timens.readings()})
    raise ProtocolError("the target asked for the clock too often")


def measure_guest_side(send: Callable[[dict], None], receive: Callable[[], dict]) -> ClockOffsets:
    """The guest host's part: home's clock offsets (all 0 when the process keeps
    the local time); says ``ready`` at the end."""
    hello = receive()
    if hello.get("op") != "hello" or not isinstance(hello.get("local_time"), bool):
        raise ProtocolError(f"expected home's hello, got {hello!r}")
    best: ClockOffsets | None = None
    if not hello["local_time"]:
        for _ in range(SAMPLES):
            before = timens.readings()
            send({"op": "clock"})
            answer = receive()
            after = timens.readings()
            clocks = answer.get("clocks")
            if (
                answer.get("op") != "clock"
                or not isinstance(clocks, dict)
                or not all(isinstance(clocks.get(name), int) for name in timens.COMPARED)
            ):
                raise ProtocolError(f"expected home's clocks, got {answer!r}")
            trip = after["monotonic"] - before["monotonic"]
            if best is None or trip < best.round_trip_ns:
                best = ClockOffsets(
                    {name: clocks[name] - (before[name] + after[name]) // 2 for name in timens.COMPARED},
                    trip,
                    local_time=False,
                )
    send({"op": "ready"})
    return best or ClockOffsets()
