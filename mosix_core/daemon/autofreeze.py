"""mosd's side of automatic freezing (mosix(7) freeze.conf).

With a policy line in ``freeze.conf``, once a second: the node's load in the
policy's units, the MOSIX processes at home, and the ``mosix_choose_freeze``
hook's decision. The decision is carried out by each process's supervisor,
asked through its control socket exactly as ``mosmigrate`` asks (kind ``A``), in a
worker thread so a supervisor busy writing a large image never stalls gossip.

The load is smoothed over seconds, so after acting the runner waits until the
change can show (``SETTLE``) before deciding again: without that pause one
burst of load would freeze far more processes than needed.

Not here: the freezing itself (the supervisor), HOME-MARK and CLUSTER-MARK
(processes evacuated back from other clusters: the multi-cluster issue).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from mosix_core.cluster.proctable import ProcessRecord
from mosix_core.config.freeze import FreezePolicy
from mosix_core.contract.plugins import first_answer
from mosix_core.contract.records import FreezeChoice, FreezeSituation
from mosix_core.mosrun import control_socket

CHECK_EVERY = 1.0  # seconds between decisions
SETTLE = 4.0  # seconds after acting: twice the load smoother's time constant
NOT_RUNNING = ("A", "P", "M")


def policy_load(policy: FreezePolicy, processes: float, standard: int) -> float:
    """The load the marks are compared with: processes (field 2 = 0), or standard MOSIX
    load units, 1.0 being one CPU-bound process on a standard processor (1)."""
    return processes if policy.units == 0 else standard / 100.0


def at_home(row: ProcessRecord) -> bool:
    """A MOSIX process of ours running here (not a guest, not away, not a queue driver)."""
    return not row.is_guest and row.where == "here" and row.queue is None


def situation_of(
    policy: FreezePolicy, rows: list[ProcessRecord], load: float, now: float
) -> tuple[FreezeSituation, list[ProcessRecord]]:
    """The situation and the candidates (freezable running rows, automatically frozen rows)."""
    home = [r for r in rows if at_home(r)]
    running = [r for r in home if r.frozen not in NOT_RUNNING]
    candidates = [r for r in home if (r.frozen == "-" and r.freezable) or r.frozen == "A"]
    situation = FreezeSituation(
        load=load,
        running=len(running),
        frozen=sum(1 for r in home if r.frozen == "A"),
        red=policy.red,
        blue=policy.blue,
        min_keep=policy.min_keep,
        max_procs=policy.max_procs,
        slice_seconds=policy.slice_minutes * 60.0,
        now=now,
    )
    return situation, candidates


class AutoFreezer:
    """Runs the policy for one node (``node``: a :class:`mosix_core.daemon.node.Node`)."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.next_check = 0.0
        self.quiet_until = 0.0
        self.pending: set[int] = set()  # pids whose request is still on its way

    def tick(self, now: float | None = None) -> FreezeChoice | None:
        """Decide and act if it is time; the choice acted on (for logs and tests)."""
        now = time.monotonic() if now is None else now
        policy = self.node.config.freeze.policy
        if policy is None or now < self.next_check:
            return None
        self.next_check = now + CHECK_EVERY
        if now < self.quiet_until or self.pending:
            return None
        status = self.node.local_status()
        load = policy_load(policy, self.node.smoother.value, status.load)
        situation, candidates = situation_of(policy, list(self.node.proctable), load, now)
        choice = first_answer(
            self.node.pm.hook.mosix_choose_freeze, default=FreezeChoice(), candidates=candidates, situation=situation
        )
        if not (choice.freeze or choice.unfreeze):
            return None
        self.quiet_until = now + SETTLE
        for pid in choice.freeze:
            self._ask(pid, "freeze")
        for pid in choice.unfreeze:
            self._ask(pid, "continue")
        self.node.log.info(
            "automatic freezing", load=round(load, 2), freeze=list(choice.freeze), unfreeze=list(choice.unfreeze)
        )
        return choice

    def _ask(self, pid: int, op: str) -> None:
        self.pending.add(pid)

        def done(future: asyncio.Future) -> None:
            self.pending.discard(pid)
            err = future.exception()
            if err is not None:
                self.node.log.warning("automatic freezing request failed", pid=pid, op=op, error=str(err))

        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, lambda: control_socket.request(pid, op, how="A")).add_done_callback(done)
