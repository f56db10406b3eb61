"""Which processes to freeze or unfreeze under the automatic freezing policy.

Given the situation (load against the RED and BLUE marks, min-keep, max-procs),
freeze the newest running processes first — they have the least invested — and
unfreeze the longest-frozen first. The freezing mechanism itself (writing the
image to a freeze directory) belongs to the process-image engine.
"""

from __future__ import annotations

from typing import Any

from mosix_core.hookspecs import hookimpl
from mosix_core.placement import FreezeChoice, FreezeSituation


@hookimpl(trylast=True)
def mosix_choose_freeze(candidates: Any, situation: FreezeSituation) -> FreezeChoice:
    running = sorted((p for p in candidates if p.frozen == "-"), key=lambda p: p.started, reverse=True)
    frozen = sorted((p for p in candidates if p.frozen == "A"), key=lambda p: p.started)
    keep = max(situation.min_keep, 0)
    excess = 0
    if situation.max_procs >= 0 and situation.running > situation.max_procs:
        excess = situation.running - situation.max_procs
    if situation.red >= 0 and situation.load > situation.red:
        excess = max(excess, 1)
    if excess:
        can_freeze = max(0, len(running) - keep)
        return FreezeChoice(freeze=tuple(p.pid for p in running[:min(excess, can_freeze)]))
    below_blue = situation.blue >= 0 and situation.load < situation.blue
    room = situation.max_procs < 0 or situation.running < situation.max_procs
    if frozen and below_blue and room:
        return FreezeChoice(unfreeze=(frozen[0].pid,))
    return FreezeChoice()
