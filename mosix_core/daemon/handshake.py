"""mosd's part in moving a process between nodes: the authenticated handshake.

The home ``mosrun`` is an ordinary user's program and holds no cluster secret, so
it asks its own mosd (control op ``migrate_out``) to open the way: mosd connects
to the target's peer port, sends a sealed ``migrate-in`` request (who, from where,
how much memory) and reads the sealed answer. The target's mosd decides with the
``mosix_admit_guest`` hook; when it accepts, it gives the guest a uid of its own
(:class:`GuestUids`) and starts a guest host (:mod:`mosix_core.remote.host`) on
its end of the connection, which becomes that uid, and the source mosd hands its end to mosrun
(SCM_RIGHTS). From then on
the connection carries the image and the forwarded calls directly, between the two
processes that own the move, with no daemon in the data path.
"""

from __future__ import annotations

import asyncio
import fcntl
import grp
import json
import os
import pwd
import socket
import sys
import time
import weakref
from ipaddress import IPv4Address
from pathlib import Path

from attrs import define, field

from mosix_core.cluster.proctable import ProcessRecord
from mosix_core.contract.records import AdmissionRequest
from mosix_core.daemon import protocol
from mosix_core.errors import AuthenticationError, ProtocolError, Refused
from mosix_core.linux import procfs
from mosix_core.net import wire
from mosix_core.remote.host import guest_host_options

CONNECT_TIMEOUT = 5.0
#: a lock file per guest uid in use, shared by every mosd of the machine (root's alone)
GUEST_UID_LOCKS = Path("/run/mosix/guest-uids")
#: run as a guest uid that is given back: kill(-1) from it reaches every process of that
#: uid and no other (the kernel holds off fork meanwhile, so none slips through)
SWEEP = "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept ProcessLookupError:\n    pass\n"
#: the whole environment of a guest host: nothing of mosd's (HOME, the container's name...)
GUEST_HOST_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C"}
NO_RESPONSE, REFUSED, NOT_IN_MAP, ALREADY_THERE = "no response", "other node refused", "not in map", "already there"


class MigrationRefused(Refused):
    """The target will not (or cannot) take the process: ``reason`` is the manual's."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@define
class GuestUids:
    """The uids guests run as here (mosd.conf ``guest_uids``), one per guest host: taken
    when a guest arrives, given back once its guest host has ended and nothing runs as
    it any more. A uid is taken under an exclusive lock on a file of its own in
    ``lock_dir`` (None: no locks, when mosd is not root and guests cannot change uid),
    so the mosd daemons that share a machine never give one uid to two guests; uids
    that an account has, or a process this mosd did not start runs as, are skipped."""

    lock_dir: Path | None = GUEST_UID_LOCKS
    held: dict[int, int] = field(factory=dict)  # uid -> descriptor of its lock (-1: none)
    next_uid: int = 0  # taken in turn: a uid given back rests longest
    foreign: set[int] | None = None

    def take(self, first: int, last: int) -> int | None:
        """A free uid of ``first..last``, now ours; None when every one is taken.
        Raises OSError when the lock directory cannot be made."""
        if self.foreign is None:
            self.foreign = uids_in_use(first, last) - set(self.held)
        uid = self._first_free(first, last)
        if uid is None:  # what was running as some may have ended
            self.foreign = uids_in_use(first, last) - set(self.held)
            uid = self._first_free(first, last)
        return uid

    def _first_free(self, first: int, last: int) -> int | None:
        size = last - first + 1
        start = self.next_uid - first if first <= self.next_uid <= last else 0
        for step in range(size):
            uid = first + (start + step) % size
            if uid in self.held or uid in self.foreign:
                continue
            fd = self._lock(uid)
            if fd is not None:
                self.held[uid] = fd
                self.next_uid = uid + 1
                return uid
        return None

    def _lock(self, uid: int) -> int | None:
        if self.lock_dir is None:
            return -1
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None  # another mosd of this machine has it
        return fd

    async def give_back(self, uid: int, log) -> None:
        """``uid``'s guest host has ended: kill whatever still runs as it (a guest that got
        round the system-call filter may have forked), then it is free again. One that
        cannot be cleared is kept, never given to another guest."""
        if uid not in self.held:
            return
        if os.geteuid() == 0:
            try:
                sweep = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-I",
                    "-S",
                    "-c",
                    SWEEP,
                    user=uid,
                    group=uid,
                    extra_groups=[],
                    env={},
                    cwd="/",
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                failed = await sweep.wait()
            except OSError as err:
                failed = err
            if failed:
                log.error(
                    "a guest uid stays out of use: what runs as it could not be killed", uid=uid, error=str(failed)
                )
                return
        fd = self.held.pop(uid)
        if fd >= 0:
            os.close(fd)

    def is_guest(self, uid: int, first: int, last: int) -> bool:
        return first <= uid <= last or uid in self.held


def uids_in_use(first: int, last: int) -> set[int]:
    """The uids of ``first..last`` that an account or group has, or a process runs as."""
    used = {e.pw_uid for e in pwd.getpwall()} | {e.gr_gid for e in grp.getgrall()}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = procfs.status_fields(int(entry))
            if fields["State"].split()[0] in ("Z", "X"):
                continue  # a zombie runs nothing (an init may never reap it)
            used.update(int(word) for name in ("Uid", "Gid") for word in fields[name].split())
        except (OSError, ValueError, KeyError, IndexError):
            continue  # it has just ended
    return {uid for uid in used if first <= uid <= last}


_guest_uids: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def guest_uids(node) -> GuestUids:
    """This node's guest uids (made on first use)."""
    uids = _guest_uids.get(node)
    if uids is None:
        uids = _guest_uids[node] = GuestUids(lock_dir=GUEST_UID_LOCKS if os.geteuid() == 0 else None)
    return uids


