"""Automatic load balancing: what the ``mosix_migration_decision`` hook sees and answers,
and the load model that the balancer, ``mosrun -b``/``mosbestnode`` and the policy
simulator (``bench/balance.py``) share.

The balancer in mosd calls the hook about once a second with the MOSIX processes running
on its node (:class:`ProcessFacts`, its own at home and its guests) and its view of the
cluster (:class:`BalanceView`: this node's :class:`NodeFacts` and the other nodes',
as gossip told them); the answer is one :class:`MigrationDecision`, or ``None``.

The load model (MOSIX's standard units, mosix(7)): a node of speed ``s`` and ``c`` CPUs on
which ``r`` processes want a CPU reports the load ``100 * r * 10000 / (c * s)``
(:func:`mosix_core.cluster.resources.load_of`); each of those processes then runs at
:func:`cpu_share` ``= s/10000 * min(1, c/r)`` standard CPUs. "Where a process would run
fastest, counting itself" is the node with the highest :func:`newcomer_share`.

Nothing here is the daemon's: records are built for the call, so the same plugin code runs
in mosd and in the simulator (which injects its own clock and views).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address

import attrs
from attrs import frozen

from mosix_core.cluster.gossip import ST_BLOCK, ST_LSTAY, ST_OFF, ST_STAY, STANDARD_SPEED, NodeStatus
from mosix_core.cluster.resources import load_of

__all__ = [
    "BalanceSettings",
    "BalanceView",
    "MigrationDecision",
    "NodeFacts",
    "ProcessFacts",
    "cpu_share",
    "marginal_time",
    "move_seconds",
    "newcomer_share",
    "runnable_of",
    "ST_BLOCK",
    "ST_LSTAY",
    "ST_OFF",
    "ST_STAY",
]


# --- the load model ---------------------------------------------------------------------------


def runnable_of(load: float, ncpus: int, speed: int) -> float:
    """How many processes want a CPU on a node reporting ``load`` (the inverse of
    :func:`mosix_core.cluster.resources.load_of`)."""
    return load / load_of(1, ncpus, speed)


def cpu_share(runnable: float, ncpus: int, speed: int) -> float:
    """Standard CPUs each of ``runnable`` processes gets on a node (1.0: a whole CPU of
    standard speed; a process never gets more than one CPU)."""
    per_cpu = max(1, speed) / STANDARD_SPEED
    return per_cpu if runnable <= ncpus else per_cpu * max(1, ncpus) / runnable


def newcomer_share(load: float, ncpus: int, speed: int, added: float = 1.0) -> float:
    """What a process would get on a node reporting ``load`` once ``added`` processes
    (itself included) join it: the node where it "would run fastest, counting itself"
    is the one where this is highest."""
    return cpu_share(runnable_of(load, ncpus, speed) + added, ncpus, speed)


def total_time(runnable: float, ncpus: int, speed: float) -> float:
    """The sum over a node's ``runnable`` processes of their time per unit of work (seconds
    per standard CPU-second): ``r * max(r, c) / (c * s)`` — its processes' summed slowdown."""
    per_cpu = max(speed, 1e-9) / STANDARD_SPEED
    return runnable * max(runnable, ncpus) / (max(1, ncpus) * per_cpu)


def marginal_time(runnable: float, ncpus: int, speed: float, added: float = 1.0) -> float:
    """How much :func:`total_time` grows when ``added`` processes join ``runnable`` ones: the
    cost of a newcomer to everyone there, itself included (MOSIX's opportunity cost)."""
    return total_time(runnable + added, ncpus, speed) - total_time(runnable, ncpus, speed)


def move_seconds(image_mb: float, proximate: bool, settings: BalanceSettings) -> float:
    """How long a move keeps a process from running: its image over the link's bandwidth
    (uncompressed to a proximate node, compressed to a distant one) plus a fixed part."""
    bandwidth = settings.proximate_mb_s if proximate else settings.distant_mb_s
    return settings.move_overhead + max(0.0, image_mb) / bandwidth


# --- what the policy sees ---------------------------------------------------------------------


