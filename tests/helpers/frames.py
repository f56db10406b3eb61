"""Frames as a channel receives them from a real socket (tests/unit/test_remote_frames.py,
test_shortcuts.py)."""

from __future__ import annotations

import socket
import threading

from mosix_core.remote.frames import Channel


def poured_through(frames: list[bytes], pour) -> list:
    """What a channel receives of ``frames`` (sent by a thread through a small send
    buffer, so they come a little at a time), offering each to ``pour``."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    with a, b:
        sender = threading.Thread(target=lambda: [a.sendall(frame) for frame in frames])
        sender.start()
        received = [Channel(b).receive(pour=pour) for _ in frames]
        sender.join(30)
    return received
