"""The control operations that move processes: opening the way for ours to go,
getting rid of guests, calling ours back.

``migrate_out`` ``pid``, ``to``: the authenticated handshake with the target's mosd,
                whose connection comes back with the reply (SCM_RIGHTS); refused
                with the manual's reason.
``reattach``    ``pid``, ``to``, ``token``: the cut link of a process away, made again.

Getting rid of guests, calling our own processes back (all root only):

``out``         ``pid``: send that guest home (``mosmigrate {pid} out``). ``pid`` is the
                guest as listed here — its row, the guest host's pid (``mosps -V``) —
                or the guest process itself (traced by its host). Returns at once, as
                mosmigrate(1) says. The guest host is signalled (:data:`SEND_HOME`);
                one that was not listening yet (still receiving its guest: the signal
                is ignored, not fatal) is signalled again every second until its
                ``SigCgt`` shows it heard.
``expel``       every guest here goes home (``mosctl expel``); returns once all those
                present when it was asked have gone, or fails after ``timeout`` seconds
                naming those left. Each is signalled every second while it is here (a
                move home that failed is tried again). Guests that arrive meanwhile
                are not waited for: as the manual says, ``mosctl block`` first.
``bring``       every process whose home is here and that runs elsewhere (or is
                leaving) is asked home through its mosrun supervisor (as ``mosmigrate
                {pid} home`` does); returns once all are back (or ended), or fails after
                ``timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
from ipaddress import IPv4Address

from mosix_core.cluster.proctable import ProcessRecord, ProcessTable
from mosix_core.daemon import handshake
from mosix_core.daemon import protocol as p
from mosix_core.daemon.control_base import Operations, connection_for
from mosix_core.errors import MosixError, Refused
from mosix_core.linux import procfs
from mosix_core.mosrun import control_socket as supervisors
from mosix_core.remote import SEND_HOME
from mosix_core.users import user_name

MOVE_TIMEOUT = p.MOVE_TIMEOUT  # how long expel / bring wait for the processes to move, by default
NUDGE_EVERY = 1.0  # asking again (a lost signal, a move home that failed)
POLL_EVERY = 0.05


def present(table: ProcessTable, records: list[ProcessRecord]) -> list[ProcessRecord]:
    """Those of ``records`` still in the process table (a row replaced since is gone)."""
    return [r for r in records if table.get(r.pid) is r]


class HomeSender:
    """Signals guest hosts :data:`SEND_HOME`, each through a pidfd of its own (opened
    while its row is here, so a pid used again is never signalled)."""

    def __init__(self, table: ProcessTable, records: list[ProcessRecord], *, insist: bool) -> None:
        self.table = table
        self.records = records
        self.insist = insist
        self.pidfds: dict[int, int] = {}
        self.heard: set[int] = set()  # hosts that were listening when signalled

    def left(self) -> list[ProcessRecord]:
        return present(self.table, self.records)

    def nudge(self) -> None:
        for record in self.left():
            if record.pid in self.heard and not self.insist:
                continue
            try:
                if record.pid not in self.pidfds:
                    self.pidfds[record.pid] = os.pidfd_open(record.pid)
                caught = procfs.signal_set(procfs.status_fields(record.pid).get("SigCgt", "0"))
                signal.pidfd_send_signal(self.pidfds[record.pid], SEND_HOME)
            except OSError:
                continue  # it has just ended
            if SEND_HOME in caught:
                self.heard.add(record.pid)

    def done(self) -> bool:
        """Nothing more to do but wait: every host left has heard (and we do not insist)."""
        return not self.insist and all(r.pid in self.heard for r in self.left())

    def close(self) -> None:
        for fd in self.pidfds.values():
            os.close(fd)
        self.pidfds.clear()


class MoveOperations(Operations):
    # -- moving our processes out ------------------------------------------------------------------
    def target_node(self, text: str | None) -> IPv4Address | None:
        """The node of the map ``text`` names (a number, address or host); None if none."""
        try:
            return self.node.canonical(self.resolve(text))
        except MosixError:
            return None

    async def op_migrate_out(self, req: p.MigrateOutRequest, uid: int) -> p.MigrateOutReply:
        """Open the way for the caller's process ``pid`` to move to node ``to``: the
        authenticated handshake with the target's mosd, whose accepted connection comes
        back with the reply (SCM_RIGHTS). Refused with the manual's reason."""
        node, conn = self.node, connection_for("migrate_out")
        owner = self.process_owner(req.pid, uid)
        target = self.target_node(req.to)
        if target is None:
            raise Refused(handshake.NOT_IN_MAP)
        if target == node.our_ip or str(target) == req.now_at:
            raise Refused(handshake.ALREADY_THERE)
        row = node.proctable.get(req.pid)
        request = p.MigrateInRequest(
            uid=owner,
            user=user_name(owner),
            pid=req.pid,
            memory_mb=req.memory_mb or 0,
            command=req.command[: p.MAX_PEER_COMMAND],
            nmigs=req.nmigs,
            automatic=req.automatic,
            locked=bool(row and row.locked),
            cpujob=bool(row and row.cpujob),
            decayrate=row.decayrate if row else p.DEFAULT_DECAY,
        )
        loop = asyncio.get_running_loop()
        try:
            sock = await loop.run_in_executor(
                None, handshake.open_migration, node.sealer, node.key, target, node.settings.tcp_port, request
            )
        except handshake.MigrationRefused as err:
            raise Refused(err.reason, target=str(target)) from None
        conn.handing_over = sock
        return p.MigrateOutReply(target=str(target), proximate=node.config.is_proximate(target))

    async def op_reattach(self, req: p.ReattachRequest, uid: int) -> p.ReattachReply:
        """Make the cut link of the caller's process ``pid``, away on node ``to``, again:
        the authenticated handshake with that node's mosd, which hands the connection to
        the guest host waiting there for the guest ``token`` names. The connection comes
        back with the reply; refused with why not (``no such guest``: none waits)."""
        node, conn = self.node, connection_for("reattach")
        self.process_owner(req.pid, uid)
        target = self.target_node(req.to)
        if target is None:
            raise Refused(handshake.NOT_IN_MAP)
        loop = asyncio.get_running_loop()
        try:
            request = p.PeerReattachRequest(token=req.token, pid=req.pid)
            sock = await loop.run_in_executor(
                None, handshake.open_migration, node.sealer, node.key, target, node.settings.tcp_port, request
            )
        except handshake.MigrationRefused as err:
            raise Refused(err.reason, target=str(target)) from None
        conn.handing_over = sock
        return p.ReattachReply(target=str(target))

    # -- getting rid of guests, calling our processes back ----------------------------------------------
    def guest_row(self, pid: int) -> ProcessRecord:
        """The guest ``pid`` names here: the guest host's row (the pid ``mosps -V``
        lists), or the row of the host tracing the guest process ``pid``."""
        table = self.node.proctable
        record = table.get(pid)
        if record is None:
            try:
                tracer = int(procfs.status_fields(pid).get("TracerPid", "0"))
            except (OSError, ValueError):
                raise Refused(f"{pid}: No such process") from None
            record = table.get(tracer) if tracer else None
            if record is None or not record.is_guest:
                raise Refused(f"{pid}: not a MOSIX process")
        if not record.is_guest:
            raise Refused(f"{pid}: not a guest process (its home is this node)")
        return record

    def op_out(self, req: p.OutRequest, uid: int) -> p.OutReply:
        """``mosmigrate {pid} out``: the guest goes home; no waiting (mosmigrate(1))."""
        self.require_root(uid)
        record = self.guest_row(req.pid)
        self.node.log.info("guest sent out", pid=record.pid, home=str(record.home), origpid=record.origpid)
        task = asyncio.get_running_loop().create_task(self.send_guests_home([record], MOVE_TIMEOUT, insist=False))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return p.OutReply(pid=record.pid, home=str(record.home), origpid=record.origpid)

    async def op_expel(self, req: p.ExpelRequest, uid: int) -> p.ExpelReply:
        """``mosctl expel``: every guest goes home; the reply once they all have."""
        self.require_root(uid)
        timeout = req.timeout
        guests = self.node.proctable.guests()
        self.node.log.info("expelling guests", count=len(guests))
        left = await self.send_guests_home(guests, timeout, insist=True)
        if left:
            raise MosixError(
                f"{len(left)} guest process(es) did not leave within {timeout:g} seconds "
                f"(pid {', '.join(str(r.pid) for r in left)})"
            )
        return p.ExpelReply(expelled=len(guests))

    async def op_bring(self, req: p.BringRequest, uid: int) -> p.BringReply:
        """``mosctl bring``: every process of ours running elsewhere comes home; the
        reply once they all have (or ended)."""
        self.require_root(uid)
        timeout = req.timeout
        away = [r for r in self.node.proctable.local() if r.is_away or r.where == "leaving"]
        self.node.log.info("bringing processes home", count=len(away))
        left = await self.bring_home(away, timeout)
        if left:
            raise MosixError(
                f"{len(left)} process(es) did not come back within {timeout:g} seconds "
                f"(pid {', '.join(str(r.pid) for r in left)})"
            )
        return p.BringReply(brought=len(away))

    async def send_guests_home(
        self, records: list[ProcessRecord], timeout: float, *, insist: bool
    ) -> list[ProcessRecord]:
        """Signal the guests' hosts to send them home; those still here after
        ``timeout`` seconds. A host that was not listening yet (still receiving its
        guest) is signalled again every NUDGE_EVERY seconds; one that was is left
        alone unless ``insist`` (then a move home that failed is tried again)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sender = HomeSender(self.node.proctable, records, insist=insist)
        try:
            next_nudge = loop.time()
            while (left := sender.left()) and loop.time() < deadline and not sender.done():
                if loop.time() >= next_nudge:
                    sender.nudge()
                    next_nudge = loop.time() + NUDGE_EVERY
                await asyncio.sleep(POLL_EVERY)
            return left
        finally:
            sender.close()

    async def bring_home(self, records: list[ProcessRecord], timeout: float) -> list[ProcessRecord]:
        """Ask each process's supervisor to bring it home (again every NUDGE_EVERY
        seconds while it is still elsewhere); those not back after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        asking: dict[int, asyncio.Future] = {}
        next_ask = loop.time()

        def coming(records: list[ProcessRecord]) -> list[ProcessRecord]:
            return [r for r in present(self.node.proctable, records) if r.where != "here"]

        while (left := coming(records)) and loop.time() < deadline:
            if loop.time() >= next_ask:
                for record in left:
                    pending = asking.get(record.pid)
                    if record.is_away and (pending is None or pending.done()):
                        asking[record.pid] = loop.run_in_executor(None, self._ask_home, record.pid)
                next_ask = loop.time() + NUDGE_EVERY
            await asyncio.sleep(POLL_EVERY)
        return left

    def _ask_home(self, pid: int) -> None:
        """``mosmigrate {pid} home`` from the daemon (blocking: run in a thread)."""
        try:
            supervisors.request(pid, "home", timeout=NUDGE_EVERY * 5)
        except MosixError as err:  # ended meanwhile, or its supervisor is busy
            self.node.log.debug("bring: asking a process home failed", pid=pid, error=str(err))
