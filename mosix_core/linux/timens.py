"""Clocks and time namespaces: a guest reads its home node's clocks.

A process that moves must not see ``CLOCK_MONOTONIC`` or ``CLOCK_BOOTTIME`` jump:
each node counts them from its own boot. The guest host therefore measures how far
home's clocks are from its own and makes the guest's children-to-be live in a time
namespace (time_namespaces(7)) whose offsets close the gap; the kernel then shifts
those clocks everywhere — vDSO, ``clock_nanosleep(TIMER_ABSTIME)``, timerfds — at
no cost per call. ``CLOCK_REALTIME`` has no namespace: it is handled by the guest
itself (see :mod:`mosix_core.remote.guest`).

Offsets written into a new namespace are counted from the machine's own clocks,
not from the writer's namespace, so the writer's own offsets are added in.
"""

from __future__ import annotations

import os
import time

from mosix_core.errors import TraceError
from mosix_core.linux.libc import LIBC, fail

CLONE_NEWTIME = 0x80
OFFSETS = "/proc/self/timens_offsets"
NS_PER_S = 1_000_000_000
CLOCK_BOOTTIME = 7
#: the clocks a time namespace shifts, by the name /proc/PID/timens_offsets gives them
SHIFTED = {"monotonic": time.CLOCK_MONOTONIC, "boottime": CLOCK_BOOTTIME}
#: the clocks compared between nodes: the shifted ones and the wall clock
COMPARED = {"realtime": time.CLOCK_REALTIME, **SHIFTED}


def readings() -> dict[str, int]:
    """This node's clocks now, in nanoseconds, by name."""
    return {name: time.clock_gettime_ns(clock) for name, clock in COMPARED.items()}


def own_offsets(path: str = OFFSETS) -> dict[str, int]:
    """The caller's time namespace's offsets (nanoseconds; all 0 outside one)."""
    offsets = dict.fromkeys(SHIFTED, 0)
    try:
        with open(path) as lines:
            for line in lines:
                name, seconds, nanoseconds = line.split()
                offsets[name] = int(seconds) * NS_PER_S + int(nanoseconds)
    except FileNotFoundError:
        pass  # a kernel without time namespaces
    except (OSError, ValueError) as err:
        raise TraceError(f"reading {path}: {err}") from None
    return offsets


def children_shifted_by(shift: dict[str, int]) -> None:
    """Put the caller's children-to-be in a new time namespace whose shifted clocks
    read ``shift[name]`` nanoseconds more than the caller's own. Needs
    CAP_SYS_ADMIN; must come before the first child is made."""
    current = own_offsets()
    if LIBC.unshare(CLONE_NEWTIME) != 0:
        raise fail("unshare(CLONE_NEWTIME)")
    lines = []
    for name in SHIFTED:
        seconds, nanoseconds = divmod(current[name] + shift.get(name, 0), NS_PER_S)
        lines.append(f"{SHIFTED[name]} {seconds} {nanoseconds}\n")
    try:
        fd = os.open(OFFSETS, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, "".join(lines).encode())  # one write: all offsets or none
        finally:
            os.close(fd)
    except OSError as err:
        raise TraceError(f"setting time namespace offsets {lines}: {err.strerror}", err.errno) from None
