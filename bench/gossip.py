#!/usr/bin/env python3
"""Gossip benchmark: how old is what each node knows about the others?

Runs the gossip algorithm of :mod:`mosix_core.cluster.gossip` over a simulated network of
100, 1,000 and 10,000 nodes and prints the distribution of information age (mean,
95th percentile, max, in gossip periods), messages per node per period and bytes
per message, as ratios against baselines measured in the same run.

Simulation (event driven, one time unit = one gossip period):

* every node sends at a random phase, then every ``U(0.8, 1.2)`` periods (the
  daemon's jitter); before each send it does what ``mosd`` does: ``update_local``,
  ``sweep``, ``choose_targets``, and for each target a window of entries —
  ``freshest(window, now, exclude=target)`` for the default strategy. Targets are
  drawn among all other nodes (mosd draws among the nodes it believes alive half of
  the time; with every node up that differs only for the few taken for dead);
* each message is lost with probability ``--loss`` or delivered after a random
  delay of up to ``--jitter`` periods and merged into the receiver's view;
* warm-up from a cold start (every node knows only itself) until the observers'
  views are full, then ``--periods`` snapshots, one per period, of the age of every
  observer's entry about every other node.

Two engines run the same algorithm:

``views``  one real :class:`~mosix_core.cluster.gossip.ClusterView` per node; messages go
           through the real ``encode_entries``/``decode_entries`` (all of them, or a
           random sample with ``--codec-fraction``: the others carry exactly what the
           codec would deliver — ages rounded down to the millisecond — and every
           sampled message is checked to decode to that). Used up to 2,000 nodes.
``arrays`` the same rules, event by event, on a numpy matrix of "fresh at" times
           (10,000 real views would hold 10^8 entries: ~17 GB, minutes just to
           fill). Used above 2,000 nodes, and run at 1,000 nodes too: with the same
           seed it follows the same run as the views engine (same targets, delays
           and, but for ties in freshness, the same entries), so the two can be
           compared in the same invocation.

Requires numpy (``pip install numpy``) besides the project itself.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import math
import random
import sys
import time
from collections.abc import Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

try:
    import numpy as np
except ImportError:  # pragma: no cover - told to the user below
    sys.exit("bench/gossip.py needs numpy: pip install numpy")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mosix_core.cluster.gossip import (  # noqa: E402
    ENTRY_SIZE,
    ClusterView,
    NodeStatus,
    choose_targets,
    decode_entries,
    encode_entries,
    window_for,
)
from mosix_core.daemon.node import PROBES_PER_ROUND, SUSPECT_AFTER  # noqa: E402
from mosix_core.net.wire import OVERHEAD  # noqa: E402


def _fast_address_hash(self: IPv4Address) -> int:
    return self._ip


# The standard library hashes an address as hash(hex(int(address))) in Python code
# (~1 µs): that alone would make the views engine twice as slow. Equal addresses still
# hash equal, so nothing but the speed changes.
IPv4Address.__hash__ = _fast_address_hash  # type: ignore[method-assign]

COUNT_SIZE = 2  # the entry count in front of a gossip payload
VIEWS_MAX_NODES = 2000  # "auto" engine: real ClusterViews up to here
BIN = 0.01  # age histogram resolution, in periods
_TRUE = np.ones(1, bool)


# -- parameters and results ---------------------------------------------------------------------
class Params:
    """One simulation: size, window, strategy and the network model."""

    def __init__(
        self,
        n: int,
        window: int,
        dead_after: float,
        strategy: str,
        args: argparse.Namespace,
        engine: str,
        label: str = "",
    ) -> None:
        self.n, self.window, self.dead_after, self.strategy = n, window, dead_after, strategy
        self.engine, self.label = engine, label or strategy
        self.fanout, self.loss, self.jitter = args.fanout, args.loss, args.jitter
        self.interval_jitter = args.interval_jitter
        self.probes = args.probes if engine == "views" else 0
        self.suspect_after = args.suspect_after
        if self.probes:
            self.label += f"+probe{self.probes}"
        self.periods, self.seed = args.periods, args.seed
        self.codec_fraction = args.codec_fraction if args.codec_fraction is not None else min(1.0, 50 / n)
        self.max_warmup = args.max_warmup or default_max_warmup(n, window, self.fanout)
        self.fill = args.fill if args.fill is not None else (1.0 if n <= VIEWS_MAX_NODES else 0.999)
        nobs = n if n <= args.observers_all_up_to else args.observers
        self.observers = sorted(random.Random(args.seed + 7).sample(range(n), min(n, nobs)))


def default_max_warmup(n: int, window: int, fanout: int) -> int:
    """Enough for every observer's view to fill: ~ (n/window)·ln(pairs) periods, plus margin."""
    cycle = n / (min(window, n) * fanout)
    return int(20 + 1.5 * cycle * math.log(max(2, n) ** 2))


