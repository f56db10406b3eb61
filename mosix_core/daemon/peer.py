"""The peer TCP listener (MOSIX's TCP port 253): authenticated requests between nodes.

Each frame is a :mod:`mosix_core.net.wire` envelope; the request payload is a JSON
object with an ``op``, and the operations (``ping``: reachability and version,
``status``, ``migrate-in``, ``reattach``) are :data:`mosix_core.daemon.protocol.PEER`'s:
each request is decoded into its record before it is served, and the reply is one
of the protocol's three shapes (done, refused with the manual's reason, a fault). A connection
whose first frame fails authentication is logged as the manual's
"Authentication violation with {computer}" and closed.

A connection opens with both ends' hellos (fresh nonces); every frame is sealed over
both, so a request captured on the wire is worthless on any other connection, also
after this node restarts (when every other replay memory is gone).

Anyone who can reach the port can open connections, so what a connection that has
not authenticated yet can make mosd hold is bounded: addresses outside the map are
closed at once, the first request is small (:data:`wire.MAX_FIRST_REQUEST`) and must
arrive within :data:`AUTH_TIMEOUT`, and only so many connections may be waiting for
theirs, per source and in all: a newcomer beyond that pushes out the oldest waiting
one (an honest peer authenticates within a round trip, so only stragglers go).
"""

from __future__ import annotations

import asyncio
import json
import time
from ipaddress import IPv4Address

from mosix_core import PROTOCOL_VERSION, __version__
from mosix_core.contract.plugins import first_answer
from mosix_core.contract.records import Admission, NodeContext
from mosix_core.daemon import handshake, protocol
from mosix_core.daemon.balancer import move_by_supervisor
from mosix_core.errors import AuthenticationError, MosixError, ProtocolError
from mosix_core.net import wire

FRAME_TIMEOUT = 30.0  # an authenticated connection may idle this long between requests
# From accept to a verified first request. An honest caller needs one round trip
# (our hello, its request); the rest is room for a loaded machine or a far partner.
AUTH_TIMEOUT = 5.0
MAX_PENDING_PER_SOURCE = 16  # connections waiting to authenticate, from one address
MAX_PENDING = 128  # ... and from all addresses
MAX_CONNECTIONS = 512  # open at once; newcomers beyond are closed at once
# asyncio's read buffer per connection (it stops reading from the socket at twice this).
STREAM_LIMIT = 16 * 1024


async def read_frame(reader: asyncio.StreamReader, max_payload: int = wire.MAX_RPC_PAYLOAD) -> bytes:
    header = await reader.readexactly(wire.HEADER.size)
    total = wire.peek_length(header, max_payload)
    return header + await reader.readexactly(total - wire.HEADER.size)