@frozen
class BalanceSettings:
    """The policy's tunables (defaults: what ``bench/balance.py`` tuned them to)."""

    period: float = 1.0  # seconds between two decisions of a node
    hysteresis: float = 0.15  # a move must save this fraction of the process's time per unit of work
    min_residency: float = 4.0  # seconds a process stays where it arrived before load moves it
    min_work: float = 2.0  # standard CPU-seconds a process is expected to run at least
    cost_factor: float = 2.0  # the time saved must exceed the move's cost this many times
    move_overhead: float = 0.15  # seconds a move costs besides sending the image
    proximate_mb_s: float = 900.0  # image bandwidth to a proximate node (measured: ~950 MB/s raw)
    distant_mb_s: float = 110.0  # to a distant one (1 Gb/s, compressed ~2x minus the CPU it costs)
    proximate_call_s: float = 60e-6  # a forwarded system call's round trip (measured ~30-60 µs)
    distant_call_s: float = 500e-6
    mem_floor_mb: int = 256  # below this much free memory a node sends processes away
    stale_tau: float = 30.0  # a node's share counts e^(-age/stale_tau): stale gossip counts against it
    load_tau: float = 2.0  # the smoothing of the load nodes report (mosd's LoadSmoother)
    spread: float = 0.05  # targets within this fraction of the best are drawn among (no herds)


@frozen
class NodeFacts:
    """One node as the balancer sees it (from gossip: ``NodeEntry.status`` and ``fresh_at``).

    For this node itself (``BalanceView.local``), ``load`` is its load *now* — the latest
    measurement, not the smoothed one it gossips — so a process it just sent away no longer
    counts, and ``mem_avail_mb`` is its free memory now."""

    ip: IPv4Address
    load: float  # hundredths of standard load (NodeStatus.load)
    speed: int = STANDARD_SPEED
    ncpus: int = 1
    mem_avail_mb: int = 0
    state: int = 0  # NodeStatus.state: ST_STAY, ST_LSTAY, ST_BLOCK, ST_OFF bits
    fresh_at: float = 0.0  # when the information was current (the view's clock)
    proximate: bool = True  # the map's 'p' (or the partner's proximate column)
    # what a newcomer would get there (newcomer_share), and what one of its processes leaving
    # would save (marginal_time; 0 when idle): computed once per record, since views are
    # built every second from records that change only when gossip brings news
    newcomer: float = attrs.field(init=False, eq=False, repr=False)
    leaving: float = attrs.field(init=False, eq=False, repr=False)
    addr: int = attrs.field(init=False, eq=False, repr=False)  # the address as an int: hashed in C

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "addr", int(self.ip))
        runnable = runnable_of(self.load, self.ncpus, self.speed)
        object.__setattr__(self, "newcomer", cpu_share(runnable + 1.0, self.ncpus, self.speed))
        leaving = marginal_time(runnable - 1.0, self.ncpus, self.speed) if runnable >= 1.0 else 0.0
        object.__setattr__(self, "leaving", leaving)

    @property
    def runnable(self) -> float:
        return runnable_of(self.load, self.ncpus, self.speed)

    @property
    def takes_guests(self) -> bool:
        return not self.state & (ST_BLOCK | ST_OFF)

    @classmethod
    def of_status(cls, status: NodeStatus, fresh_at: float, proximate: bool = True) -> NodeFacts:
        """From a :class:`mosix_core.cluster.gossip.NodeStatus` and its entry's ``fresh_at``."""
        return cls(
            ip=status.ip,
            load=status.load,
            speed=status.speed,
            ncpus=status.ncpus,
            mem_avail_mb=status.mem_avail_mb,
            state=status.state,
            fresh_at=fresh_at,
            proximate=proximate,
        )


@frozen
class ProcessFacts:
    """A MOSIX process running on this node, as its supervisor (or guest host) reports it.

    The rates are averages whose weights decay by the process's decay rate (``-d``,
    ``/proc/self/decayrate``; default 9976/10000 per second: a young process's are its whole
    life's), restarted by ``/proc/self/clear``."""

    pid: int  # its pid on this node
    home: IPv4Address | None = None  # None: this node is its home (it runs at home); else a guest from there
    cpu_share: float = 1.0  # how much of a CPU it wants: the time it ran or waited to run, recently (1.0: CPU-bound)
    cpu_seconds: float = 0.0  # CPU time it has used so far (the older, the longer it is expected to run)
    image_mb: float = 0.0  # its memory image (what a move sends)
    needmem_mb: int = 0  # -m / /proc/self/needmem: never to a node with less free
    io_calls: float = 0.0  # system calls served by home per second (forwarded when away)
    io_bytes: float = 0.0  # bytes those calls carry per second
    cpujob: bool = False  # -c / /proc/self/cpujob=1: calls and I/O do not count
    locked: bool = False  # -L or /proc/self/lock: never moves automatically
    since_move: float = math.inf  # seconds since it last moved (inf: never)

    @property
    def is_guest(self) -> bool:
        return self.home is not None