def daemon_dead_after(n: int, window: int) -> float:
    """mosd's default rule (mosix_core/daemon/node.py), in periods:
    max(10, 4 * ceil(n / window)) — four cycles of the window through the view."""
    return float(max(10, 4 * math.ceil(max(1, n) / window)))


class AgeStats:
    """Histogram of information ages (periods) over all snapshots."""

    def __init__(self, dead_after: float) -> None:
        self.dead_after = dead_after
        self.hist = np.zeros(1 << 14, np.int64)
        self.total = 0.0
        self.count = 0
        self.max = 0.0
        self.dead = 0
        self.unknown = 0
        self.bounded = False  # some age dated from the first period: max is a lower bound

    def add(self, ages: np.ndarray, unknown: int, now: float) -> None:
        self.unknown += unknown
        self.bounded = self.bounded or unknown > 0
        if not len(ages):
            return
        ages = np.maximum(ages, 0.0)
        bins = (ages / BIN).astype(np.int64)
        top = int(bins.max())
        if top >= len(self.hist):
            self.hist = np.concatenate([self.hist, np.zeros(top + 1 - len(self.hist) + 4096, np.int64)])
        self.hist += np.bincount(bins, minlength=len(self.hist))
        self.total += float(ages.sum())
        self.count += len(ages)
        self.max = max(self.max, float(ages.max()))
        self.bounded = self.bounded or self.max >= now - 1.0
        self.dead += int(np.count_nonzero(ages > self.dead_after))

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def percentile(self, q: float) -> float:
        if not self.count:
            return math.nan
        cum = np.cumsum(self.hist)
        return (int(np.searchsorted(cum, q / 100 * self.count)) + 1) * BIN

    @property
    def dead_fraction(self) -> float:
        return self.dead / self.count if self.count else math.nan


class Result:
    def __init__(self, p: Params) -> None:
        self.p = p
        self.stats = AgeStats(p.dead_after)
        self.warmup = 0
        self.full = False
        self.known = 0.0  # fraction of observer pairs known when measuring started
        self.msgs = 0  # sent during the measurement
        self.entries = 0  # entries in those messages
        self.lost = 0
        self.codec_msgs = 0  # messages that went through encode/decode
        self.seconds = 0.0

    @property
    def msgs_per_node_period(self) -> float:
        return self.msgs / (self.p.n * self.p.periods)

    @property
    def bytes_per_msg(self) -> float:
        """Datagram size: payload (count + entries) plus the wire envelope."""
        return COUNT_SIZE + ENTRY_SIZE * self.entries / self.msgs + OVERHEAD if self.msgs else math.nan


# -- the network: one event loop for both engines ----------------------------------------------------
SEND, DELIVER = 0, 1


class _Others(Sequence):
    """All nodes but one, as a sequence (for ``choose_targets`` without a list per node)."""

    __slots__ = ("items", "skip")

    def __init__(self, items: list, skip: int) -> None:
        self.items, self.skip = items, skip

    def __len__(self) -> int:
        return len(self.items) - 1

    def __getitem__(self, k: int):
        if k < 0:
            k += len(self)
        return self.items[k + (k >= self.skip)]


