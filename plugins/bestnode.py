"""Best-node selection: the node where one more process would see the lowest load.

The expected load of a node is its reported load plus one process for every start
already promised there (``mosbestnode`` without ``-n``) plus the newcomer; a
process adds ``100 * 10000 / (speed * ncpus)`` standard-load hundredths. Ties go
to the home node (no migration needed), then to the faster node.
"""

from __future__ import annotations

from mosix_core.cluster.gossip import NodeEntry
from mosix_core.contract.hookspecs import hookimpl
from mosix_core.contract.records import PlacementRequest, PlacementView
from mosix_core.cluster.resources import load_of


def expected_load(entry: NodeEntry) -> float:
    st = entry.status
    return st.load + (entry.reserved + 1) * load_of(1, st.ncpus, st.speed)


@hookimpl(trylast=True)
def mosix_select_node(request: PlacementRequest, view: PlacementView) -> NodeEntry | None:
    best = None
    best_key = None
    for entry in view.candidates(request):
        key = (expected_load(entry), entry.status.ip != view.local_ip, -entry.status.speed, int(entry.status.ip))
        if best_key is None or key < best_key:
            best, best_key = entry, key
    return best
