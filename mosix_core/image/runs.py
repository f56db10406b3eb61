"""Sets of addresses as sorted lists of disjoint ``(start, end)`` runs."""

from __future__ import annotations

Runs = list[tuple[int, int]]


def append(runs: Runs, start: int, end: int) -> None:
    """Add ``[start, end)``, which lies at or after the last run (merged when it touches)."""
    if runs and runs[-1][1] == start:
        runs[-1] = (runs[-1][0], end)
    else:
        runs.append((start, end))


def intersect(a: Runs, b: Runs) -> Runs:
    out: Runs = []
    i = j = 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            append(out, start, end)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: Runs, b: Runs) -> Runs:
    """What of ``a`` is not in ``b``."""
    out: Runs = []
    j = 0
    for start, end in a:
        while j < len(b) and b[j][1] <= start:
            j += 1
        k = j
        while start < end:
            if k == len(b) or b[k][0] >= end:
                append(out, start, end)
                break
            if b[k][0] > start:
                append(out, start, b[k][0])
            start = max(start, b[k][1])
            k += 1
    return out


def union(a: Runs, b: Runs) -> Runs:
    out: Runs = []
    for start, end in sorted(a + b):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def total(runs: Runs) -> int:
    return sum(end - start for start, end in runs)