def simulate(engine: Any, p: Params) -> Result:
    """Drive ``engine`` (send/deliver/observe/full) through warm-up and measurement."""
    res = Result(p)
    rng = random.Random(p.seed)
    heap: list[tuple[float, int, int, int, Any]] = []
    seq = 0
    for i in range(p.n):
        heap.append((rng.random(), seq, SEND, i, None))
        seq += 1
    heapq.heapify(heap)
    measuring = False
    snaps = 0
    next_snap = 1.0
    lo, hi = 1.0 - p.interval_jitter, 1.0 + p.interval_jitter
    started = time.perf_counter()
    while True:
        t, _, kind, node, msg = heap[0]
        if t >= next_snap:
            now = next_snap
            next_snap += 1.0
            if not measuring:
                known = engine.full(p.observers)
                if known >= p.fill or now >= p.max_warmup:
                    measuring, res.warmup, res.full, res.known = True, int(now), known >= 1.0, known
                continue
            ages, unknown = engine.observe(p.observers, now)
            res.stats.add(ages, unknown, now)
            snaps += 1
            if snaps >= p.periods:
                break
            continue
        heapq.heappop(heap)
        outgoing = engine.send(node, t, rng) if kind == SEND else engine.deliver(node, msg, t)
        if outgoing:
            for target, message, nentries in outgoing:
                if measuring:
                    res.msgs += 1
                    res.entries += nentries
                if p.loss and rng.random() < p.loss:
                    res.lost += 1
                    continue
                heapq.heappush(heap, (t + rng.random() * p.jitter, seq, DELIVER, target, message))
                seq += 1
        if kind == SEND:
            heapq.heappush(heap, (t + rng.uniform(lo, hi), seq, SEND, node, None))
            seq += 1
    res.seconds = time.perf_counter() - started
    res.codec_msgs = getattr(engine, "codec_msgs", 0)
    return res


def split_window(p: Params) -> tuple[int, int, str]:
    """(entries chosen freshest, entries chosen otherwise, how) for ``p.strategy``.

    freshest      the W youngest live entries (mosix_core.cluster.gossip today)
    mixed[:f]     the (1-f)W youngest, f·W uniformly random other live entries (f=0.5)
    freshrr[:f]   the (1-f)W youngest, f·W taken round-robin through the view (f=0.5)
    random        our own entry, then W-1 uniformly random live entries
    roundrobin    our own entry, then W-1 entries round-robin through the view
    """
    name, _, frac = p.strategy.partition(":")
    w = p.window
    if name == "freshest":
        return w, 0, "none"
    if name in ("random", "roundrobin"):
        return 1, w - 1, "random" if name == "random" else "rr"
    if name in ("mixed", "freshrr"):
        rest = min(w - 1, round(w * float(frac or 0.5)))
        return w - rest, rest, "random" if name == "mixed" else "rr"
    raise SystemExit(f"unknown strategy {p.strategy!r}")


# -- engine 1: real ClusterViews ------------------------------------------------------------------------
class Probe:
    """A gossip message flagged FLAG_ANSWER: the receiver answers the prober at once."""

    def __init__(self, prober: int, entries: list) -> None:
        self.prober, self.entries = prober, entries


def address(k: int) -> IPv4Address:
    return IPv4Address(0x0A000001 + k)  # 10.0.0.1, ...


def node_status(k: int) -> NodeStatus:
    r = random.Random(k)
    ncpus = r.choice([2, 4, 8, 16, 32])
    return NodeStatus(
        address(k),
        load=r.randrange(0, 100 * ncpus),
        speed=r.choice([10000, 12000, 15000]),
        ncpus=ncpus,
        mem_avail_pages=r.randrange(1, 1 << 24),
        mem_total_pages=1 << 24,
        swap_free_tenths=r.randrange(0, 80),
        swap_total_tenths=80,
        nprocs=r.randrange(0, 40),
        guests=r.randrange(0, 10),
    )


