"""The simulator's jobs and scenarios (``bench/balance.py`` runs them), and the ideal they are
measured against. Each scenario takes a seeded ``random.Random`` and returns ``(nodes, jobs)``:
nodes as ``(speed, cpus, memory MB)``, jobs as :class:`Job`."""

from __future__ import annotations

import math
import random

from mosix_core.cluster.gossip import STANDARD_SPEED


class Job:
    __slots__ = (
        "id",
        "home",
        "arrival",
        "work",
        "image",
        "needmem",
        "cpujob",
        "phases",
        "decay",
        "node",
        "done",
        "rate",
        "demand",
        "wait",
        "phase",
        "phase_left",
        "io_num",
        "io_bytes",
        "io_den",
        "moved_at",
        "finish",
        "moves",
        "ip",
    )

    def __init__(
        self,
        id: int,
        home: int,
        arrival: float,
        work: float,
        image: float = 100.0,
        needmem: int = 0,
        cpujob: bool = False,
        phases: tuple = ((math.inf, 0.0, 0.0),),
        decay: int = 9976,
    ) -> None:
        self.id, self.home, self.arrival, self.work = id, home, arrival, work
        self.image, self.needmem, self.cpujob, self.phases = image, needmem, cpujob, phases
        self.decay = -math.log(max(decay, 1) / 10000.0)  # per second
        self.node, self.done, self.rate, self.demand, self.wait = -1, 0.0, 0.0, 1.0, 0.0
        self.phase, self.phase_left = 0, phases[0][0]
        self.io_num = self.io_bytes = self.io_den = 0.0
        self.moved_at, self.finish, self.moves = -math.inf, math.nan, 0


# -- scenarios -------------------------------------------------------------------------------------
def lognormal(rng: random.Random, median: float, sigma: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, median * math.exp(rng.gauss(0.0, sigma))))


def hetero_nodes(rng: random.Random, n: int, mem: int = 16384) -> list[tuple[int, int, int]]:
    return [(rng.choice((10000, 20000, 30000, 40000)), rng.choice((1, 2, 4)), mem) for _ in range(n)]


def capacity(nodes) -> float:
    return sum(s * c for s, c, _ in nodes) / STANDARD_SPEED


def all_at_once(rng, homes, count, mean, spread=0.5, image=(20.0, 200.0)) -> list[Job]:
    """``count`` jobs started at once, of ``mean`` standard CPU-seconds ± ``spread`` (uniform):
    a batch of similar runs (a parameter sweep), MOSIX's everyday workload."""
    return [
        Job(k, homes[k % len(homes)], 0.0, mean * rng.uniform(1 - spread, 1 + spread), image=rng.uniform(*image))
        for k in range(count)
    ]


def arrivals(rng, nodes, window, util, median, sigma, bursts=0.0) -> list[Job]:
    """Poisson arrivals at random homes loading the cluster to ``util``; a share ``bursts``
    of them come 16 at a time on one node (a user starting a batch)."""
    mean = median * math.exp(sigma * sigma / 2)
    rate = util * capacity(nodes) / mean
    jobs, t, k = [], 0.0, 0
    while True:
        t += rng.expovariate(rate)
        if t > window:
            return jobs
        home = rng.randrange(len(nodes))
        for _ in range(16 if rng.random() < bursts / 16 else 1):
            jobs.append(Job(k, home, t, lognormal(rng, median, sigma, 2, 30 * median), image=rng.uniform(20, 500)))
            k += 1


def one_node(rng):
    """16 equal nodes, 64 CPU jobs started on one node."""
    nodes = [(10000, 1, 8192)] * 16
    return nodes, all_at_once(rng, [0], 64, 120)


def hetero(rng):
    """16 nodes of speeds 1x-4x and 1, 2 or 4 CPUs; 4 jobs per CPU (as above) started on random nodes."""
    nodes = hetero_nodes(rng, 16)
    count = 4 * sum(c for _, c, _ in nodes)
    return nodes, all_at_once(rng, [rng.randrange(16) for _ in range(count)], count, 150)


def memory(rng):
    """16 nodes of 2 CPUs and 16 GB; 128 jobs of 0.5-1.5 GB (their -m) started on 4 nodes (32 GB each)."""
    nodes = [(10000, 2, 16384)] * 16
    jobs = all_at_once(rng, [0, 1, 2, 3], 128, 200, image=(500.0, 1500.0))
    for job in jobs:
        job.needmem = int(job.image)
    return nodes, jobs


def io_phased(rng):
    """16 equal nodes; 64 jobs started on 4 nodes, half of them alternating 30 s of CPU with
    15 s of I/O (20,000 calls and 2 MB per CPU-second: 1.2 s of waiting per CPU-second away);
    a quarter of those run with -c (cpujob)."""
    nodes = [(10000, 1, 8192)] * 16
    jobs = all_at_once(rng, [0, 1, 2, 3], 64, 150)
    for job in jobs[::2]:
        job.phases = ((30.0, 0.0, 0.0), (15.0, 20000.0, 2e6))
        job.phase_left = 30.0
        job.decay = -math.log(0.99)  # -d9900: the user knows the job's cycle
    for job in jobs[::8]:
        job.cpujob = True
    return nodes, jobs


def arriving(rng):
    """32 nodes of speeds 1x-4x; jobs arriving at random nodes for 600 s at 75 % load."""
    nodes = hetero_nodes(rng, 32)
    return nodes, arrivals(rng, nodes, 600, 0.75, 60, 1.0, bursts=0.2)


def scale(n, window):
    def scenario(rng):
        nodes = hetero_nodes(rng, n)
        return nodes, arrivals(rng, nodes, window, 0.7, 40, 0.8, bursts=0.3)

    scenario.__doc__ = f"{n:,} nodes of speeds 1x-4x; jobs arriving for {window} s at 70 % load, 30 % in batches of 16."
    return scenario


SCENARIOS = {
    "one_node_64": one_node,
    "hetero_speeds": hetero,
    "memory": memory,
    "io_phased": io_phased,
    "arrivals": arriving,
    "nodes_1000": scale(1000, 60),
    "nodes_10000": scale(10000, 10),
}
#: where the targets apply (makespan within 10 % of the bound needs the work to be spreadable)
STANDARD = ("one_node_64", "hetero_speeds", "memory", "arrivals")


# -- the bound ---------------------------------------------------------------------------------
def ideal(nodes, jobs) -> float:
    """A lower bound on the makespan: no job finishes before it could alone on the fastest CPU,
    and the work arriving from any time on needs the whole cluster's capacity."""
    cap, fastest = capacity(nodes), max(s for s, _, _ in nodes) / STANDARD_SPEED
    start = min(j.arrival for j in jobs)
    bound = max(j.arrival + j.work / fastest for j in jobs)
    rest = sum(j.work for j in jobs)
    for job in sorted(jobs, key=lambda j: j.arrival):
        bound = max(bound, job.arrival + rest / cap)
        rest -= job.work
    return bound - start
