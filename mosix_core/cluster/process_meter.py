"""What each MOSIX process on this node does, read from ``/proc``: the CPU it wants, its
memory, and the system calls and I/O its home serves — the balancer's facts.

* **CPU demand** is the fraction of the time the process was *runnable* — on a CPU or
  waiting for one (``/proc/PID/schedstat``: run and wait nanoseconds). CPU time alone
  would say how much it got, which on a busy machine is less than it wants: four nodes
  of a local cluster sharing two CPUs would each see their processes "half busy".
  Smoothed with the load's time constant.
* **Calls and bytes** are ``syscr + syscw`` and ``rchar + wchar`` of ``/proc/PID/io``,
  kept as MOSIX keeps process statistics: decayed by the process's decay rate per second
  (``mosrun -d``, ``/proc/self/decayrate``; 9976/10000 by default) and started again when
  it writes ``/proc/self/clear``. The rate is the decayed count over the decayed time, so
  a process that has always done the same is known at once and a change shows within
  about ``1 / (1 - rate)`` seconds. For a guest these are its guest host's counters: the
  host carries each forwarded call to home and back (the image it received is left out:
  counting starts once the process runs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs

from mosix_core.cluster.proctable import DECAY_SCALE, DEFAULT_DECAY
from mosix_core.cluster.resources import process_rss_mb, sched_times

#: the time constant of the CPU demand (seconds): the load's (mosix_core.cluster.resources.LoadSmoother)
DEMAND_TAU = 2.0


def io_counters(pid: int) -> tuple[int, int] | None:
    """(system calls that read or wrote, bytes they carried) of ``pid`` so far."""
    try:
        with open(f"/proc/{pid}/io", "rb") as f:
            fields = dict(line.split(b":", 1) for line in f.read().splitlines() if b":" in line)
        return (int(fields[b"syscr"]) + int(fields[b"syscw"]), int(fields[b"rchar"]) + int(fields[b"wchar"]))
    except (OSError, ValueError, KeyError):
        return None


@attrs.define
class Usage:
    """One process's measured behaviour (runtime state, updated each sample)."""

    demand: float = 0.0  # fraction of the time it was runnable (smoothed)
    cpu_seconds: float = 0.0  # CPU time used so far
    rss_mb: int = 0
    calls: float = 0.0  # decayed count of calls
    bytes: float = 0.0  # decayed count of bytes
    weight: float = 0.0  # decayed seconds observed: the rates' denominator
    samples: int = 0
    # the raw counters at the last sample
    at: float = 0.0
    sched: int | None = None
    io: tuple[int, int] | None = None
    cleared: int = 0
    io_pid: int = 0

    @property
    def call_rate(self) -> float:
        return self.calls / self.weight if self.weight > 0 else 0.0

    @property
    def byte_rate(self) -> float:
        return self.bytes / self.weight if self.weight > 0 else 0.0


class ProcessMeter:
    """:class:`Usage` of each process it is asked about, from one sample to the next."""

    def __init__(self) -> None:
        self.usage: dict[int, Usage] = {}

    def sample(
        self, pid: int, now: float, *, io_pid: int | None = None, decayrate: int = DEFAULT_DECAY, cleared: int = 0
    ) -> Usage | None:
        """Measure ``pid`` (its calls and I/O on ``io_pid``, itself by default); None if it
        has gone."""
        times = sched_times(pid)
        if times is None:
            self.usage.pop(pid, None)
            return None
        sched = sum(times)
        io_pid = pid if io_pid is None else io_pid
        io = io_counters(io_pid)
        usage = self.usage.get(pid)
        if usage is None or usage.io_pid != io_pid:
            # first sight: counting starts here (a guest's host has just received its image)
            usage = self.usage[pid] = Usage(at=now, sched=sched, io=io, cleared=cleared, io_pid=io_pid)
        else:
            elapsed = now - usage.at
            if elapsed > 0:
                runnable = min(1.0, max(0.0, (sched - (usage.sched or sched)) / 1e9 / elapsed))
                keep = math.exp(-elapsed / DEMAND_TAU)
                usage.demand = runnable if usage.samples == 0 else usage.demand * keep + runnable * (1 - keep)
                if cleared != usage.cleared:
                    usage.calls = usage.bytes = usage.weight = 0.0
                    usage.cleared = cleared
                else:
                    decay = (max(0, min(DECAY_SCALE, decayrate)) / DECAY_SCALE) ** elapsed
                    usage.calls *= decay
                    usage.bytes *= decay
                    usage.weight = usage.weight * decay + elapsed
                    if io is not None and usage.io is not None:
                        usage.calls += max(0, io[0] - usage.io[0])
                        usage.bytes += max(0, io[1] - usage.io[1])
                usage.samples += 1
            usage.at, usage.sched, usage.io = now, sched, io
        usage.cpu_seconds = times[0] / 1e9
        usage.rss_mb = process_rss_mb(pid)
        return usage

    def keep_only(self, pids: Iterable[int]) -> None:
        """Forget the processes not in ``pids`` (they ended or left)."""
        alive = set(pids)
        for pid in [p for p in self.usage if p not in alive]:
            del self.usage[pid]