def quantised(entries: list[tuple[NodeStatus, float]]) -> list[tuple[NodeStatus, float]]:
    """What ``decode_entries(encode_entries(entries))`` yields: ages in whole milliseconds."""
    return [(st, int(age * 1000) / 1000.0) for st, age in entries]


class ViewsEngine:
    def __init__(self, p: Params) -> None:
        self.p = p
        self.ips = [address(k) for k in range(p.n)]
        self.index = {ip: k for k, ip in enumerate(self.ips)}
        self.status = [node_status(k) for k in range(p.n)]
        self.views = [ClusterView(ip, dead_after=p.dead_after) for ip in self.ips]
        self.fresh, self.rest, self.how = split_window(p)
        self.srng = random.Random(p.seed + 1)  # strategy choices
        self.crng = random.Random(p.seed + 2)  # which messages go through the codec
        self.cursor = [0] * p.n  # round-robin position
        self.keys: list[list[IPv4Address]] = [[] for _ in range(p.n)]
        self.codec_msgs = 0

    def send(self, i: int, now: float, rng: random.Random):
        view = self.views[i]
        view.update_local(self.status[i], now)
        view.sweep(now)
        out = []
        for target in choose_targets(_Others(self.ips, i), self.p.fanout, rng):
            entries = view.freshest(self.fresh, now, exclude=target)
            if self.rest:
                entries += self.others(i, view, entries, target, now)
            if self.crng.random() < self.p.codec_fraction:
                payload = encode_entries(entries)
                assert len(payload) == COUNT_SIZE + ENTRY_SIZE * len(entries)
                message: Any = payload
                self.codec_msgs += 1
                if self.codec_msgs % 97 == 1:  # spot-check the shortcut used for the others
                    assert decode_entries(payload) == quantised(entries)
            else:
                message = quantised(entries)
            out.append((self.index[target], message, len(entries)))
        # mosd's failure detection: probe the oldest live entries, the suspect answers at once
        for suspect in view.suspects(self.p.probes, now, self.p.dead_after * self.p.suspect_after):
            entries = view.freshest(self.fresh, now, exclude=suspect)
            out.append((self.index[suspect], Probe(i, quantised(entries)), len(entries)))
        return out

    def answer(self, j: int, prober: int, now: float) -> list:
        view = self.views[j]
        view.update_local(self.status[j], now)
        entries = quantised(view.freshest(self.fresh, now, exclude=self.ips[prober]))
        return [(prober, entries, len(entries))]

    def others(self, i: int, view: ClusterView, chosen: list, target: IPv4Address, now: float) -> list:
        taken = {st.ip for st, _ in chosen}
        taken.add(target)
        if self.how == "random":
            pool = [e for ip, e in view.entries.items() if e.alive and ip not in taken]
            picked = self.srng.sample(pool, min(self.rest, len(pool)))
        else:
            keys = self.keys[i]
            if len(keys) != len(view.entries):
                keys = self.keys[i] = list(view.entries)
            picked, k, steps = [], self.cursor[i], 0
            while len(picked) < self.rest and steps < len(keys):
                k = (k + 1) % len(keys)
                steps += 1
                e = view.entries[keys[k]]
                if e.alive and keys[k] not in taken:
                    picked.append(e)
            self.cursor[i] = k
        return [(e.status, max(0.0, now - e.fresh_at)) for e in picked]

    def deliver(self, j: int, message: Any, now: float) -> list:
        if isinstance(message, Probe):
            self.views[j].merge(message.entries, now)
            return self.answer(j, message.prober, now)
        if isinstance(message, bytes):
            message = decode_entries(message)
        self.views[j].merge(message, now)
        return []

    def full(self, observers: list[int]) -> float:
        n = self.p.n
        return sum(len(self.views[o].entries) - 1 for o in observers) / (len(observers) * (n - 1))

    def observe(self, observers: list[int], now: float) -> tuple[np.ndarray, int]:
        parts, unknown = [], 0
        for o in observers:
            view, me = self.views[o], self.ips[o]
            fresh = np.fromiter((e.fresh_at for ip, e in view.entries.items() if ip != me), float)
            unknown += self.p.n - 1 - len(fresh)
            parts.append(now - fresh)
        return np.concatenate(parts), unknown


