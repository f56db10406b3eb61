"""Guest admission: who may move into this node.

The built-in rule follows mosix(7): a blocked node ("mosctl block") or a node with
MOSIX turned off takes no one; a partner cluster needs ``cantake``; partner guests
are limited by ``maxguests`` (beyond it the node is too busy to receive now); a process
needing more memory than is free is refused.
"""

from __future__ import annotations

from mosix_core.contract.hookspecs import hookimpl
from mosix_core.contract.records import TOO_BUSY, Admission, AdmissionRequest, NodeContext


@hookimpl(trylast=True)
def mosix_admit_guest(request: AdmissionRequest, node: NodeContext) -> Admission:
    if not node.takes_guests:
        return Admission.refuse("other node refused")
    if not request.from_local_cluster:
        partner = node.config.partner_of(request.origin)
        if partner is None or not partner.cantake:
            return Admission.refuse("other node refused")
        limit = node.config.maxguests.limit if node.config.maxguests else None
        outsiders = sum(1 for home in node.guest_homes if not node.config.is_local_cluster(home))
        if limit is not None and outsiders >= limit:
            return Admission.refuse(TOO_BUSY)  # full of guests from other clusters, for now
    if request.memory_mb and node.status.mem_avail_mb < request.memory_mb:
        return Admission.refuse("did not complete (no memory there?)")
    return Admission.accept()
