"""Best-node selection (``mosrun -b``, ``mosbestnode``): the node where one more process
would run fastest, by the load model the balancer uses (``mosix_core.contract.balancing``).

What a newcomer gets on a node is :func:`~mosix_core.contract.balancing.newcomer_share` of the
load it reports, counting one process for every start already promised there (``mosbestnode``
without ``-n``) and the newcomer itself. Among equals the one whose load would stay lowest
(:func:`expected_load`: a process adds ``100 * 10000 / (speed * ncpus)`` standard-load
hundredths), then the home node (no migration needed), then the faster node.
"""

from __future__ import annotations

from mosix_core.cluster.gossip import NodeEntry
from mosix_core.cluster.resources import load_of
from mosix_core.contract.balancing import newcomer_share
from mosix_core.contract.hookspecs import hookimpl
from mosix_core.contract.records import PlacementRequest, PlacementView


def expected_load(entry: NodeEntry) -> float:
    st = entry.status
    return st.load + (entry.reserved + 1) * load_of(1, st.ncpus, st.speed)


@hookimpl(trylast=True)
def mosix_select_node(request: PlacementRequest, view: PlacementView) -> NodeEntry | None:
    best = None
    best_key = None
    for entry in view.candidates(request):
        st = entry.status
        share = newcomer_share(st.load, st.ncpus, st.speed, added=entry.reserved + 1)
        key = (-round(share, 9), expected_load(entry), st.ip != view.local_ip, -st.speed, int(st.ip))
        if best_key is None or key < best_key:
            best, best_key = entry, key
    return best