# -- engine 2: the same rules on arrays ---------------------------------------------------------------
class ArraysEngine:
    """``F[i, s]`` is when node i's information about node s was current (-inf: unknown).

    Live means ``now - F <= dead_after`` at the sender when it sends — exactly what
    ``sweep`` right before ``freshest`` leaves alive. The youngest entries are found
    as ClusterView finds them: among the last ranking plus the entries made younger
    since, with a full ranking when that cannot be trusted. Targets are drawn from
    the same random stream as the views engine (so with no ties in freshness the two
    follow the same run); only the optional random/round-robin extras differ.
    """

    def __init__(self, p: Params) -> None:
        n = self.n = p.n
        self.p = p
        self.F = np.full((n, n), -np.inf)
        self.fresh, self.rest, self.how = split_window(p)
        self.keep = self.fresh + 1  # one spare for the excluded target
        self.top: list[np.ndarray | None] = [None] * n  # the last ranking
        self.thr = [-math.inf] * n  # its oldest fresh_at (-inf: all live kept)
        self.pend: list[list[np.ndarray]] = [[] for _ in range(n)]  # made younger since
        self.cursor = [0] * n  # round-robin position
        self.srng = np.random.default_rng(p.seed + 1)
        self.dead_after = p.dead_after
        self.others_seq = list(range(n))

    def send(self, i: int, now: float, rng: random.Random):
        row = self.F[i]
        row[i] = now  # update_local
        cand, vals = self.youngest(i, row, now)
        if self.p.fanout == 1:  # what choose_targets draws, without the list
            k = rng._randbelow(self.n - 1)
            targets: Any = (k + (k >= i),)
        else:
            targets = choose_targets(_Others(self.others_seq, i), self.p.fanout, rng)
        out = []
        for target in targets:
            keep = cand != target
            if len(cand) > self.fresh and keep.all():  # drop the oldest of the spare
                keep[vals.argmin()] = False
            idx, v = cand[keep], vals[keep]
            if self.rest:
                extra = self.others(i, row, idx, target, now)
                idx, v = np.concatenate((idx, extra)), np.concatenate((v, row[extra]))
            ages = np.floor((now - v) * 1000) / 1000  # whole milliseconds on the wire
            out.append((target, (idx, ages), len(idx)))
        return out

    def youngest(self, i: int, row: np.ndarray, now: float) -> tuple[np.ndarray, np.ndarray]:
        keep, top, thr, dead_after = self.keep, self.top[i], self.thr[i], self.dead_after
        if top is not None:
            pend = self.pend[i]
            if pend:
                cand = np.concatenate((top, *pend))
                cand.sort()
                cand = cand[np.concatenate((_TRUE, cand[1:] != cand[:-1]))]
            else:
                cand = top
            vals = row[cand]
            if len(cand) > keep:  # fast path: the youngest are all live
                part = vals.argpartition(len(cand) - keep)[len(cand) - keep :]
                c, v = cand[part], vals[part]
                oldest = v.min()
                if now - oldest <= dead_after and oldest >= thr:
                    return self.remember(i, c, v, oldest)
            live = now - vals <= dead_after
            cand, vals = cand[live], vals[live]
            if len(cand) >= keep:
                part = vals.argpartition(len(cand) - keep)[len(cand) - keep :]
                cand, vals = cand[part], vals[part]
                oldest = vals.min()
                if oldest >= thr:
                    return self.remember(i, cand, vals, oldest)
            elif thr == -math.inf:
                return self.remember(i, cand, vals, -math.inf)
        # Full ranking: the first send, or entries of the last ranking died.
        cand = np.flatnonzero(now - row <= dead_after)
        vals = row[cand]
        if len(cand) < keep:
            return self.remember(i, cand, vals, -math.inf)
        part = vals.argpartition(len(cand) - keep)[len(cand) - keep :]
        cand, vals = cand[part], vals[part]
        return self.remember(i, cand, vals, vals.min())

    def remember(self, i: int, cand: np.ndarray, vals: np.ndarray, oldest: float):
        self.top[i], self.pend[i], self.thr[i] = cand, [], float(oldest)
        return cand, vals

    def others(self, i: int, row: np.ndarray, chosen: np.ndarray, target: int, now: float) -> np.ndarray:
        want, n = self.rest, self.n
        if self.how == "random":
            draw = self.srng.integers(0, n, size=2 * want + 32)
        else:
            draw = (self.cursor[i] + 1 + np.arange(2 * want + 32)) % n
        for attempt in range(2):
            ok = (now - row[draw] <= self.dead_after) & (draw != target) & ~np.isin(draw, chosen)
            good = draw[ok]
            _, first = np.unique(good, return_index=True)
            good = good[np.sort(first)][:want]
            if len(good) == want or attempt:
                break
            draw = self.srng.permutation(n) if self.how == "random" else (self.cursor[i] + 1 + np.arange(n)) % n
        if self.how == "rr" and len(good):
            self.cursor[i] = int(good[-1])
        return good

    def deliver(self, j: int, message: tuple[np.ndarray, np.ndarray], now: float) -> None:
        idx, ages = message  # never our own entry: exclude=target
        row = self.F[j]
        fresh = now - ages
        better = fresh > row[idx]
        if not better.all():
            if not better.any():
                return
            idx, fresh = idx[better], fresh[better]
        row[idx] = fresh
        thr = self.thr[j]
        if thr == -math.inf:
            self.pend[j].append(idx)
        else:
            hot = fresh >= thr
            if hot.all():
                self.pend[j].append(idx)
            elif hot.any():
                self.pend[j].append(idx[hot])

    def full(self, observers: list[int]) -> float:
        known = np.count_nonzero(np.isfinite(self.F[observers]))
        return (known - len(observers)) / (len(observers) * (self.n - 1))

    def observe(self, observers: list[int], now: float) -> tuple[np.ndarray, int]:
        ages = now - self.F[observers]
        ages[np.arange(len(observers)), observers] = np.nan
        ages = ages[~np.isnan(ages)]
        known = np.isfinite(ages)
        return ages[known], int(len(ages) - np.count_nonzero(known))


