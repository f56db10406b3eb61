"""Which processes to freeze or unfreeze under the automatic freezing policy (mosix(7)
freeze.conf).

Given the situation (load against the RED and BLUE marks, min-keep, max-procs),
freeze the newest running processes first — they have the least invested — and
unfreeze the longest-frozen first. One step at a time: the daemon lets the load
show each step's effect before asking again. While some processes are frozen and
others run, the one that has run a whole time slice since it last ran or froze
changes places with the longest-frozen. Manually frozen processes are never
candidates; the freezing itself belongs to the process's supervisor.
"""

from __future__ import annotations

from collections.abc import Sequence

from mosix_core.contract.hookspecs import hookimpl
from mosix_core.contract.records import FreezeChoice, FreezeSituation, ProcessRow


@hookimpl(trylast=True)
def mosix_choose_freeze(candidates: Sequence[ProcessRow], situation: FreezeSituation) -> FreezeChoice:
    running = sorted((p for p in candidates if p.frozen == "-"), key=lambda p: p.started, reverse=True)
    frozen = sorted((p for p in candidates if p.frozen == "A"), key=lambda p: p.frozen_since)
    excess = 0
    if situation.max_procs >= 0 and situation.running > situation.max_procs:
        excess = situation.running - situation.max_procs
    if situation.red >= 0 and situation.load > situation.red:
        excess = max(excess, 1)
    if excess:
        may_freeze = min(len(running), max(0, situation.running - max(situation.min_keep, 0)))
        return FreezeChoice(freeze=tuple(p.pid for p in running[: min(excess, may_freeze)]))
    if not frozen:
        return FreezeChoice()
    below_blue = situation.load < situation.blue
    room = situation.max_procs < 0 or situation.running < situation.max_procs
    if below_blue and room:
        return FreezeChoice(unfreeze=(frozen[0].pid,))
    if running and situation.slice_seconds > 0:
        longest = min(running, key=lambda p: p.frozen_since)
        if situation.now - longest.frozen_since >= situation.slice_seconds:
            return FreezeChoice(freeze=(longest.pid,), unfreeze=(frozen[0].pid,))
    return FreezeChoice()