class PeerServer:
    def __init__(self, node) -> None:
        self.node = node
        self._server: asyncio.base_events.Server | None = None
        self._open = 0
        # waiting to authenticate, oldest first -> source address
        self._pending: dict[asyncio.StreamWriter, str] = {}
        self._pending_from: dict[str, int] = {}

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve,
            host=str(self.node.our_ip),
            port=self.node.settings.tcp_port,
            reuse_address=True,
            limit=STREAM_LIMIT,
        )
        self.node.peer_server_up = True

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.node.peer_server_up = False

    def _wait_for_authentication(self, source: str, writer: asyncio.StreamWriter) -> None:
        if self._pending_from.get(source, 0) >= MAX_PENDING_PER_SOURCE:
            self._push_out(next(w for w, s in self._pending.items() if s == source))
        if len(self._pending) >= MAX_PENDING:
            self._push_out(next(iter(self._pending)))
        self._pending[writer] = source
        self._pending_from[source] = self._pending_from.get(source, 0) + 1

    def _done_waiting(self, writer: asyncio.StreamWriter) -> None:
        source = self._pending.pop(writer, None)
        if source is not None:
            left = self._pending_from[source] - 1
            if left:
                self._pending_from[source] = left
            else:
                del self._pending_from[source]

    def _push_out(self, writer: asyncio.StreamWriter) -> None:
        # Its handler sees the end of the stream and finishes by itself.
        self._done_waiting(writer)
        writer.transport.abort()

    async def _authenticate(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> tuple[bytes, wire.Envelope]:
        ours = wire.new_nonce()
        writer.write(wire.hello(ours))
        binding = wire.channel_binding(ours, wire.parse_hello(await reader.readexactly(wire.HELLO_SIZE)))
        data = await read_frame(reader, wire.MAX_FIRST_REQUEST)
        return binding, wire.open_envelope(self.node.key, data, binding)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = writer.get_extra_info("peername")[0]
        node = self.node
        if self._open >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self._open += 1
        try:
            if node.canonical(IPv4Address(source)) is None:
                raise AuthenticationError("peer is not in our map")
            self._wait_for_authentication(source, writer)
            try:
                binding, env = await asyncio.wait_for(self._authenticate(reader, writer), AUTH_TIMEOUT)
            finally:
                self._done_waiting(writer)
            if node.canonical(env.sender) is None:
                raise AuthenticationError("peer is not in our map")
            sealer = wire.Sealer(node.key, node.our_ip)
            sender, seq = env.sender, env.seq
            while True:
                if env.kind != wire.RPC_REQUEST:
                    raise ProtocolError(f"unexpected message kind {env.kind}")
                fields = json.loads(env.payload)
                op = fields.get("op") if isinstance(fields, dict) else None
                try:
                    request = protocol.decode(op, fields, protocol.PEER)
                except ProtocolError as err:
                    if op in ("migrate-in", "reattach"):
                        raise  # garbled: the connection goes
                    request, reply = None, protocol.fault("protocol", str(err))
                if isinstance(request, protocol.MigrateInRequest):
                    await self._migrate_in(request, env.sender, writer, sealer, binding)
                    return
                if isinstance(request, protocol.PeerReattachRequest):
                    await self._reattach(request, env.sender, writer, sealer, binding)
                    return
                if isinstance(request, protocol.RelocateRequest):
                    reply = self.relocate(request, env.sender)
                elif request is not None:
                    reply = self.handle(request)
                writer.write(sealer.seal(wire.RPC_REPLY, json.dumps(reply).encode(), binding=binding))
                await writer.drain()
                try:
                    data = await asyncio.wait_for(read_frame(reader), FRAME_TIMEOUT)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                env = wire.open_envelope(node.key, data, binding)
                # The binding makes frames of other connections fail; within this one,
                # the caller's sequence numbers only grow.
                if env.sender != sender or env.seq <= seq:
                    raise AuthenticationError("replayed message")
                seq = env.seq
        except AuthenticationError as err:
            node.auth_violation(source, str(err))
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            # gone, too slow, or pushed out before authenticating: nothing worth a line each
            pass
        except (ProtocolError, ValueError) as err:
            node.stats["garbled"] += 1
            node.log.debug("garbled peer request", source=source, error=str(err))
        except Exception as err:  # never let a peer crash the daemon
            node.log.error("peer request failed", source=source, error=f"{type(err).__name__}: {err}")
        finally:
            self._open -= 1
            writer.close()

    async def _migrate_in(
        self,
        request: protocol.MigrateInRequest,
        origin: IPv4Address,
        writer: asyncio.StreamWriter,
        sealer: wire.Sealer,
        binding: bytes,
    ) -> None:
        """A process wants to move here: admission, then the connection is the guest
        host's (nothing more is read here: the image follows our answer)."""
        node = self.node
        writer.transport.pause_reading()
        origin = node.canonical(origin)
        # a node whose admission rule is gone (disabled, not replaced) takes no one
        admission = first_answer(
            node.pm.hook.mosix_admit_guest,
            default=Admission.refuse("other node refused"),
            request=handshake.admission_request(node, request, origin),
            node=NodeContext.of(node),
        )
        # every guest runs as a uid of its own: with none free, the node cannot take it
        uid = handshake.take_guest_uid(node) if admission.accepted else None
        if admission.accepted and uid is None:
            reply = protocol.refusal(handshake.REFUSED)
        else:
            reply = protocol.answer(protocol.NoFields()) if admission.accepted else protocol.refusal(admission.reason)
        try:
            writer.write(sealer.seal(wire.RPC_REPLY, json.dumps(reply).encode(), binding=binding))
            await writer.drain()
        except BaseException:
            if uid is not None:
                await handshake.guest_uids(node).give_back(uid, node.log)
            raise
        if uid is not None:
            await handshake.start_guest_host(node, writer, request, origin, uid)

    async def _reattach(
        self,
        request: protocol.PeerReattachRequest,
        origin: IPv4Address,
        writer: asyncio.StreamWriter,
        sealer: wire.Sealer,
        binding: bytes,
    ) -> None:
        """Home makes a cut link to one of our guests again: the connection goes to the
        guest host waiting for it, which the guest's token (only home and it know it)
        names. No admission: the guest is here already."""
        from mosix_core.remote.link import NO_SUCH_GUEST, reach_waiting

        writer.transport.pause_reading()
        waiting = reach_waiting(request.token)
        reply = protocol.answer(protocol.NoFields()) if waiting is not None else protocol.refusal(NO_SUCH_GUEST)
        try:
            writer.write(sealer.seal(wire.RPC_REPLY, json.dumps(reply).encode(), binding=binding))
            await writer.drain()
        except BaseException:
            if waiting is not None:
                waiting.close()
            raise
        if waiting is not None:
            handshake.reattach_guest_host(self.node, writer, waiting, self.node.canonical(origin))

    def relocate(self, request: protocol.RelocateRequest, sender: IPv4Address) -> dict:
        """Move our process ``request.pid`` on from ``sender``, where it runs, to
        ``request.to`` (its supervisor does it; the reply does not wait for the move)."""
        node = self.node
        row = node.proctable.get(request.pid)
        here = node.canonical(sender)
        target = IPv4Address(request.to)
        if row is None or row.is_guest or here is None or row.where != str(here):
            return protocol.refusal(f"{request.pid}: not a process of ours running on {sender}")
        if not node.is_known_address(target) or target in (here, node.our_ip):
            return protocol.refusal(f"{request.to}: not in map")
        node.log.info("moving on at its node's request", pid=row.pid, **{"from": str(here)}, to=str(target))
        asyncio.get_running_loop().run_in_executor(None, self._ask_supervisor, row.pid, str(target))
        return protocol.answer(protocol.NoFields())

    def _ask_supervisor(self, pid: int, to: str) -> None:
        try:
            move_by_supervisor(pid, to, wait=False)
        except MosixError as err:
            self.node.log.info("moving on failed", pid=pid, to=to, error=str(err))

    def handle(self, request: protocol.PeerPingRequest | protocol.PeerStatusRequest) -> dict:
        """The wire reply to a request that is answered at once."""
        node = self.node
        if isinstance(request, protocol.PeerPingRequest):
            return protocol.answer(
                protocol.PeerPingReply(ip=str(node.our_ip), version=__version__, protocol=PROTOCOL_VERSION)
            )
        node.refresh_local(time.monotonic())
        st = node.local_status()
        return protocol.answer(protocol.PeerStatusReply(load=st.load, speed=st.speed, ncpus=st.ncpus, state=st.state))


async def call(node, ip: IPv4Address, request: dict, timeout: float = 5.0) -> dict:
    """Send one authenticated request to another node's peer listener and return the
    reply as it came (:func:`protocol.outcome` reads it)."""
    sealer = wire.Sealer(node.key, node.our_ip)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(str(ip), node.settings.tcp_port, local_addr=(str(node.our_ip), 0), limit=STREAM_LIMIT),
        timeout,
    )

    async def exchange() -> dict:
        ours = wire.new_nonce()
        writer.write(wire.hello(ours))
        binding = wire.channel_binding(wire.parse_hello(await reader.readexactly(wire.HELLO_SIZE)), ours)
        writer.write(sealer.seal(wire.RPC_REQUEST, json.dumps(request).encode(), binding=binding))
        await writer.drain()
        env = wire.open_envelope(node.key, await read_frame(reader), binding)
        if env.kind != wire.RPC_REPLY:
            raise ProtocolError(f"unexpected message kind {env.kind}")
        return json.loads(env.payload)

    try:
        return await asyncio.wait_for(exchange(), timeout)
    finally:
        writer.close()
