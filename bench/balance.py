#!/usr/bin/env python3
"""Policy simulator: the built-in load-balancing plugin, unchanged, in a simulated cluster.

A discrete-event cluster — heterogeneous speeds and CPUs, memory, jobs arriving with CPU and
I/O phases, gossip as mosd sees it, moves costing their image over the link — in which every
node asks the real ``mosix_migration_decision`` plugin (``plugins/balancing.py``, fetched from
the real plugin manager) every U(0.8, 1.2) s, with the simulator's clock and views injected,
and carries out its answer one move at a time per node. Baselines in the same run: the ideal
(a lower bound), no migration, round-robin placement at start, least-loaded placement at start
(``mosrun -b``: the same load model, the same gossip views).

The model (docs/balancing.md has the design and the figures):

* a node of speed ``s`` and ``c`` CPUs shares them among its jobs (processor sharing); a job
  away from home waits for its forwarded calls (a round trip each) and bytes (over the link):
  for ``w`` seconds of waiting per unit of work it wants the CPU ``1/(1 + w·x)`` of the time
  at share ``x`` — a fixed point solved per node; above its memory a node thrashes (every
  job's rate × (memory/used)²);
* the load a node reports is its runnable count smoothed as mosd does (τ = 2 s), published
  every second; an observer sees each other node as it was ``age`` seconds ago, ``age``
  drawn per (view, node) from a gamma law fitted to ``bench/gossip.py``'s measured ages (mean
  2.5 s at 16 nodes, 3.6 s at 100, 4.65 s at 1,000, 58.7 s at 10,000 — stale, partial views:
  entries older than mosd's ``dead_after`` are left out). Views are drawn a few times a
  second and shared among the nodes deciding meanwhile; each node's own facts are exact;
* a move stops the job for ``0.1 s + image / 950 MB/s`` (measured: bench/RESULTS.md); the
  source node decides nothing while it is under way; a target without the job's ``needmem``
  free refuses (the built-in admission).

Run: ``python bench/balance.py [--json] [--seeds N] [--only name,...] [--quick]``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
import sys
import time
from array import array
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mosix_core.cluster.gossip import STANDARD_SPEED  # noqa: E402
from mosix_core.contract.balancing import (  # noqa: E402
    BalanceSettings,
    BalanceView,
    NodeFacts,
    ProcessFacts,
    rank,
)
from mosix_core.contract.plugins import build_plugin_manager  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from balance_scenarios import SCENARIOS, STANDARD, Job, ideal  # noqa: E402

TAU = 2.0  # mosd's load smoothing (LoadSmoother)
LINK_MB_S = 950.0  # a move's image bandwidth (1 GiB raw, proximate: bench/RESULTS.md)
MOVE_FIXED = 0.1  # a move's fixed part, s (10 MiB end to end: 0.16 s)
CALL_RTT = 60e-6  # a forwarded call's round trip, s (measured 30-60 µs)
BASE_IP = int(IPv4Address("10.0.0.1"))
PARTIAL = 2000  # views above this many nodes hold a random sample of this size
# measured information ages (periods): bench/RESULTS.md, "Gossip"; (nodes, mean, gamma shape)
AGES = ((16, 2.5, 6.0), (100, 3.6, 8.0), (1000, 4.65, 3.0), (10000, 58.7, 1.5))


def the_plugin():
    """The built-in policy's hook function, as the plugin manager registered it."""
    pm = build_plugin_manager()
    for impl in pm.hook.mosix_migration_decision.get_hookimpls():
        if impl.plugin_name == "balancing":
            return impl.function
    raise SystemExit("balance.py: the balancing plugin is not registered (run scripts/install.sh)")


def age_law(n: int) -> tuple[float, float]:
    """Mean and gamma shape of information ages at ``n`` nodes (log-interpolated)."""
    if n <= AGES[0][0]:
        return AGES[0][1], AGES[0][2]
    for (n0, m0, k0), (n1, m1, k1) in zip(AGES, AGES[1:], strict=False):
        if n <= n1:
            f = math.log(n / n0) / math.log(n1 / n0)
            return m0 + f * (m1 - m0), k0 + f * (k1 - k0)
    return AGES[-1][1], AGES[-1][2]


