"""Measuring a node's resources: CPUs, run queue, memory and swap.

Two ways, chosen by ``resources`` in ``mosd.conf`` and carried out by the built-in
``resources`` plugin:

* ``host``: the whole machine (``/proc/stat``, ``/proc/meminfo``) — a real node.
* ``virtual``: only the MOSIX processes this node hosts, on a configured number of
  CPUs and amount of memory — several nodes sharing one machine (the local cluster),
  where the machine-wide run queue would make every node look equally busy.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

import attrs

from mosix_core.cluster.gossip import PAGE_SIZE, STANDARD_SPEED
from mosix_core.linux.procfs import stat_fields

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@attrs.frozen
class ResourceSample:
    """One instantaneous measurement (the daemon smooths ``runnable`` over time)."""

    runnable: float  # processes wanting a CPU right now
    ncpus: int
    mem_avail_mb: int
    mem_total_mb: int
    swap_free_mb: int
    swap_total_mb: int


def _meminfo() -> dict[str, int]:
    values: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[key] = int(parts[0])  # kB
    return values


def _procs_running() -> int:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("procs_running"):
                return int(line.split()[1])
    return 0


def measure_host() -> ResourceSample:
    mem = _meminfo()
    # The sampling daemon itself is running while it reads /proc/stat: don't count it.
    return ResourceSample(
        runnable=max(0, _procs_running() - 1),
        ncpus=len(os.sched_getaffinity(0)) or (os.cpu_count() or 1),
        mem_avail_mb=mem.get("MemAvailable", mem.get("MemFree", 0)) // 1024,
        mem_total_mb=mem.get("MemTotal", 0) // 1024,
        swap_free_mb=mem.get("SwapFree", 0) // 1024,
        swap_total_mb=mem.get("SwapTotal", 0) // 1024,
    )


def process_cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process, in clock ticks; None if it is gone."""
    fields = stat_fields(pid)
    return None if fields is None else int(fields[11]) + int(fields[12])


def process_rss_mb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_SIZE // (1024 * 1024)
    except (OSError, IndexError, ValueError):
        return 0


def sched_times(pid: int) -> tuple[int, int] | None:
    """Nanoseconds ``pid`` has run on a CPU, and waited for one (``/proc/PID/schedstat``)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            run, wait, _ = f.read().split()
        return int(run), int(wait)
    except (OSError, ValueError):
        return None


class VirtualMeter:
    """CPU demand of a set of processes: how much of the time between samples each was
    runnable (on a CPU or waiting for one). What they *got* would understate it whenever
    the machine is busier than the virtual node: nodes of a local cluster share its CPUs."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[int, float]] = {}

    def sample(
        self,
        pids: Iterable[int],
        now: float,
        cpus: int,
        memory_mb: int,
        swap_mb: int,
    ) -> ResourceSample:
        demand = 0.0
        used_mb = 0
        seen = {}
        for pid in pids:
            times = sched_times(pid)
            if times is None:
                continue
            runnable_ns = sum(times)
            previous = self._last.get(pid)
            seen[pid] = (runnable_ns, now)
            if previous is not None and now > previous[1]:
                demand += min(1.0, (runnable_ns - previous[0]) / 1e9 / (now - previous[1]))
            used_mb += process_rss_mb(pid)
        self._last = seen
        return ResourceSample(
            runnable=demand,
            ncpus=cpus,
            mem_avail_mb=max(0, memory_mb - used_mb),
            mem_total_mb=memory_mb,
            swap_free_mb=swap_mb,
            swap_total_mb=swap_mb,
        )


class LoadSmoother:
    """Exponentially decaying average of the run queue: time constant ``tau`` seconds as
    the load falls, ``tau_up`` as it rises. A node that has just received processes says
    so within a gossip period, so the others do not send it more on old news; a load that
    drops shows only once it stayed low (a pause of its processes attracts nobody)."""

    def __init__(self, tau: float = 2.0, tau_up: float | None = None) -> None:
        self.tau = tau
        self.tau_up = tau if tau_up is None else tau_up
        self.value = 0.0
        self._t: float | None = None

    def add(self, runnable: float, now: float) -> float:
        if self._t is None:
            self.value = runnable
        else:
            tau = self.tau_up if runnable > self.value else self.tau
            weight = math.exp(-(now - self._t) / tau)
            self.value = self.value * weight + runnable * (1 - weight)
        self._t = now
        return self.value


def load_of(runnable: float, ncpus: int, speed: int) -> float:
    """MOSIX load, unrounded: 100 = one CPU-bound process on one standard-speed
    processor. ``load_of(1, ...)`` is what one more process adds to a node."""
    return 100 * runnable * STANDARD_SPEED / (max(1, ncpus) * max(1, speed))


def standard_load(runnable: float, ncpus: int, speed: int) -> int:
    """The load a node reports (:func:`load_of`, in whole hundredths)."""
    return round(load_of(runnable, ncpus, speed))
