"""Gossip over UDP unicast, bound to the node's MOSIX address (MOSIX's UDP port 253)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any

from mosix_core.contract.hookspecs import hookimpl
from mosix_core.contract.records import NodeContext

# asyncio is imported where the transport starts (inside mosd), not at module level:
# every mosrun loads all plugins to find the site's mosrun policy, and importing
# asyncio would add ~25 ms to each program's start.


class _Protocol:
    """An ``asyncio.DatagramProtocol`` (duck-typed, so the module needs no asyncio)."""

    def connection_made(self, transport: Any) -> None:
        pass

    def connection_lost(self, _exc: Exception | None) -> None:
        pass

    def __init__(self, on_datagram: Callable[[bytes, str], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_datagram(data, addr[0])

    def error_received(self, _exc: Exception) -> None:  # ICMP unreachable from a dead peer
        pass


class UdpTransport:
    def __init__(self, ip: IPv4Address, port: int) -> None:
        self.ip, self.port = ip, port
        self._transport: Any = None  # asyncio.DatagramTransport once started

    async def start(self, on_datagram: Callable[[bytes, str], None]) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind((str(self.ip), self.port))
        sock.setblocking(False)
        import asyncio

        loop = asyncio.get_running_loop()
        # _Protocol is an asyncio protocol by its methods, not by its base class
        self._transport, _ = await loop.create_datagram_endpoint(  # type: ignore[type-var]
            lambda: _Protocol(on_datagram), sock=sock
        )

    def send(self, ip: IPv4Address, data: bytes) -> None:
        if self._transport is not None:
            self._transport.sendto(data, (str(ip), self.port))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


@hookimpl(trylast=True)
def mosix_gossip_transport(node: NodeContext) -> UdpTransport:
    return UdpTransport(node.ip, node.settings.udp_port)