class Sim:
    """One run: ``placement`` is home, rr or ll; ``balance`` calls the plugin."""

    def __init__(
        self,
        nodes: list[tuple[int, int, int]],
        jobs: list[Job],
        seed: int,
        placement: str = "home",
        balance: bool = True,
        plugin=None,
        eager: bool = False,
        settings: BalanceSettings | None = None,
    ) -> None:
        self.n = n = len(nodes)
        self.speed = [s for s, _, _ in nodes]
        self.ncpus = [c for _, c, _ in nodes]
        self.mem = [m for _, _, m in nodes]
        self.ips = [IPv4Address(BASE_IP + i) for i in range(n)]
        self.jobs, self.placement, self.balance = jobs, placement, balance
        self.plugin, self.settings = plugin, settings or BalanceSettings()
        self.rng = random.Random(seed)
        self.on: list[list[Job]] = [[] for _ in range(n)]
        self.used = [0.0] * n
        self.runnable = [0.0] * n
        self.smooth = [0.0] * n
        self.last = [0.0] * n
        self.version = [0] * n
        self.moving = [False] * n
        self.ticking = [False] * n
        self.token = [0] * n  # a node's current chain of balancer periods
        self.eager = eager
        self.sent: list[dict] = [{} for _ in range(n)]
        self.heap: list = []
        self.seq = 0
        self.now = 0.0
        self.left = len(jobs)
        self.moves = self.refused = self.decisions = 0
        self.rr = 0
        mean, shape = age_law(n)
        self.history = 16 + int(mean * 6)  # seconds of published loads kept
        self.dead_after = max(10.0, 4 * math.ceil(n / 184))  # mosd's rule, 8 KiB datagrams
        self.loads: list[array] = []
        self.free: list[array] = []
        self.records: list[list[NodeFacts | None]] = []
        # information ages, drawn once: each view reads n of them from a random place
        self.ages = [self.rng.gammavariate(shape, mean / shape) for _ in range(4 * n + 4096)]
        self.variants: list[list] = []  # [ranked nodes, by address or None, sorted leavings or None]
        self.nvariants = 8 if n <= 100 else 4 if n <= PARTIAL else 16
        self.decide_s = 0.0
        self.last_arrival = max(j.arrival for j in jobs)

    # -- events ------------------------------------------------------------------------------------
    def push(self, t: float, kind: int, a, b=0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, a, b))

    def run(self) -> Sim:
        self.push(0.0, 3, 0)  # the first views, before anything arrives
        for job in self.jobs:
            self.push(job.arrival, 0, job)
        heap = self.heap
        while heap and self.left:
            t, _, kind, a, b = heapq.heappop(heap)
            self.now = t
            if kind == 1:
                if b == self.version[a]:
                    self.node_event(a)
            elif kind == 2:
                if b == self.token[a]:
                    self.tick(a)
            elif kind == 0:
                self.arrive(a)
            elif kind == 3:
                self.publish(a)
            else:
                self.arrived(a, b)
        return self

    # -- physics -----------------------------------------------------------------------------------
    def advance(self, i: int) -> None:
        now = self.now
        dt = now - self.last[i]
        if dt <= 0:
            return
        w = math.exp(-dt / TAU)
        self.smooth[i] = self.smooth[i] * w + self.runnable[i] * (1 - w)
        for job in self.on[i]:
            work = job.rate * dt
            job.done += work
            job.phase_left -= work
            _, calls, nbytes = job.phases[job.phase]
            if calls or job.io_num or job.io_bytes:
                keep = math.exp(-job.decay * dt)
                grow = dt if job.decay == 0 else (1 - keep) / job.decay
                job.io_num = job.io_num * keep + calls * job.rate * grow
                job.io_bytes = job.io_bytes * keep + nbytes * job.rate * grow
                job.io_den = job.io_den * keep + grow
            else:
                keep = math.exp(-job.decay * dt)
                job.io_den = job.io_den * keep + (dt if job.decay == 0 else (1 - keep) / job.decay)
        self.last[i] = now

    def recompute(self, i: int) -> None:
        """The rates on node ``i`` (processor sharing, waits away from home, thrashing) and its next event."""
        jobs, c, per_cpu = self.on[i], self.ncpus[i], self.speed[i] / STANDARD_SPEED
        for job in jobs:
            _, calls, nbytes = job.phases[job.phase]
            job.wait = 0.0 if job.home == i else calls * CALL_RTT + nbytes / (LINK_MB_S * 1e6)
            job.demand = 1.0
        for _ in range(3 if any(j.wait for j in jobs) else 1):
            total = sum(j.demand for j in jobs)
            frac = min(1.0, c / total) if total else 1.0
            x = frac * per_cpu
            for job in jobs:
                job.demand = 1.0 / (1.0 + job.wait * x)
        total = sum(j.demand for j in jobs)
        frac = min(1.0, c / total) if total else 1.0
        thrash = min(1.0, self.mem[i] / self.used[i]) ** 2 if self.used[i] > 0 else 1.0
        self.runnable[i] = total
        self.version[i] += 1
        soonest = math.inf
        for job in jobs:
            x = frac * per_cpu
            job.rate = x / (1.0 + job.wait * x) * thrash
            soonest = min(soonest, min(job.work - job.done, job.phase_left) / job.rate)
        if soonest < math.inf:
            self.push(self.now + max(soonest, 0.0), 1, i, self.version[i])

    def node_event(self, i: int) -> None:
        self.advance(i)
        keep = []
        for job in self.on[i]:
            if job.done >= job.work - 1e-7 * max(1.0, job.work):
                job.finish = self.now
                self.left -= 1
                self.used[i] -= job.image
                continue
            if job.phase_left <= 1e-7:
                job.phase = (job.phase + 1) % len(job.phases)
                job.phase_left = job.phases[job.phase][0]
            keep.append(job)
        self.on[i] = keep
        self.recompute(i)

    def place(self, job: Job, i: int) -> None:
        if self.balance and not self.ticking[i]:
            self.ticking[i] = True  # its balancer runs while it has processes (a random phase)
            self.push(self.now + self.rng.uniform(0.0, 1.2), 2, i, self.token[i])
        self.advance(i)
        job.node = i
        self.on[i].append(job)
        self.recompute(i)

    def arrive(self, job: Job) -> None:
        i = job.home
        if self.placement == "rr":
            i, self.rr = self.rr % self.n, self.rr + 1
        elif self.placement == "ll":
            i = self.least_loaded(job)
        self.used[i] += job.image
        self.place(job, i)

    def least_loaded(self, job: Job) -> int:
        """``mosrun -b``: the node where it would run fastest by the same model, in a view of
        its own (each origin sees gossip its own way; ties: home)."""
        h = job.home
        # a view of its own per start up to 1,000 nodes; above, half of one of this second's
        # 16 draws (no two starts see alike, as no two nodes' views are alike)
        if self.n <= 1000:
            nodes = self.draw_view(int(self.now))[0]
        else:
            shared = self.variants[self.rng.randrange(len(self.variants))][0]
            nodes = rank(self.rng.sample(shared, len(shared) // 2), self.settings)
        view = BalanceView(
            local=self.local_facts(h), nodes=nodes, now=self.now, settings=self.settings, sent=self.recent_sent(h)
        )
        best, best_share = h, view.local.newcomer
        for node in nodes[:64]:
            j = int(node.ip) - BASE_IP
            if j != h and node.mem_avail_mb >= job.needmem:
                share = view.effective_share(node)
                if share > best_share * 1.0001:
                    best, best_share = j, share
        if best != h:
            self.sent[h].setdefault(self.ips[best], []).append(self.now)
        return best

    # -- gossip --------------------------------------------------------------------------------------
    def publish(self, slot: int) -> None:
        """Every node's smoothed load and free memory at second ``slot``; fresh view draws."""
        now = self.now
        loads, free = array("d"), array("d")
        for i in range(self.n):
            w = math.exp(-(now - self.last[i]) / TAU)
            smooth = self.smooth[i] * w + self.runnable[i] * (1 - w)
            loads.append(100.0 * smooth * STANDARD_SPEED / (self.ncpus[i] * self.speed[i]))
            free.append(max(0.0, self.mem[i] - self.used[i]))
        self.loads.append(loads)
        self.free.append(free)
        self.records.append([None] * self.n)
        if len(self.loads) > self.history:
            del self.loads[0], self.free[0], self.records[0]
        if self.balance or (self.placement == "ll" and self.n > 1000 and now <= self.last_arrival + 1):
            self.variants = [self.draw_view(slot) for _ in range(self.nvariants)]
        self.push(now + 1.0, 3, slot + 1)

    def draw_view(self, slot: int) -> list:
        """One observer's view: node ``i`` as published ``age`` seconds ago (a record per node and
        second, shared by every view that sees that version). Above 2,000 nodes a view holds a
        random 2,000 of them: what differs between observers matters more than each view's size."""
        kept, ips, speed, ncpus = len(self.loads), self.ips, self.speed, self.ncpus
        start = self.rng.randrange(len(self.ages) - self.n)
        ages, dead = self.ages[start : start + self.n], self.dead_after
        which = range(self.n) if self.n <= PARTIAL else self.rng.sample(range(self.n), PARTIAL)
        nodes = []
        for i in which:
            age = ages[i]
            if age > dead:
                continue
            back = min(int(age), kept - 1)  # older than what is kept: the oldest kept stands for it
            k = kept - 1 - back
            record = self.records[k][i]
            if record is None:
                record = self.records[k][i] = NodeFacts(
                    ips[i], self.loads[k][i], speed[i], ncpus[i], int(self.free[k][i]), 0, float(slot - back)
                )
            nodes.append(record)
        return [rank(nodes, self.settings), None, None]

    def view_for(self, i: int) -> tuple[BalanceView, list]:
        """Node ``i``'s view: one of this second's draws, its own recent moves, its own facts
        (what a view computes on first use is kept with the draw for the next node using it)."""
        variant = self.variants[self.rng.randrange(len(self.variants))]
        nodes, by_ip, leavings = variant
        return BalanceView(
            local=self.local_facts(i),
            nodes=nodes,
            now=self.now,
            settings=self.settings,
            sent=self.recent_sent(i),
            by_ip=by_ip,
            leavings=leavings,
        ), variant

    def recent_sent(self, i: int) -> dict:
        """The times of node ``i``'s moves (or placements) to each node in the last 10 s."""
        sent = self.sent[i]
        if not sent:
            return sent
        horizon = self.now - 10.0
        for ip in [ip for ip, times in sent.items() if times[-1] < horizon]:
            del sent[ip]
        return {ip: tuple(t for t in times if t >= horizon) for ip, times in sent.items()}

    def local_facts(self, i: int) -> NodeFacts:
        load = 100.0 * self.runnable[i] * STANDARD_SPEED / (self.ncpus[i] * self.speed[i])
        return NodeFacts(
            self.ips[i], load, self.speed[i], self.ncpus[i], int(max(0.0, self.mem[i] - self.used[i])), 0, self.now
        )

    # -- the balancer --------------------------------------------------------------------------------
    def tick(self, i: int) -> None:
        if not self.on[i] and not self.moving[i]:
            self.ticking[i] = False  # no candidates: the hook is not called; asleep until a job comes
            return
        self.push(self.now + self.rng.uniform(0.8, 1.2), 2, i, self.token[i])
        if self.moving[i]:
            return
        self.advance(i)
        now, ips = self.now, self.ips
        candidates = [
            ProcessFacts(
                pid=job.id,
                home=None if job.home == i else ips[job.home],
                cpu_share=job.demand,  # the time it ran or waited to run, as mosd measures it
                cpu_seconds=job.done,
                image_mb=job.image,
                needmem_mb=job.needmem,
                io_calls=job.io_num / job.io_den if job.io_den else 0.0,
                io_bytes=job.io_bytes / job.io_den if job.io_den else 0.0,
                cpujob=job.cpujob,
                since_move=now - job.moved_at,
            )
            for job in self.on[i]
        ]
        view, variant = self.view_for(i)
        started = time.perf_counter()
        decision = self.plugin(candidates=candidates, view=view)
        self.decide_s += time.perf_counter() - started
        variant[1], variant[2] = view.by_ip, view.leavings
        self.decisions += 1
        if decision is None or decision.target is None:
            return
        job = next(j for j in self.on[i] if j.id == decision.pid)
        target = int(decision.target) - BASE_IP
        if self.mem[target] - self.used[target] < job.needmem:
            self.refused += 1
            return
        self.on[i].remove(job)
        self.used[i] -= job.image
        self.used[target] += job.image
        self.recompute(i)
        job.node = -1
        self.moving[i] = True
        self.sent[i].setdefault(decision.target, []).append(now)
        self.push(now + MOVE_FIXED + job.image / LINK_MB_S, 4, job, (i, target))

    def arrived(self, job: Job, way: tuple[int, int]) -> None:
        source, target = way
        self.moving[source] = False
        if self.eager and self.on[source]:
            # --eager: the source decides again as soon as its move is over, not a period later
            self.token[source] += 1
            self.push(self.now, 2, source, self.token[source])
        job.moves += 1
        self.moves += 1
        job.moved_at = self.now
        self.place(job, target)


# -- metrics ----------------------------------------------------------------------------------------
def measure(nodes, jobs, sim: Sim | None) -> dict:
    fastest = max(s for s, _, _ in nodes) / STANDARD_SPEED
    start = min(j.arrival for j in jobs)
    makespan = max(j.finish for j in jobs) - start
    slowdowns = [(j.finish - j.arrival) / (j.work / fastest) for j in jobs]
    out = {
        "makespan_over_ideal": makespan / ideal(nodes, jobs),
        "mean_slowdown": statistics.fmean(slowdowns),
        "migrations_per_job": sum(j.moves for j in jobs) / len(jobs),
        "makespan_s": makespan,
    }
    if sim is not None and sim.balance:
        out["decision_ms"] = 1000 * sim.decide_s / max(1, sim.decisions)
        out["refused_per_job"] = sim.refused / len(jobs)
    return out


WAYS = {
    "policy": ("home", True),
    "no_migration": ("home", False),
    "round_robin": ("rr", False),
    "least_loaded": ("ll", False),
}


def run_scenario(name: str, seeds: list[int], plugin, eager: bool = False) -> dict:
    runs: dict[str, list[dict]] = {way: [] for way in WAYS}
    started = time.perf_counter()
    for seed in seeds:
        for way, (placement, balance) in WAYS.items():
            nodes, jobs = SCENARIOS[name](random.Random(seed))
            sim = Sim(nodes, jobs, seed, placement, balance, plugin, eager=eager).run()
            runs[way].append(measure(nodes, jobs, sim))
    for k, run in enumerate(runs["policy"]):
        run["slowdown_vs_round_robin"] = run["mean_slowdown"] / runs["round_robin"][k]["mean_slowdown"]
    nodes, jobs = SCENARIOS[name](random.Random(seeds[0]))
    out: dict = {
        "scenario": name,
        "what": SCENARIOS[name].__doc__,
        "nodes": len(nodes),
        "jobs": len(jobs),
        "seeds": len(seeds),
        "ideal_makespan_s": round(ideal(nodes, jobs), 1),
    }
    for way, rows in runs.items():
        out[way] = {key: summary(key, [r[key] for r in rows]) for key in rows[0]}
    policy = out["policy"]
    out["targets_met"] = {
        "makespan_le_1.10_ideal": policy["makespan_over_ideal"]["median"] <= 1.10,
        "slowdown_30pct_below_round_robin": policy["slowdown_vs_round_robin"]["median"] <= 0.70,
        "migrations_le_2_per_job": policy["migrations_per_job"]["median"] <= 2.0,
    }
    out["standard"] = name in STANDARD
    out["eager"] = eager
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def summary(key: str, values: list[float]) -> dict:
    """Median first, the best beside it (lowest: every figure here is better lower)."""
    return {"median": round(statistics.median(values), 4), "best": round(min(values), 4)}


def time_decision(plugin, n: int = 1000, candidates: int = 8, repeat: int = 2000) -> dict:
    """One decision of the real plugin against an ``n``-node view (and the view's ranking)."""
    rng = random.Random(1)
    nodes = [
        NodeFacts(
            IPv4Address(BASE_IP + 1 + i),
            rng.choice((0, 25, 50, 100, 200, 400)) * 1.0,
            rng.choice((10000, 20000, 30000, 40000)),
            rng.choice((1, 2, 4, 8)),
            rng.choice((500, 4000, 16000)),
            0,
            100.0 - rng.gammavariate(3.0, 1.55),
        )
        for i in range(n)
    ]
    local = NodeFacts(IPv4Address(BASE_IP), 400.0, 10000, 2, 3000, 0, 100.0)
    procs = [
        ProcessFacts(
            pid=100 + k,
            home=None if k % 2 else nodes[k].ip,
            cpu_share=0.5,
            cpu_seconds=10.0 * k,
            image_mb=50.0 + 100 * k,
            io_calls=100.0 * k,
            io_bytes=1e5 * k,
            since_move=30.0,
        )
        for k in range(candidates)
    ]
    ranks, decides = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        view = BalanceView.of(local, nodes, 100.0)
        t1 = time.perf_counter()
        plugin(candidates=procs, view=view)
        t2 = time.perf_counter()
        ranks.append(t1 - t0)
        decides.append(t2 - t1)
    decides.sort()
    ranks.sort()
    return {
        "nodes": n,
        "candidates": candidates,
        "decision_ms_median": round(1000 * decides[len(decides) // 2], 4),
        "decision_ms_p99": round(1000 * decides[int(len(decides) * 0.99)], 4),
        "view_ranking_ms_median": round(1000 * ranks[len(ranks) // 2], 4),
        "decision": str(plugin(candidates=procs, view=BalanceView.of(local, nodes, 100.0))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per scenario, then the timing")
    parser.add_argument("--seeds", type=int, default=5, help="runs per scenario (3 at 1,000 nodes, 1 at 10,000)")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--eager", action="store_true", help="a node decides again as soon as its move is over")
    args = parser.parse_args()
    plugin = the_plugin()
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    for name in names:
        count = args.seeds if not name.startswith("nodes_") else min(args.seeds, 3 if name == "nodes_1000" else 1)
        result = run_scenario(name, list(range(1, count + 1)), plugin, args.eager)
        print(json.dumps(result) if args.json else human(result), flush=True)
    timing = time_decision(plugin)
    print(json.dumps({"decision_timing": timing}) if args.json else f"one decision at 1,000 nodes: {timing}")


def human(r: dict) -> str:
    lines = [f"{r['scenario']}: {r['what']} ({r['jobs']} jobs, {r['seeds']} seeds, {r['seconds']} s)"]
    for way in WAYS:
        row = r[way]
        lines.append(
            f"  {way:13} makespan/ideal {row['makespan_over_ideal']['median']:.3f} "
            f"({row['makespan_over_ideal']['best']:.3f})  mean slowdown {row['mean_slowdown']['median']:.2f} "
            f"({row['mean_slowdown']['best']:.2f})  migrations/job {row['migrations_per_job']['median']:.2f}"
        )
    lines.append(
        f"  policy slowdown / round-robin {r['policy']['slowdown_vs_round_robin']['median']:.3f}; "
        f"targets {r['targets_met']}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