@frozen
class MigrationDecision:
    """Move ``pid`` to ``target`` (``None``: nothing moves — a plugin's veto), because of
    ``reason``, expected to save ``gain`` seconds of the process's time (net of the move)."""

    pid: int
    target: IPv4Address | None
    reason: str
    gain: float = 0.0
    rule: str = "load"  # load, speed, memory, home, guest, stay (for counting)

    @classmethod
    def stay(cls, reason: str) -> MigrationDecision:
        """Nothing moves this time, and the plugins after this one are not asked."""
        return cls(pid=0, target=None, reason=reason, gain=0.0, rule="stay")


@frozen
class BalanceView:
    """This node's view of the cluster for one decision.

    ``nodes`` are the other nodes this node may send processes to (alive; the daemon may
    leave out partners that do not take its processes), best first: highest newcomer share,
    staleness counted (:meth:`of` sorts them; the simulator shares one sorted tuple between
    many views). An entry for this node's own address in ``nodes`` is never a target (mosd
    leaves it out; the simulator's shared views have it, and it counts as one more sender
    where herds are damped: ``senders``). ``sent``:
    the times (view's clock) of this node's moves to each node in the last few seconds —
    the load a node gossips catches up with an arrival only after a while."""

    local: NodeFacts
    nodes: Sequence[NodeFacts]
    now: float
    settings: BalanceSettings = BalanceSettings()
    sent: Mapping[IPv4Address, tuple[float, ...]] = attrs.field(factory=dict)
    # nodes by address as an int (NodeFacts.addr; a guest's home): made on first use unless given
    by_ip: Mapping[int, NodeFacts] | None = attrs.field(default=None, eq=False, repr=False)
    leavings: list[float] | None = attrs.field(default=None, eq=False, repr=False)  # sorted (senders)

    @classmethod
    def of(
        cls,
        local: NodeFacts,
        nodes: Sequence[NodeFacts],
        now: float,
        settings: BalanceSettings | None = None,
        sent: Mapping[IPv4Address, tuple[float, ...]] | None = None,
    ) -> BalanceView:
        settings = settings or BalanceSettings()
        return cls(local=local, nodes=rank(nodes, settings), now=now, settings=settings, sent=sent or {})

    def node(self, ip: IPv4Address) -> NodeFacts | None:
        """What this view knows about ``ip`` (another node than this one), or None."""
        if self.by_ip is None:
            object.__setattr__(self, "by_ip", {n.addr: n for n in self.nodes})
        assert self.by_ip is not None
        return self.by_ip.get(int(ip))

    def senders(self, leaving: float) -> int:
        """How many nodes of the view would save at least ``leaving`` (:func:`marginal_time`)
        by sending one of their processes away: those that would send to the same idle nodes
        as one that saves that much. (Sorted on first use: the simulator shares a view.)"""
        if self.leavings is None:
            object.__setattr__(self, "leavings", sorted(n.leaving for n in self.nodes))
        assert self.leavings is not None
        return len(self.leavings) - bisect.bisect_left(self.leavings, leaving)

    def effective_share(self, node: NodeFacts, added: float = 1.0) -> float:
        """What a newcomer gets on ``node``, counting this node's own recent moves there
        and the age of what is known about it."""
        pending = self.pending(node)
        share = (
            node.newcomer
            if pending == 0.0 and added == 1.0
            else newcomer_share(node.load, node.ncpus, node.speed, added + pending)
        )
        return share * math.exp(-max(0.0, self.now - node.fresh_at) / self.settings.stale_tau)

    def marginal(self, node: NodeFacts, added: float = 1.0) -> float:
        """:func:`marginal_time` of ``added`` more processes on ``node``, counting this node's
        recent moves there; stale information counts as a slower node (``stale_tau``)."""
        speed = node.speed * math.exp(-max(0.0, self.now - node.fresh_at) / self.settings.stale_tau)
        return marginal_time(node.runnable + self.pending(node), node.ncpus, speed, added)

    def pending(self, node: NodeFacts) -> float:
        """Processes this node sent to ``node`` that its gossiped load does not count yet:
        a move at ``t`` counts ``exp(-(fresh_at - t)/load_tau)`` (its load is smoothed)."""
        times = self.sent.get(node.ip)
        if not times:
            return 0.0
        tau = self.settings.load_tau
        return sum(1.0 if t >= node.fresh_at else math.exp((t - node.fresh_at) / tau) for t in times)


def rank(nodes: Sequence[NodeFacts], settings: BalanceSettings) -> tuple[NodeFacts, ...]:
    """``nodes`` best first: the highest ``newcomer * exp(-age / stale_tau)``, whatever the
    clock says now (the age factor is the same for all at a given time)."""
    inv = 1.0 / settings.stale_tau
    keys = [math.log(n.newcomer) + n.fresh_at * inv for n in nodes]
    order = sorted(range(len(keys)), key=keys.__getitem__, reverse=True)
    return tuple(nodes[i] for i in order)