def run(p: Params) -> Result:
    gc.collect()
    gc.disable()  # millions of long-lived objects: cyclic GC passes would dominate
    try:
        engine = ViewsEngine(p) if p.engine == "views" else ArraysEngine(p)
        res = simulate(engine, p)
        del engine
    finally:
        gc.collect()
        gc.enable()
    return res


# -- report -------------------------------------------------------------------------------------------
def fmt(x: float, width: int = 7, prec: int = 2) -> str:
    return f"{x:{width}.{prec}f}" if not math.isnan(x) else f"{'-':>{width}}"


HEAD = (
    f"{'nodes':>6} {'engine':<6} {'strategy':<13} {'window':>6} {'dead':>5} {'warmup':>7} "
    f"{'mean':>7} {'p95':>7} {'p99.9':>7} {'max':>8} {'dead%':>6} {'msg/n/p':>7} {'B/msg':>6} {'sec':>5}"
)


def row_text(res: Result) -> str:
    p, s = res.p, res.stats
    warm = f"{res.warmup}{'' if res.full else '*'}"
    bounded = "+" if s.bounded else " "
    return (
        f"{p.n:>6} {p.engine:<6} {p.label:<13} {min(p.window, p.n - 1):>6} {p.dead_after:>5.0f} {warm:>7} "
        f"{fmt(s.mean)} {fmt(s.percentile(95))} {fmt(s.percentile(99.9))} {fmt(s.max)}{bounded}"
        f"{fmt(100 * s.dead_fraction, 6, 3)} {fmt(res.msgs_per_node_period, 7, 3)} "
        f"{res.bytes_per_msg:>6.0f} {res.seconds:>5.0f}"
    )


