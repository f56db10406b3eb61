"""The transport contract for gossip datagrams (implemented by plugins)."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Protocol


class DatagramTransport(Protocol):
    """Moves already-authenticated datagrams between nodes; knows nothing of their content."""

    async def start(self, on_datagram: Callable[[bytes, str], None]) -> None:
        """Bind and start delivering ``(data, source_ip)`` to ``on_datagram``."""

    def send(self, ip: IPv4Address, data: bytes) -> None:
        """Send one datagram to the node ``ip`` (best effort; may raise OSError)."""

    def close(self) -> None:
        """Stop receiving and release the socket."""
