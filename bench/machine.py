"""What the benchmarks ask about this machine: how busy its CPUs are, and waiting
until other work (tests, builds) has stopped landing in the figures; and their
working directory's end."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def finish_work(work: Path, keep: bool) -> None:
    """Remove a benchmark's temporary directory, or say where it is kept (``--keep``)."""
    if keep:
        say(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else 0.0


def wait_idle(limit: float, threshold: float = 0.15) -> float:
    """Wait (up to ``limit`` seconds) until the CPUs are idle for a second. Returns the
    busy share seen last."""
    deadline = time.monotonic() + limit
    quiet, busy = 0, 0.0
    while True:
        before = cpu_times()
        time.sleep(0.5)
        busy = busy_share(before, cpu_times())
        quiet = quiet + 1 if busy < threshold else 0
        if quiet >= 2:
            return busy
        if time.monotonic() >= deadline:
            say(f"  (the machine is still {100 * busy:.0f} % busy after waiting {limit:g} s: going on)")
            return busy
