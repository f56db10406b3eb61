"""mosd's balancer: processes move by themselves (mosix(7) INTRODUCTION).

About once a period (jittered) the balancer measures the MOSIX processes running on this
node — its own at home and its guests (:mod:`mosix_core.cluster.process_meter`) —, builds
the node's view of the cluster from gossip, and asks the hook bus
(``mosix_migration_decision``; the built-in policy is ``plugins/balancing.py``) whether one
of them should move, and where. A decision is carried out by what a manual move uses: a
process at home is moved by its supervisor (``migrate``, marked ``automatic`` so that a
locked process refuses and a failure is not said to the program); a guest goes home as
``mosmigrate out`` sends it. One move at a time per node; each is logged with the pid, from,
to, the reason and the gain expected.

A guest's move to a third node is its home's to make (home runs every move of its
processes): the balancer asks home (peer op ``relocate``), and home's supervisor moves it
on, as ``mosmigrate`` at home would.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

import attrs

from mosix_core.cluster.process_meter import ProcessMeter
from mosix_core.cluster.proctable import ProcessRecord
from mosix_core.cluster.resources import standard_load
from mosix_core.contract.balancing import BalanceView, MigrationDecision, NodeFacts, ProcessFacts
from mosix_core.contract.plugins import first_answer
from mosix_core.errors import MosixError
from mosix_core.linux import procfs

if TYPE_CHECKING:
    from mosix_core.daemon.node import Node

#: how long an automatic move may take before the balancer decides again (a move ends
#: earlier: when the supervisor answers, or when the guest has left)
MOVE_TIMEOUT = 120.0
#: how long a supervisor may take to take a move on (not to make it)
ASK_TIMEOUT = 10.0
#: after a process refused to move (locked, or its move failed) it is left alone this long
REFUSED_FOR = 30.0
#: a node's own moves to a target count in the view this long (its gossip catches up)
SENT_MEMORY = 10.0
#: a -1 written before the process was measured waits this long for its measurement
ASKED_FOR = 10.0


@attrs.define
class Counters:
    """Automatic moves, for ``mosctl localstatus``."""

    out: int = 0  # processes this node's balancer moved away (or sent home)
    failed: int = 0  # decisions whose move failed or was refused
    arrived: int = 0  # guests that came here by another node's balancer


@attrs.define
class Pending:
    """The move under way that this balancer decided."""

    decision: MigrationDecision
    since: float
    task: asyncio.Future | None = None


def move_by_supervisor(pid: int, to: str, *, wait: bool) -> None:
    """An automatic move of our process ``pid`` to ``to``, by its supervisor (blocking: run
    it in a thread); with ``wait``, returns once the move is over (MosixError if it failed)."""
    from mosix_core.mosrun import control_socket

    control_socket.request(
        pid, "migrate", timeout=MOVE_TIMEOUT if wait else ASK_TIMEOUT, to=to, automatic=True, wait=wait
    )


def disallowed(node: Node) -> tuple[list[ProcessRecord], list[ProcessRecord]]:
    """(guests whose home is not in the map, our processes running on nodes not in it)."""
    guests = [row for row in node.proctable.guests() if row.home is None or not node.is_known_address(row.home)]
    away = []
    for row in node.proctable.local():
        try:
            where = IPv4Address(row.where)
        except ValueError:
            continue  # "here", "leaving", "starting"
        if not node.is_known_address(where):
            away.append(row)
    return guests, away


class Balancer:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.meter = ProcessMeter()
        self.counters = Counters()
        self.pending: Pending | None = None
        self.next_at = 0.0
        self.moved_at: dict[int, float] = {}  # pid -> when it last moved (came or arrived)
        self.where: dict[int, str] = {}  # pid -> its row's last "where"
        self.refused: dict[int, float] = {}  # pid -> until when it is left alone
        self.sent: dict[IPv4Address, list[float]] = {}
        self.rng = random.Random()
        self.log = node.log
        self.enforcing: asyncio.Future | None = None
        self.asked: dict[int, float] = {}  # pid -> until when its -1 waits for a measurement

    # -- the period -------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Measure every period; decide when the period is up and no move is under way."""
        if now < self.next_at:
            return
        self.next_at = now + self.node.interval * self.rng.uniform(0.8, 1.2)
        self.enforce_map()
        facts = self.measure(now)
        if self.answer_asked(facts, now) or not self.node.settings.automatic_migration:
            return
        if self.busy(now) or self.node.off:
            return
        decision = self.decide(facts, now)
        if decision is not None:
            self.carry_out(decision, now)

    def enforce_map(self) -> None:
        """Move what the map (``mossetpe``) no longer allows: guests whose home is not in it
        go home, our processes on nodes not in it come home. Whatever the balancer is set
        to: this is the configuration, not a policy."""
        guests, away = disallowed(self.node)
        if not (guests or away) or (self.enforcing is not None and not self.enforcing.done()):
            return
        control = self.node.control
        if control is None:
            return
        self.log.info("moving what the map no longer allows", guests=len(guests), away=len(away))
        # gather schedules both at once; the future it returns says when both are over
        self.enforcing = asyncio.gather(
            control.send_guests_home(guests, MOVE_TIMEOUT, insist=True), control.bring_home(away, MOVE_TIMEOUT)
        )

    def consider(self, pid: int) -> None:
        """``/proc/self/migrate`` = -1: decide about ``pid`` now — or, if it has not been
        measured yet (it has just started or arrived), as soon as it has. The program asks,
        so this holds with ``automatic_migration = no`` too (as mosmigrate does)."""
        now = time.monotonic()
        self.asked[pid] = now + ASKED_FOR
        self.answer_asked(self.measure(now), now)

    def answer_asked(self, facts: list[ProcessFacts], now: float) -> bool:
        """Decide about the processes that asked (-1), those measured by now; True if one
        of them moves. A request is answered within ASKED_FOR seconds, or not at all (the
        policy keeps it where it is)."""
        for pid, until in list(self.asked.items()):
            if until < now or self.node.proctable.get(pid) is None:
                del self.asked[pid]
            elif any(f.pid == pid for f in facts) and not self.busy(now) and not self.node.off:
                # asked again each period until it moves or ASKED_FOR is over: the policy
                # damps herds by a draw, which must not turn a request into a refusal
                decision = self.decide(facts, now, only=pid)
                if decision is not None:
                    del self.asked[pid]
                    self.carry_out(decision, now)
                    return True
        return False

    def busy(self, now: float) -> bool:
        pending = self.pending
        if pending is None:
            return False
        if pending.task is not None and pending.task.done():
            self.pending = None
            return False
        if now - pending.since > MOVE_TIMEOUT:
            self.log.warning("automatic move took too long: deciding again", pid=pending.decision.pid)
            self.pending = None
            return False
        return True

    # -- the facts --------------------------------------------------------------------------------
    def candidates(self) -> list[tuple[ProcessRecord, int]]:
        """(row, the pid that runs here) of every process that may move now."""
        out = []
        for row in self.node.proctable:
            if row.frozen != "-" or row.queue is not None:
                continue
            if row.is_guest:
                program = procfs.traced_child(row.pid)
                if program is not None:
                    out.append((row, program))
            elif row.where == "here":
                out.append((row, row.pid))
        return out

    def measure(self, now: float) -> list[ProcessFacts]:
        self._note_stays(now)
        facts = []
        rows = self.candidates()
        for row, pid in rows:
            usage = self.meter.sample(pid, now, io_pid=row.pid, decayrate=row.decayrate, cleared=row.cleared)
            if usage is None or usage.samples == 0 or self.refused.get(row.pid, 0.0) > now:
                continue
            since = now - self.moved_at[row.pid] if row.pid in self.moved_at else math.inf
            facts.append(
                ProcessFacts(
                    pid=row.pid,
                    home=row.home,
                    cpu_share=usage.demand,
                    cpu_seconds=usage.cpu_seconds,
                    image_mb=usage.rss_mb,
                    needmem_mb=row.needmem,
                    io_calls=usage.call_rate,
                    io_bytes=usage.byte_rate,
                    cpujob=row.cpujob,
                    locked=row.locked,
                    since_move=since,
                )
            )
        self.meter.keep_only(pid for _, pid in rows)
        return facts

    def _note_stays(self, now: float) -> None:
        """When each process's stay here began: a guest's when it arrived, a local
        process's when it came back (one that never left has been here forever)."""
        present = set()
        for row in self.node.proctable:
            present.add(row.pid)
            last = self.where.get(row.pid)
            if (last is None and row.is_guest) or (last is not None and last != row.where):
                self.moved_at[row.pid] = now
            self.where[row.pid] = row.where
        for table in (self.moved_at, self.where, self.refused):
            for pid in [p for p in table if p not in present]:
                del table[pid]

    def view(self, now: float, facts: list[ProcessFacts]) -> BalanceView:
        node = self.node
        local_status = node.local_status()
        sample = node.sample
        if node.settings.resources == "virtual":
            # what runs here now: a process that is leaving no longer counts
            runnable = sum(f.cpu_share for f in facts)
        else:
            runnable = sample.runnable if sample else 0.0
        load_now = standard_load(runnable, local_status.ncpus, node.config.speed)
        local = NodeFacts(
            ip=node.our_ip,
            load=load_now,
            speed=local_status.speed,
            ncpus=local_status.ncpus,
            mem_avail_mb=local_status.mem_avail_mb,
            state=local_status.state,
            fresh_at=now,
        )
        others = [
            NodeFacts.of_status(e.status, e.fresh_at, node.config.is_proximate(e.status.ip))
            for e in node.view.alive_nodes()
            if e.status.ip != node.our_ip
        ]
        for ip in list(self.sent):
            self.sent[ip] = [t for t in self.sent[ip] if now - t < SENT_MEMORY]
            if not self.sent[ip]:
                del self.sent[ip]
        return BalanceView.of(local, others, now, sent={ip: tuple(ts) for ip, ts in self.sent.items()})

    # -- deciding and moving ----------------------------------------------------------------------
    def decide(self, facts: list[ProcessFacts], now: float, only: int | None = None) -> MigrationDecision | None:
        """The hook's decision about ``facts`` (about process ``only`` of them, if given)."""
        candidates = tuple(f for f in facts if only is None or f.pid == only)
        if not candidates:
            return None
        try:
            # no answer is an answer: nothing moves
            decision = first_answer(
                self.node.pm.hook.mosix_migration_decision,
                default=None,
                candidates=candidates,
                view=self.view(now, facts),
            )
        except Exception as err:  # a site plugin's bug must not stop the node
            self.log.error("migration decision failed", error=f"{type(err).__name__}: {err}")
            return None
        if decision is None or decision.target is None:
            return None
        if not any(f.pid == decision.pid for f in candidates) or decision.target == self.node.our_ip:
            self.log.warning(
                "migration decision ignored: not a candidate here", pid=decision.pid, to=str(decision.target)
            )
            return None
        return decision

    def carry_out(self, decision: MigrationDecision, now: float) -> None:
        row = self.node.proctable.get(decision.pid)
        if row is None:
            return
        home = row.home
        to = "home" if home is not None and decision.target == home else str(decision.target)
        self.log.info(
            "automatic migration",
            pid=row.pid,
            origpid=row.origpid,
            **{"from": str(self.node.our_ip)},
            to=to,
            reason=decision.reason,
            gain=round(decision.gain, 2),
            rule=decision.rule,
        )
        loop = asyncio.get_running_loop()
        self.pending = Pending(decision, now)
        if row.is_guest and to == "home":
            self.pending.task = loop.create_task(self._send_home(row))
        elif row.is_guest:
            self.pending.task = loop.create_task(self._move_on(row, to))
        else:
            self.pending.task = loop.run_in_executor(None, lambda: move_by_supervisor(row.pid, to, wait=True))
        if decision.target is not None:
            self.sent.setdefault(decision.target, []).append(now)
        self.pending.task.add_done_callback(lambda task: self._done(decision, task))

    async def _send_home(self, row: ProcessRecord) -> None:
        control = self.node.control
        if control is None:
            raise MosixError("mosd is not serving yet")
        left = await control.send_guests_home([row], MOVE_TIMEOUT, insist=True)
        if left:
            raise MosixError("the guest did not leave")

    async def _move_on(self, row: ProcessRecord, to: str) -> None:
        """A guest's move to a third node: its home makes it (peer op ``relocate``); done
        once the guest has left."""
        from mosix_core.daemon import peer, protocol

        assert row.home is not None and row.origpid is not None
        protocol.outcome(await peer.call(self.node, row.home, {"op": "relocate", "pid": row.origpid, "to": to}))
        deadline = asyncio.get_running_loop().time() + MOVE_TIMEOUT
        while self.node.proctable.get(row.pid) is row:
            if asyncio.get_running_loop().time() > deadline:
                raise MosixError("the guest did not leave")
            await asyncio.sleep(0.1)

    def _done(self, decision: MigrationDecision, task: asyncio.Future) -> None:
        error = None if task.cancelled() else task.exception()
        if error is None:
            self.counters.out += 1
            self.moved_at.pop(decision.pid, None)
        else:
            self.counters.failed += 1
            self.refused[decision.pid] = time.monotonic() + REFUSED_FOR
            self.log.info("automatic migration failed", pid=decision.pid, to=str(decision.target), error=str(error))
