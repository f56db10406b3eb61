"""The peer TCP listener (MOSIX's TCP port 253): authenticated requests between nodes.

Each frame is a :mod:`mosix_core.net.wire` envelope; the request payload is a JSON
object with an ``op``. The process-migration issue adds its operations here; the
kernel answers ``ping`` (reachability and version) and ``status``. A connection
whose first frame fails authentication is logged as the manual's
"Authentication violation with {computer}" and closed.
"""

from __future__ import annotations

import asyncio
import json
import time
from ipaddress import IPv4Address
from typing import Any

from mosix_core import PROTOCOL_VERSION, __version__
from mosix_core.daemon import migration
from mosix_core.errors import AuthenticationError, ProtocolError
from mosix_core.net import wire

FRAME_TIMEOUT = 30.0


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(wire.HEADER.size)
    total = wire.peek_length(header)
    return header + await reader.readexactly(total - wire.HEADER.size)


class PeerServer:
    def __init__(self, node) -> None:
        self.node = node
        self._server: asyncio.base_events.Server | None = None
        self.replay = wire.ReplayGuard()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, host=str(self.node.our_ip),
                                                  port=self.node.settings.tcp_port, reuse_address=True)
        self.node.peer_server_up = True

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.node.peer_server_up = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = writer.get_extra_info("peername")[0]
        node = self.node
        sealer = wire.Sealer(node.key, node.our_ip)
        try:
            while True:
                try:
                    data = await asyncio.wait_for(read_frame(reader), FRAME_TIMEOUT)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                env = wire.open_envelope(node.key, data)
                if node.canonical(IPv4Address(source)) is None or node.canonical(env.sender) is None:
                    raise AuthenticationError("peer is not in our map")
                self.replay.check(env)
                if env.kind != wire.RPC_REQUEST:
                    raise ProtocolError(f"unexpected message kind {env.kind}")
                request = json.loads(env.payload)
                if isinstance(request, dict) and request.get("op") == "migrate-in":
                    await self._migrate_in(request, env.sender, writer, sealer)
                    return
                reply = self.handle(request)
                writer.write(sealer.seal(wire.RPC_REPLY, json.dumps(reply).encode()))
                await writer.drain()
        except AuthenticationError as err:
            node.auth_violation(source, str(err))
        except (ProtocolError, ValueError) as err:
            node.stats["garbled"] += 1
            node.log.debug("garbled peer request", source=source, error=str(err))
        except Exception as err:  # never let a peer crash the daemon
            node.log.error("peer request failed", source=source, error=f"{type(err).__name__}: {err}")
        finally:
            writer.close()

    async def _migrate_in(self, request: dict, origin: IPv4Address, writer: asyncio.StreamWriter,
                          sealer: wire.Sealer) -> None:
        """A process wants to move here: admission, then the connection is the guest
        host's (nothing more is read here: the image follows our answer)."""
        node = self.node
        writer.transport.pause_reading()
        origin = node.canonical(origin)
        admission = node.pm.hook.mosix_admit_guest(request=migration.admission_request(node, request, origin),
                                                   node=node)
        reply = {"ok": True} if admission.accepted else {"ok": False, "error": admission.reason}
        writer.write(sealer.seal(wire.RPC_REPLY, json.dumps(reply).encode()))
        await writer.drain()
        if admission.accepted:
            await migration.start_guest_host(node, writer, request, origin)

    def handle(self, request: Any) -> dict:
        if not isinstance(request, dict):
            raise ProtocolError("request is not an object")
        op = request.get("op")
        node = self.node
        if op == "ping":
            return {"ok": True, "ip": str(node.our_ip), "version": __version__, "protocol": PROTOCOL_VERSION}
        if op == "status":
            node.refresh_local(time.monotonic())
            st = node.local_status()
            return {"ok": True, "load": st.load, "speed": st.speed, "ncpus": st.ncpus, "state": st.state}
        return {"ok": False, "error": f"unknown operation {op!r}"}


async def call(node, ip: IPv4Address, request: dict, timeout: float = 5.0) -> dict:
    """Send one authenticated request to another node's peer listener and return the reply."""
    sealer = wire.Sealer(node.key, node.our_ip)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(str(ip), node.settings.tcp_port, local_addr=(str(node.our_ip), 0)), timeout)
    try:
        writer.write(sealer.seal(wire.RPC_REQUEST, json.dumps(request).encode()))
        await writer.drain()
        env = wire.open_envelope(node.key, await asyncio.wait_for(read_frame(reader), timeout))
        return json.loads(env.payload)
    finally:
        writer.close()
