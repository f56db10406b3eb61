"""Address runs: intersect, subtract and union agree with sets of pages."""

from __future__ import annotations

import random

from mosix_core.image import runs


def random_runs(rng: random.Random) -> runs.Runs:
    pages = sorted(rng.sample(range(200), rng.randrange(0, 120)))
    out: runs.Runs = []
    for page in pages:
        runs.append(out, page * 4096, (page + 1) * 4096)
    return out


def pages_of(value: runs.Runs) -> set[int]:
    return {address // 4096 for start, end in value for address in range(start, end, 4096)}


def well_formed(value: runs.Runs) -> bool:
    return all(start < end for start, end in value) and all(a[1] < b[0] for a, b in zip(value, value[1:]))


def test_the_operations_agree_with_sets_of_pages():
    rng = random.Random(7)
    for _ in range(300):
        a, b = random_runs(rng), random_runs(rng)
        for result, expected in (
            (runs.intersect(a, b), pages_of(a) & pages_of(b)),
            (runs.subtract(a, b), pages_of(a) - pages_of(b)),
            (runs.union(a, b), pages_of(a) | pages_of(b)),
        ):
            assert pages_of(result) == expected and well_formed(result)
        assert runs.total(a) == 4096 * len(pages_of(a))


def test_runs_that_touch_are_one():
    value: runs.Runs = []
    runs.append(value, 0, 4096)
    runs.append(value, 4096, 8192)
    runs.append(value, 12288, 16384)
    assert value == [(0, 8192), (12288, 16384)]
    assert runs.subtract([(0, 16384)], [(4096, 8192)]) == [(0, 4096), (8192, 16384)]