def estimated_cost(p: Params) -> float:
    """Rough relative run time, to start the longest simulations first."""
    w = min(p.window, p.n - 1)
    periods = p.periods + min(p.max_warmup, 20 + 7 * p.n / w)
    return p.n * w * periods * (6 if p.engine == "views" else 1)


def run_all(jobs: list[tuple[Any, Params]], workers: int, show) -> dict[Any, Result]:
    """Run the simulations (in parallel when ``workers`` > 1); ``show`` each in list order."""
    results: dict[Any, Result] = {}
    if workers <= 1 or len(jobs) <= 1:
        for key, p in jobs:
            results[key] = run(p)
            show(key, results[key])
        return results
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(workers, maxtasksperchild=1) as pool:
        biggest = max(range(len(jobs)), key=lambda k: estimated_cost(jobs[k][1]))
        order = [jobs[biggest]] + jobs[:biggest] + jobs[biggest + 1 :]  # the rest in printing order
        pending = {key: pool.apply_async(run, (p,)) for key, p in order}
        for key, _ in jobs:
            results[key] = pending[key].get()
            show(key, results[key])
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="100,1000,10000", help="comma-separated cluster sizes")
    ap.add_argument("--periods", type=int, default=30, help="measured periods (one snapshot each)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-datagram", type=int, default=8192, help="bytes; sets the window")
    ap.add_argument("--loss", type=float, default=0.0, help="probability a message is lost")
    ap.add_argument("--jitter", type=float, default=0.1, help="delivery delay up to this many periods")
    ap.add_argument(
        "--interval-jitter", type=float, default=0.2, help="send interval is U(1-x, 1+x) periods (mosd: 0.2)"
    )
    ap.add_argument("--fanout", type=int, default=1)
    ap.add_argument(
        "--probes",
        type=int,
        default=PROBES_PER_ROUND,
        help="suspects probed per round, as mosd does (views engine only; 0: none)",
    )
    ap.add_argument(
        "--suspect-after",
        type=float,
        default=SUSPECT_AFTER,
        help="probe live entries older than this share of dead_after (mosd's rule)",
    )
    ap.add_argument(
        "--strategy",
        default="freshest",
        help="entry selection: freshest, mixed[:f], freshrr[:f], random, roundrobin; "
        "comma-separated to compare; 'all' for all of them",
    )
    ap.add_argument(
        "--engine",
        choices=["auto", "views", "arrays"],
        default="auto",
        help=f"auto: views up to {VIEWS_MAX_NODES} nodes, arrays above",
    )
    ap.add_argument(
        "--dead-after", type=float, default=0.0, help="periods; 0: the daemon's rule max(10, 4*ceil(n/window))"
    )
    ap.add_argument(
        "--fill",
        type=float,
        default=None,
        help="warm up until this share of observer/node pairs is known (default 1 up to "
        f"{VIEWS_MAX_NODES} nodes, else 0.999: the last 0.1%% would take as long again)",
    )
    ap.add_argument("--max-warmup", type=int, default=0, help="periods; 0: enough to fill the views")
    ap.add_argument("--observers", type=int, default=200, help="sampled observers above --observers-all-up-to")
    ap.add_argument("--observers-all-up-to", type=int, default=1000)
    ap.add_argument(
        "--codec-fraction",
        type=float,
        default=None,
        help="views engine: share of messages through encode/decode (default min(1, 50/n))",
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the whole-view and cross-engine runs")
    ap.add_argument("--ideal-up-to", type=int, default=1000, help="largest size with the whole-view baseline")
    ap.add_argument("--jobs", type=int, default=2, help="simulations run in parallel (processes)")
    args = ap.parse_args(argv)

    sizes = [int(x) for x in args.nodes.split(",") if x]
    strategies = (
        ["freshest", "mixed", "freshrr", "random", "roundrobin"] if args.strategy == "all" else args.strategy.split(",")
    )
    for name in strategies:
        split_window(Params(1000, 184, 10.0, name, args, "arrays"))  # fail early on a bad name
    window = window_for(args.max_datagram, OVERHEAD)

    def engine_for(n: int) -> str:
        return args.engine if args.engine != "auto" else ("views" if n <= VIEWS_MAX_NODES else "arrays")

    jobs: list[tuple[Any, Params]] = []
    for n in sizes:
        dead_after = args.dead_after or daemon_dead_after(n, window)
        for strategy in strategies:
            jobs.append(((n, strategy), Params(n, window, dead_after, strategy, args, engine_for(n))))
        if args.no_baseline:
            continue
        if n - 1 > window and n <= args.ideal_up_to:
            jobs.append(((n, "ideal"), Params(n, n, dead_after, "freshest", args, engine_for(n), label="ideal(whole)")))
        if engine_for(n) == "views" and n - 1 > window and strategies[0] == "freshest":
            jobs.append(((n, "cross"), Params(n, window, dead_after, "freshest", args, "arrays")))

    print(
        f"gossip benchmark: datagram <= {args.max_datagram} B = {OVERHEAD} B envelope + {COUNT_SIZE} B count "
        f"+ window {window} entries x {ENTRY_SIZE} B; fanout {args.fanout}; loss {args.loss:g}; "
        f"delivery delay U(0, {args.jitter:g}); send interval U({1 - args.interval_jitter:g}, "
        f"{1 + args.interval_jitter:g}); seed {args.seed}"
    )
    print(
        "ages in gossip periods; cold start (each node knows only itself); measured "
        f"{args.periods} periods after warm-up; dead_after "
        + (
            "= mosd's rule max(10, 4*ceil(n/window)) periods"
            if not args.dead_after
            else f"= {args.dead_after:g} periods"
        )
    )
    print(HEAD, flush=True)
    results = run_all(jobs, args.jobs, lambda key, res: print(row_text(res), flush=True))

    print()
    print("views = one real ClusterView per node; arrays = the same rules on a matrix (see --help).")
    print(
        "warmup: periods until every observer knew every node; * = stopped at --fill/--max-warmup "
        "(pairs still unknown are left out)."
    )
    for _key, res in results.items():
        if not res.full:
            print(
                f"  {res.p.n} nodes {res.p.label}: {100 * res.known:.2f} % of observer/node pairs known after "
                f"{res.warmup} periods"
            )
    print("max: + = some age dated from the start of the run, so the max is a lower bound.")
    print("dead% = observer/node pairs older than dead_after, i.e. live nodes taken for dead.")
    print()
    print(
        f"ratios ({strategies[0]}): /ideal = mean age against the same run with every message carrying the "
        "whole view; log2 n = push-epidemic reference; n/W = (n-1)/(window*fanout), the periods a node needs "
        "to receive one entry per node; arrays/views = the two engines on the same run"
    )
    print(
        f"{'nodes':>6} {'mean':>7} {'ideal':>7} {'/ideal':>7} {'log2 n':>7} {'/log2n':>7} {'n/W':>7} "
        f"{'/(n/W)':>7} {'arrays':>7} {'/views':>7}"
    )
    for n in sizes:
        res = results[(n, strategies[0])]
        m = res.stats.mean
        ideal = results.get((n, "ideal"), res if n - 1 <= window else None)
        cross = results.get((n, "cross"))
        im = ideal.stats.mean if ideal else math.nan
        cm = cross.stats.mean if cross else math.nan
        bound = (n - 1) / (min(window, n - 1) * args.fanout)
        note = "  (window holds the whole view: ideal = this run)" if n - 1 <= window else ""
        print(
            f"{n:>6} {fmt(m)} {fmt(im)} {fmt(m / im, 7, 3)} {fmt(math.log2(n))} {fmt(m / math.log2(n), 7, 3)} "
            f"{fmt(bound)} {fmt(m / bound, 7, 3)} {fmt(cm)} {fmt(cm / m, 7, 3)}{note}"
        )
    codec = sum(r.codec_msgs for r in results.values())
    print(
        f"\nmessages through the real encode_entries/decode_entries: {codec}; the others carried the same "
        "entries with ages cut to whole ms, as the codec does (checked on a sample of them)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
