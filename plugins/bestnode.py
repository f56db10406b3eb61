"""Best-node selection and the automatic-migration rule.

Best-node selection: the node where one more process would see the lowest load.

The expected load of a node is its reported load plus one process for every start
already promised there (``mosbestnode`` without ``-n``) plus the newcomer; a
process adds ``100 * 10000 / (speed * ncpus)`` standard-load hundredths. Ties go
to the home node (no migration needed), then to the faster node.
"""

from __future__ import annotations


from mosix_core.gossip import NodeEntry
from mosix_core.hookspecs import hookimpl
from mosix_core.gossip import ST_LSTAY, ST_STAY
from mosix_core.placement import MigrationCandidate, MigrationDecision, PlacementRequest, PlacementView


def expected_load(entry: NodeEntry) -> float:
    st = entry.status
    per_process = 100 * 10000 / (max(1, st.speed) * max(1, st.ncpus))
    return st.load + (entry.reserved + 1) * per_process


@hookimpl(trylast=True)
def mosix_select_node(request: PlacementRequest, view: PlacementView) -> NodeEntry | None:
    best = None
    best_key = None
    for entry in view.candidates(request):
        key = (expected_load(entry), entry.status.ip != view.local_ip, -entry.status.speed, int(entry.status.ip))
        if best_key is None or key < best_key:
            best, best_key = entry, key
    return best


def process_share(entry: NodeEntry) -> float:
    """Load (in hundredths of a standard unit) that one CPU-bound process adds to a node."""
    st = entry.status
    return 100 * 10000 / (max(1, st.speed) * max(1, st.ncpus))


@hookimpl(trylast=True)
def mosix_migration_decision(process: MigrationCandidate, view: PlacementView) -> MigrationDecision:
    """Move a process when another node would run it with clearly less load.

    The process leaves only if its share of the target's expected load is lower than
    the load it sees where it is by more than half a process there (hysteresis, so
    two nodes don't trade a process back and forth), and never when locked or when
    its node is in stay mode.
    """
    if process.locked:
        return MigrationDecision.stay("locked")
    here = view.view.entries.get(process.where)
    if here is None:
        return MigrationDecision.stay("no information about the current node")
    at_home = process.home is None or process.home == process.where
    if here.status.state & ST_STAY or (at_home and here.status.state & ST_LSTAY):
        return MigrationDecision.stay("stay mode")
    request = PlacementRequest(memory_mb=process.memory_mb, allow_local=True,
                              exclude=frozenset({process.where}))
    others = view.candidates(request)
    if not others:
        return MigrationDecision.stay("no other node qualifies")
    target = min(others, key=expected_load)
    if expected_load(target) < here.status.load - process_share(here) / 2:
        return MigrationDecision.go(target.status.ip, "lower load")
    return MigrationDecision.stay("balanced")
