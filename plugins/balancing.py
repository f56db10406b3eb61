"""The built-in automatic load-balancing policy (``mosix_migration_decision``).

One decision per call, in this order (docs/balancing.md has the design and the figures):

1. **what stops it**: ``mosctl stay`` — nothing leaves; ``lstay`` — only guests may leave; a
   locked process (``-L``, ``/proc/self/lock``) never moves. Blocked (or off) nodes take
   no one; a guest's home always takes it back.
2. **memory**: below its free-memory floor, the node sends its largest process away, to the
   node where it would run fastest among those with at least ``max(needmem, image + floor)``
   free — never to one with less than its ``needmem``.
3. **time saved**: for each process, against the best other node for it and its home, what
   the cluster's processes save per unit of work when it moves (``marginal_time`` here minus
   there: its own time and what it takes from the others, stale gossip counting against a
   node), plus its forwarded calls and bytes when away from home (unless ``cpujob``). A move
   needs ``hysteresis`` of the process's time and, over its expected remaining work (the
   work it did so far, at least ``min_work``: old processes run long), ``cost_factor`` times
   the move's cost. Load spread, speed attraction and I/O pulling a process home all come
   out of this one comparison; the move saving the most wins. While this node's own
   processes alone want all its CPUs, guests go first ("sent on or home").
4. **herds**: nodes that see the same good targets send with a probability that keeps the
   expected number of arrivals there, over the time gossip takes to show them, near what
   those targets can take (``now_is_my_turn``).

Deterministic given its arguments: near-equal targets (``spread``) and the herd draw use a
hash of this node's address and the clock, the same in every run, different between nodes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from ipaddress import IPv4Address

from mosix_core.cluster.gossip import STANDARD_SPEED
from mosix_core.contract.balancing import (
    ST_LSTAY,
    ST_STAY,
    BalanceView,
    MigrationDecision,
    NodeFacts,
    ProcessFacts,
    cpu_share,
    marginal_time,
    move_seconds,
)
from mosix_core.contract.hookspecs import hookimpl

#: the most near-equal targets drawn among
NEAR = 8


@hookimpl(trylast=True)
def mosix_migration_decision(candidates: Sequence[ProcessFacts], view: BalanceView) -> MigrationDecision | None:
    return decide(candidates, view)


def decide(candidates: Sequence[ProcessFacts], view: BalanceView) -> MigrationDecision | None:
    local = view.local
    if not candidates or local.state & ST_STAY:
        return None
    lstay = local.state & ST_LSTAY
    movable = [p for p in candidates if not p.locked and not (lstay and not p.is_guest)]
    if not movable:
        return None
    return _Decision(candidates, movable, view).run()


class _Decision:
    """One call's worth of state; what is the same for many processes is computed once."""

    def __init__(self, candidates: Sequence[ProcessFacts], movable: list[ProcessFacts], view: BalanceView) -> None:
        self.view, self.local, self.settings = view, view.local, view.settings
        self.candidates, self.movable = candidates, movable
        local = self.local
        self.runnable = max(local.runnable, sum(min(1.0, p.cpu_share) for p in candidates), 1e-9)
        self.fraction = min(1.0, local.ncpus / self.runnable)  # of a CPU each runnable process gets here
        self.targets: dict[float, tuple[NodeFacts, float] | None] = {}
        self.top: list[tuple[float, NodeFacts]] = []
        self.shares: dict[tuple[int, float], float] = {}  # (id(node), demand) -> effective share
        self.costs: dict[tuple[int, float], float] = {}  # (id(node), demand) -> marginal time

    def run(self) -> MigrationDecision | None:
        if self.local.mem_avail_mb < self.settings.mem_floor_mb:
            decision = self.memory()
            if decision is not None:
                return decision
        return self.time_saved()

    # -- the facts of one process ---------------------------------------------------------------
    def demand(self, p: ProcessFacts) -> float:
        """How much of a CPU ``p`` wants (``cpu_share``: the time it ran or waited to run)."""
        return min(1.0, max(0.05, p.cpu_share))

    def here_time(self, p: ProcessFacts) -> float:
        """Seconds per standard CPU-second of work here (``runnable`` counts ``p`` already)."""
        local = self.local
        time = 1.0 / cpu_share(max(self.runnable, self.demand(p)), local.ncpus, local.speed)
        if p.home is None:
            return time
        home = self.view.node(p.home)
        return time + self.io_time(p, home.proximate if home is not None else True)

    def io_time(self, p: ProcessFacts, proximate: bool | None) -> float:
        """Seconds per standard CPU-second its calls and I/O cost away from home over a link
        (``proximate``: the kind of link; None: at home, where they cost nothing extra)."""
        if proximate is None or p.cpujob or (p.io_calls <= 0 and p.io_bytes <= 0):
            return 0.0
        s = self.settings
        per_second = p.io_calls * (s.proximate_call_s if proximate else s.distant_call_s) + p.io_bytes / (
            1e6 * (s.proximate_mb_s if proximate else s.distant_mb_s)
        )
        # the work it does per second here: the CPU it wants, as much of it as it gets
        work_rate = max(0.01, self.demand(p) * self.fraction * self.local.speed / STANDARD_SPEED)
        return per_second / work_rate

    def there_time(self, p: ProcessFacts, node: NodeFacts) -> float:
        demand = self.demand(p)
        key = (id(node), demand)
        share = self.shares.get(key)
        if share is None:
            share = self.shares[key] = max(1e-9, self.view.effective_share(node, added=demand))
        at_home = node.ip == p.home if p.home is not None else False
        return 1.0 / share + self.io_time(p, None if at_home else node.proximate)

    def need(self, p: ProcessFacts) -> float:
        """Free memory a target must have: its ``needmem``, and room for its image above the floor."""
        return max(float(p.needmem_mb), p.image_mb + self.settings.mem_floor_mb)

    # -- where to --------------------------------------------------------------------------------
    def best(self, need_mb: float) -> tuple[NodeFacts, float] | None:
        """The node (other than this one) where a newcomer needing ``need_mb`` free would run
        fastest, and its share; among near-equal ones, one drawn by this node and the clock."""
        if need_mb in self.targets:
            return self.targets[need_mb]
        if 0.0 not in self.targets:
            self.targets[0.0] = None
            self.top = self.walk(0.0)
        found = [(share, node) for share, node in self.top if node.mem_avail_mb >= need_mb] or self.walk(need_mb)
        pick = None
        if found:
            keep = max(share for share, _ in found) * (1.0 - self.settings.spread)
            near = [(node, share) for share, node in found if share >= keep]
            pick = near[_draw(self.local.ip, self.view.now, len(near))]
        self.targets[need_mb] = pick
        return pick

    def walk(self, need_mb: float) -> list[tuple[float, NodeFacts]]:
        """The best few nodes with ``need_mb`` free, and their shares: the view is ranked, so
        the walk stops at the first that cannot come near the best."""
        view, local_addr = self.view, self.local.addr
        now, inv_tau = view.now, 1.0 / self.settings.stale_tau
        keep = 1.0 - self.settings.spread
        best_share, found = 0.0, []
        for node in view.nodes:
            if node.mem_avail_mb < need_mb or not node.takes_guests or node.addr == local_addr:
                continue
            upper = node.newcomer * math.exp((node.fresh_at - now) * inv_tau)
            if upper < best_share * keep:
                break
            share = view.effective_share(node) if view.sent and node.ip in view.sent else upper
            best_share = max(best_share, share)
            found.append((share, node))
            if len(found) >= NEAR:
                break
        return found

    def now_is_my_turn(self, wanted: float) -> bool:
        """Several nodes may see the same few better nodes, and go on seeing them as they were
        until gossip brings their new load (``load_tau`` plus the information's age, ``lag``
        periods): if ``K`` other nodes would save as much by sending a process and only ``R``
        offer at least ``wanted``, each sends with probability ``R / (1 + K * lag)`` (drawn by
        this node and the clock), so that a node freed by an ending job is not sent the
        processes of every busy node at once. Its own moves count already (``sent``)."""
        view, local, s = self.view, self.local, self.settings
        runnable = self.runnable
        mine = marginal_time(max(0.0, runnable - 1.0), local.ncpus, local.speed, min(1.0, runnable))
        others = view.senders(mine)  # (an entry for this node in the view, if any, counts: conservative)
        now, inv_tau, local_ip = view.now, 1.0 / s.stale_tau, local.ip
        offers, lag = 0, 1.0
        for node in view.nodes:
            if node.newcomer * math.exp((node.fresh_at - now) * inv_tau) < wanted:
                break
            if node.takes_guests and node.addr != local.addr:
                if not offers:
                    lag = max(1.0, (s.load_tau + now - node.fresh_at) / s.period)
                offers += 1
                if offers >= 1 + others * lag:
                    return True
        # none seen offering it (only the process's own demand or home made the move pay): one
        return _draw(local_ip, now, 1_000_003) < 1_000_003 * max(1, offers) / (1 + others * lag)

    def home_of(self, p: ProcessFacts) -> NodeFacts | None:
        """A guest's home as this node knows it (its home takes it back even when blocked)."""
        if p.home is None:
            return None
        home = self.view.node(p.home)
        return home if home is not None and home.mem_avail_mb >= p.needmem_mb else None

    def choices(self, p: ProcessFacts) -> list[NodeFacts]:
        found = self.best(self.need(p))
        home = self.home_of(p)
        if found is None:
            return [] if home is None else [home]
        if home is None or found[0].ip == home.ip:
            return [found[0]]
        return [found[0], home]

    # -- the rules -------------------------------------------------------------------------------
    def memory(self) -> MigrationDecision | None:
        for p in sorted(self.movable, key=lambda p: (-p.image_mb, p.pid)):
            options = [n for n in self.choices(p) if n.mem_avail_mb >= self.need(p)]
            if options:
                node = min(options, key=lambda n: self.there_time(p, n))
                return MigrationDecision(
                    p.pid,
                    node.ip,
                    f"memory: {self.local.mem_avail_mb} MB free here (floor "
                    f"{self.settings.mem_floor_mb}), {node.mem_avail_mb} MB at {node.ip} for {p.image_mb:.0f} MB "
                    f"(needs {p.needmem_mb})",
                    self.gain(p, node),
                    "memory",
                )
        return None

    def time_saved(self) -> MigrationDecision | None:
        """The move saving the most time, its own and the other processes' at both ends
        (``marginal_time``); guests first (with half the hysteresis) while this node's own
        processes alone want all its CPUs."""
        s, local = self.settings, self.local
        own = sum(self.demand(p) for p in self.candidates if not p.is_guest)
        crowded = own >= local.ncpus - 0.5
        best: tuple[bool, float, int, ProcessFacts, NodeFacts, float, float] | None = None
        for p in self.movable:
            if p.since_move < s.min_residency:
                continue
            pushed = crowded and p.is_guest
            bar = (s.hysteresis / 2 if pushed else s.hysteresis) * self.here_time(p)
            leaving = self.leaving(p)
            for node in self.choices(p):
                delta = leaving - self.arriving(p, node)
                if delta < bar:
                    continue
                cost = move_seconds(p.image_mb, node.proximate, s)
                saved = max(p.cpu_seconds, s.min_work) * delta
                if saved < s.cost_factor * cost:
                    continue
                key = (pushed, saved - cost, -p.pid)
                if best is None or key > best[:3]:
                    best = (pushed, saved - cost, -p.pid, p, node, self.here_time(p), self.there_time(p, node))
        if best is None:
            return None
        pushed, gain, _, p, node, here, there = best
        reason, rule = self.why(p, node, here, there)
        if pushed and rule != "home":
            where = "home" if node.ip == p.home else "on"
            reason = f"guest sent {where}: this node's own processes want {own:.1f} of its {local.ncpus} CPUs; {reason}"
            rule = "guest"
        if rule != "home" and not self.now_is_my_turn(self.view.effective_share(node) * (1.0 - s.spread)):
            return None
        return MigrationDecision(p.pid, node.ip, reason, gain, rule)

    def leaving(self, p: ProcessFacts) -> float:
        """What ``p`` leaving saves here: the processes' summed time per unit of work falls by
        the marginal time of ``p`` (its own time and what it takes from the others), and its
        forwarded calls stop costing if it goes home."""
        local, d = self.local, self.demand(p)
        runnable = max(self.runnable, d)
        saved = marginal_time(runnable - d, local.ncpus, local.speed, d)
        if p.home is None:
            return saved
        home = self.view.node(p.home)
        return saved + self.io_time(p, home.proximate if home is not None else True)

    def arriving(self, p: ProcessFacts, node: NodeFacts) -> float:
        """What ``p`` arriving at ``node`` costs there (itself counted), with its calls and I/O
        away from home."""
        d = self.demand(p)
        key = (id(node), d)
        cost = self.costs.get(key)
        if cost is None:
            cost = self.costs[key] = self.view.marginal(node, d)
        at_home = node.ip == p.home if p.home is not None else False
        return cost + self.io_time(p, None if at_home else node.proximate)

    def why(self, p: ProcessFacts, node: NodeFacts, here: float, there: float) -> tuple[str, str]:
        """The reason text and the rule a time-saving move counts under."""
        local = self.local
        if p.home is not None and node.ip == p.home and not p.cpujob and (p.io_calls > 0 or p.io_bytes > 0):
            return (
                f"I/O pulls it home: {p.io_calls:.0f} calls/s and {p.io_bytes / 1e6:.1f} MB/s forwarded "
                f"({here:.2f} -> {there:.2f} s per CPU-second)"
            ), "home"
        if self.runnable <= local.ncpus + 0.5:
            return (
                f"speed: {node.ip} ({node.speed}) runs it faster than here ({local.speed}): "
                f"{1 / here:.2f} -> {1 / there:.2f} standard CPUs"
            ), "speed"
        return (
            f"load: {local.load:.0f} here ({1 / here:.2f} standard CPUs) -> {1 / there:.2f} at {node.ip} "
            f"(load {node.load:.0f})"
        ), "load"

    def gain(self, p: ProcessFacts, node: NodeFacts) -> float:
        """Seconds the move is expected to save (negative: it costs, for memory's sake)."""
        delta = self.leaving(p) - self.arriving(p, node)
        return max(p.cpu_seconds, self.settings.min_work) * delta - move_seconds(
            p.image_mb, node.proximate, self.settings
        )


def _draw(ip: IPv4Address, now: float, count: int) -> int:
    """A deterministic pick among ``count``: changes with the node and every second."""
    if count <= 1:
        return 0
    return hash((int(ip), int(now * 1000))) % count  # ints and their tuples hash the same in every run


__all__ = ["decide", "mosix_migration_decision"]
