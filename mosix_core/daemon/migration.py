"""mosd's part in moving a process between nodes: the authenticated handshake.

The home ``mosrun`` is an ordinary user's program and holds no cluster secret, so
it asks its own mosd (control op ``migrate_out``) to open the way: mosd connects
to the target's peer port, sends a sealed ``migrate-in`` request (who, from where,
how much memory) and reads the sealed answer. The target's mosd decides with the
``mosix_admit_guest`` hook; when it accepts, it starts a guest host
(:mod:`mosix_core.remote.host`) on its end of the connection, under the guest
identity, and the source mosd hands its end to mosrun (SCM_RIGHTS). From then on
the connection carries the image and the forwarded calls directly, between the two
processes that own the move, with no daemon in the data path.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import socket
import sys
import time
from ipaddress import IPv4Address

from mosix_core.errors import AuthenticationError, MosixError, ProtocolError
from mosix_core.net import wire
from mosix_core.placement import AdmissionRequest
from mosix_core.proctable import ProcessRecord
from mosix_core.remote.host import guest_host_options

CONNECT_TIMEOUT = 5.0
GUEST_USER = "nobody"
NO_RESPONSE, REFUSED, NOT_IN_MAP = "no response", "other node refused", "not in map"


class MigrationRefused(MosixError):
    """The target will not (or cannot) take the process: ``reason`` is the manual's."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def guest_identity() -> tuple[int, int]:
    """The unprivileged uid and gid guests run as here."""
    try:
        entry = pwd.getpwnam(GUEST_USER)
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


# -- the source's side ----------------------------------------------------------------------------
def open_migration(sealer: wire.Sealer, key: bytes, target: IPv4Address, port: int, request: dict) -> socket.socket:
    """Connect to ``target``'s mosd and have it accept the process (blocking); the
    connected socket on success. Raises :class:`MigrationRefused`."""
    try:
        sock = socket.create_connection((str(target), port), timeout=CONNECT_TIMEOUT, source_address=(str(sealer.sender), 0))
    except OSError:
        raise MigrationRefused(NO_RESPONSE) from None
    try:
        sock.sendall(sealer.seal(wire.RPC_REQUEST, json.dumps({"op": "migrate-in", **request}).encode()))
        header = _exactly(sock, wire.HEADER.size)
        envelope = wire.open_envelope(key, header + _exactly(sock, wire.peek_length(header) - wire.HEADER.size))
        answer = json.loads(envelope.payload)
    except (OSError, ProtocolError, AuthenticationError, ValueError):
        sock.close()
        raise MigrationRefused(NO_RESPONSE) from None
    if not isinstance(answer, dict) or not answer.get("ok"):
        sock.close()
        raise MigrationRefused(str(answer.get("error", REFUSED)) if isinstance(answer, dict) else REFUSED)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ProtocolError("the connection closed")
        data += chunk
    return bytes(data)


# -- the target's side ----------------------------------------------------------------------------
def admission_request(node, request: dict, origin: IPv4Address) -> AdmissionRequest:
    memory = request.get("memory_mb", 0)
    if not isinstance(memory, int) or isinstance(memory, bool) or memory < 0:
        raise ProtocolError("migrate-in: memory_mb must be a non-negative integer")
    return AdmissionRequest(origin=origin, memory_mb=memory,
                            from_local_cluster=node.config.is_local_cluster(origin))


class SpareGuestHost:
    """A guest host started before it is needed — Python and the image engine loaded,
    ~0.1 s of a move's start on this VM — waiting on ``control`` for a connection and
    its arguments. It exits when mosd closes ``control`` (mosd's end)."""

    def __init__(self, process: asyncio.subprocess.Process, control: socket.socket) -> None:
        self.process = process
        self.control = control

    def hand_over(self, fd: int, args: dict) -> bool:
        """Give it the connection; False if it cannot take it (it has died)."""
        try:
            if self.process.returncode is not None:
                return False
            socket.send_fds(self.control, [json.dumps(args).encode()], [fd])
            return True
        except OSError:
            return False
        finally:
            self.control.close()


async def spawn_spare_guest_host() -> SpareGuestHost:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mosix_core.remote.host", "--spare", str(theirs.fileno()),
            pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    asyncio.get_running_loop().create_task(_reap(process))
    return SpareGuestHost(process, ours)


async def keep_a_spare_guest_host(node) -> None:
    """Have a guest host ready for the next process that arrives."""
    if node.spare_guest_host is not None:
        return
    try:
        node.spare_guest_host = await spawn_spare_guest_host()
    except OSError as err:
        node.log.error("cannot start a spare guest host", error=str(err))


async def start_guest_host(node, writer: asyncio.StreamWriter, request: dict, origin: IPv4Address) -> None:
    """Hand this end of the connection to a guest host — the spare one if there is, a
    new one if not — and list it as a guest."""
    raw = writer.get_extra_info("socket")
    fd = os.dup(raw.fileno())
    try:
        uid, gid = guest_identity()
        args = {"uid": uid, "gid": gid, "compress": not node.config.is_proximate(origin),
                "wall_clock_tolerance_ms": node.settings.wall_clock_tolerance_ms,
                "forward_spin_us": node.settings.forward_spin_us}
        spare, node.spare_guest_host = node.spare_guest_host, None
        if spare is not None and spare.hand_over(fd, args):
            process = spare.process
        else:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mosix_core.remote.host", "--fd", str(fd), *guest_host_options(args),
                pass_fds=(fd,), stdin=asyncio.subprocess.DEVNULL)
            asyncio.get_running_loop().create_task(_reap(process))
    finally:
        os.close(fd)
    origpid = request.get("pid")
    record = ProcessRecord(pid=process.pid, uid=uid, command=str(request.get("command", "?"))[:200],
                           home=origin, origpid=origpid if isinstance(origpid, int) else None,
                           where="here", nmigs=int(request.get("nmigs", 0) or 0), started=time.time())
    try:
        node.watch_process(record)
    except ProtocolError:
        pass                              # it has already ended
    node.log.info("guest arrived", home=str(origin), pid=request.get("pid"), compress=args["compress"])
    asyncio.get_running_loop().create_task(keep_a_spare_guest_host(node))


async def _reap(process: asyncio.subprocess.Process) -> None:
    await process.wait()