def is_guest_uid(node, uid: int) -> bool:
    """Does ``uid`` belong to guests here (the configured range, or one still in use)?"""
    return guest_uids(node).is_guest(uid, *node.settings.guest_uids)


def take_guest_uid(node) -> int | None:
    """A uid for a guest that arrives; None (logged) when none is free."""
    first, last = node.settings.guest_uids
    try:
        uid = guest_uids(node).take(first, last)
    except OSError as err:
        node.log.error("cannot lock a guest uid", directory=str(GUEST_UID_LOCKS), error=str(err))
        return None
    if uid is None:
        node.log.warning("guest refused: every guest uid is in use", guest_uids=f"{first}-{last}")
    return uid


# -- the source's side ----------------------------------------------------------------------------
def open_migration(
    sealer: wire.Sealer,
    key: bytes,
    target: IPv4Address,
    port: int,
    request: protocol.MigrateInRequest | protocol.PeerReattachRequest,
) -> socket.socket:
    """Connect to ``target``'s mosd and have it accept the process (blocking); the
    connected socket on success. Raises :class:`MigrationRefused`. A
    :class:`~protocol.PeerReattachRequest`: a cut link home made again to the guest
    host already there. (The whole request fits in the small first frame the target
    accepts, wire.MAX_FIRST_REQUEST: the command line is cut to what it keeps.)"""
    op = protocol.op_of(request, protocol.PEER)
    try:
        sock = socket.create_connection(
            (str(target), port), timeout=CONNECT_TIMEOUT, source_address=(str(sealer.sender), 0)
        )
    except OSError:
        raise MigrationRefused(NO_RESPONSE) from None
    try:
        # Sealed over both hellos' nonces: the target takes this request on this connection only.
        ours = wire.new_nonce()
        sock.sendall(wire.hello(ours))
        binding = wire.channel_binding(wire.parse_hello(_exactly(sock, wire.HELLO_SIZE)), ours)
        sock.sendall(
            sealer.seal(wire.RPC_REQUEST, json.dumps({"op": op, **protocol.encode(request)}).encode(), binding=binding)
        )
        header = _exactly(sock, wire.HEADER.size)
        length = wire.peek_length(header, wire.MAX_RPC_PAYLOAD)
        envelope = wire.open_envelope(key, header + _exactly(sock, length - wire.HEADER.size), binding)
        if envelope.kind != wire.RPC_REPLY:
            raise ProtocolError(f"unexpected message kind {envelope.kind}")
        answer = json.loads(envelope.payload)
    except (OSError, ProtocolError, AuthenticationError, ValueError):
        sock.close()
        raise MigrationRefused(NO_RESPONSE) from None
    try:
        protocol.decode_reply(op, protocol.outcome(answer), protocol.PEER)
    except Refused as err:
        sock.close()
        raise MigrationRefused(str(err)) from None
    except (ProtocolError, TypeError):  # a fault, or a garbled answer: the other node refused
        sock.close()
        raise MigrationRefused(REFUSED) from None
    except BaseException:
        sock.close()
        raise
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
def admission_request(node, request: protocol.MigrateInRequest, origin: IPv4Address) -> AdmissionRequest:
    return AdmissionRequest(
        origin=origin, memory_mb=request.memory_mb, from_local_cluster=node.config.is_local_cluster(origin)
    )


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
            sys.executable,
            "-m",
            "mosix_core.remote.host",
            "--spare",
            str(theirs.fileno()),
            pass_fds=(theirs.fileno(),),
            stdin=asyncio.subprocess.DEVNULL,
            env=guest_host_env(),
            cwd="/",
        )
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


