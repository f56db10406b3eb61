"""Lookup and overlap detection over ranges of consecutive integers.

Maps, user views and partner files all describe sets as ``(first, count)``
ranges; a lookup must stay logarithmic because placement asks "who is this
address?" for every candidate node.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class RangeIndex(Generic[T]):
    """Finds the item whose ``[start, start+count)`` holds a value; ranges must not overlap."""

    __slots__ = ("_starts", "_ends", "_items")

    def __init__(self, spans: Iterable[tuple[int, int, T]]) -> None:
        ordered = sorted(spans, key=lambda span: span[0])
        self._starts = [start for start, _, _ in ordered]
        self._ends = [start + count for start, count, _ in ordered]
        self._items = [item for _, _, item in ordered]

    def find(self, value: int) -> T | None:
        position = bisect_right(self._starts, value) - 1
        if position >= 0 and value < self._ends[position]:
            return self._items[position]
        return None

    def distinct(self) -> int:
        """How many values the ranges cover together (overlaps counted once)."""
        total = 0
        reached = None
        for start, end in zip(self._starts, self._ends):
            if reached is not None and start < reached:
                start = reached
            if end > start:
                total += end - start
            reached = end if reached is None else max(reached, end)
        return total


def find_overlap(spans: Iterable[tuple[int, int, T]]) -> tuple[T, T] | None:
    """Some pair of overlapping ranges ``(one that starts earlier, one that starts inside it)``."""
    ordered = sorted(spans, key=lambda span: span[0])
    widest: tuple[int, T] | None = None
    for start, count, item in ordered:
        if widest is not None and start < widest[0]:
            return widest[1], item
        end = start + count
        if widest is None or end > widest[0]:
            widest = (end, item)
    return None
