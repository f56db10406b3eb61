"""Checkpoints of the supervisor's processes: when each is taken and at which stop.

The program's own ``/proc/self/checkpoint``, mosmigrate's ``checkpoint``/``chkstop``/
``chkexit`` and mosrun -A's interval all end here; a process inside a blocking call is
let run to the call's end first, as the manual says. The image itself is
:mod:`mosix_core.mosrun.checkpoints`'s work.
"""

from __future__ import annotations

import errno
import os
import signal
import time

from mosix_core.errors import MosixError, TraceError
from mosix_core.linux import inject, ptrace
from mosix_core.mosrun import checkpoints
from mosix_core.mosrun.tracee import Tracee


class CheckpointControl:
    """The supervisor's checkpoints (``sup``: the :class:`~mosix_core.mosrun.supervisor.Supervisor`)."""

    def __init__(self, sup) -> None:
        self.sup = sup

    def checkpoint_settings(self, tracee: Tracee, name: str, before: tuple) -> None:
        """The program changed /proc/self/checkpointfile, ...limit or ...interval."""
        state, plan = tracee.state, tracee.plan
        if plan is None:
            return
        if name == "checkpointfile":
            try:
                plan.naming.set_base(state.checkpoint_file)
            except MosixError:
                state.checkpoint_file = before[0]
        elif name == "checkpointlimit":
            plan.naming.set_limit(state.checkpoint_limit)
        elif name == "checkpointinterval":
            plan.interval_minutes = state.checkpoint_interval
            plan.reset_timer()
        state.checkpoint_version = plan.naming.next_version()

    def request_checkpoint(self, tracee: Tracee, then: str) -> None:
        """Checkpoint ``tracee`` at its next safe stop, then continue, stop or exit."""
        if tracee.plan is None:
            return
        waiting = tracee.plan.requested is not None
        if not waiting or then != "continue":
            tracee.plan.requested = then
        if not waiting and tracee.freezing.frozen is None:
            ptrace.interrupt(tracee.pid)  # a frozen process checkpoints once unfrozen

    def checkpoint_stop(self, tracee: Tracee) -> None:
        """An interrupt stop with a checkpoint requested: now, or when the call returns."""
        if checkpoints.in_blocking_call(ptrace.get_regs(tracee.pid)):
            ptrace.syscall(tracee.pid)  # the manual: delayed until the call completes
        else:
            self.checkpoint_now(tracee)

    def checkpoint_now(self, tracee: Tracee) -> None:
        plan = tracee.plan
        then, plan.requested = plan.requested, None
        ok, what, deferred = checkpoints.take(
            tracee.pid, tracee.own_pid, tracee.state, plan, converted=tracee.program.converted
        )
        if not ok:
            self.sup.say(tracee, f"checkpoint failed: {what}")
        if plan.interval_minutes:
            plan.reset_timer()
        if then == "exit":
            checkpoints.exit_now(tracee.pid)
        elif then == "stop":
            tracee.thread.allow_sigstop = True
            os.kill(tracee.pid, signal.SIGSTOP)
        ptrace.cont(tracee.pid)
        checkpoints.resend(tracee.pid, deferred)

    def checkpoint_from_program(self, tracee: Tracee, access: int) -> None:
        """open("/proc/self/checkpoint", 1|O_CREAT) or (2|O_CREAT): mosix(7) — 0 (write
        only) or the version (read-write) on success, -1 when the checkpoint fails. The
        image holds the success value, so the recovered program sees the same."""
        pid, plan = tracee.pid, tracee.plan
        version = plan.naming.next_version()
        inject.finish_call(pid, 0 if access == 1 else version)
        ok, what, deferred = checkpoints.take(
            pid, tracee.own_pid, tracee.state, plan, converted=tracee.program.converted
        )
        if not ok:
            self.sup.say(tracee, f"checkpoint failed: {what}")
            inject.set_result(pid, -errno.EIO)
        ptrace.cont(pid)
        checkpoints.resend(pid, deferred)

    def next_checkpoint_in(self) -> float | None:
        dues = [t.plan.due for t in self.sup.tracees.values() if t.plan is not None and t.plan.due is not None]
        # capped: select() refuses timeouts of years (-A10000000 is 19 years)
        return None if not dues else min(max(0.0, min(dues) - time.monotonic()), 3600.0)

    def automatic_checkpoints(self) -> None:
        now = time.monotonic()
        for tracee in list(self.sup.tracees.values()):
            plan = tracee.plan
            if plan is not None and plan.due is not None and plan.due <= now:
                plan.due = None  # set again when the checkpoint is taken
                try:
                    self.request_checkpoint(tracee, "continue")
                except TraceError:
                    pass

    def checkpoint_waiting(self, tracee: Tracee) -> bool:
        return tracee.plan is not None and tracee.plan.requested is not None