def guest_host_env() -> dict[str, str]:
    """A guest host's environment: GUEST_HOST_ENV, and where mosd's own code is when
    PYTHONPATH says so (the guest host must run the same code)."""
    env = dict(GUEST_HOST_ENV)
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


async def start_guest_host(
    node, writer: asyncio.StreamWriter, request: protocol.MigrateInRequest, origin: IPv4Address, uid: int
) -> None:
    """Hand this end of the connection to a guest host — the spare one if there is, a
    new one if not — that becomes ``uid`` (from :func:`take_guest_uid`), and list it as
    a guest. The uid is given back when that guest host ends."""
    loop = asyncio.get_running_loop()
    process = None
    try:
        fd = os.dup(writer.get_extra_info("socket").fileno())
        try:
            args = {
                "uid": uid,
                "gid": uid,
                "compress": not node.config.is_proximate(origin),
                "wall_clock_tolerance_ms": node.settings.wall_clock_tolerance_ms,
                "forward_spin_us": node.settings.forward_spin_us,
            }
            spare, node.spare_guest_host = node.spare_guest_host, None
            if spare is not None and spare.hand_over(fd, args):
                process = spare.process
            else:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "mosix_core.remote.host",
                    "--fd",
                    str(fd),
                    *guest_host_options(args),
                    pass_fds=(fd,),
                    stdin=asyncio.subprocess.DEVNULL,
                    env=guest_host_env(),
                    cwd="/",
                )
                loop.create_task(_reap(process))
        finally:
            os.close(fd)
    finally:
        loop.create_task(_give_back_after(node, process, uid))
    home_user = request.user
    record = ProcessRecord(
        pid=process.pid,
        uid=uid,
        command=request.command,
        home=origin,
        origpid=request.pid,
        home_uid=request.uid,
        home_user=home_user if home_user.isprintable() and 0 < len(home_user) <= 32 else None,
        where="here",
        nmigs=request.nmigs,
        started=time.time(),
        locked=request.locked,
        cpujob=request.cpujob,
        decayrate=request.decayrate,
        needmem=request.memory_mb,
    )
    try:
        node.watch_process(record)
    except ProtocolError:
        pass  # it has already ended
    node.log.info(
        "guest arrived",
        home=str(origin),
        pid=request.pid,
        uid=uid,
        compress=args["compress"],
        automatic=request.automatic,
    )
    if request.automatic:
        node.balancer.counters.arrived += 1
    asyncio.get_running_loop().create_task(keep_a_spare_guest_host(node))


async def _reap(process: asyncio.subprocess.Process) -> None:
    await process.wait()


async def _give_back_after(node, process: asyncio.subprocess.Process | None, uid: int) -> None:
    if process is not None:
        await process.wait()
    await guest_uids(node).give_back(uid, node.log)


def reattach_guest_host(node, writer: asyncio.StreamWriter, waiting, origin: IPv4Address) -> bool:
    """Hand this end of the connection to the guest host ``waiting`` for it (reached
    with :func:`mosix_core.remote.link.reach_waiting`): its link home is whole again."""
    from mosix_core.remote.link import hand_to_waiting

    fd = os.dup(writer.get_extra_info("socket").fileno())
    try:
        handed = hand_to_waiting(waiting, fd, {"op": "reattach", "home": str(origin)})
    finally:
        os.close(fd)
    node.log.info("guest link made again" if handed else "guest gone before its link was made again", home=str(origin))
    return handed
