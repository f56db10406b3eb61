"""Freezing and unfreezing the supervisor's processes at their next clean stop.

mosmigrate's ``freeze``/``continue`` and mosd's automatic policy ask; the image and
the shell a frozen process waits in are :mod:`mosix_core.image.freeze`'s work, the
freezing directories :mod:`mosix_core.mosrun.freezing`'s.
"""

from __future__ import annotations

import errno
import os
import signal

from mosix_core.daemon import protocol as p
from mosix_core.errors import MosixError, TraceError
from mosix_core.image import freeze as freeze_engine
from mosix_core.image.freeze import CannotFreeze, ThawFailed
from mosix_core.image.freezedirs import NO_SPACE
from mosix_core.linux import inject, procfs, ptrace
from mosix_core.mosrun import checkpoints, freezing
from mosix_core.mosrun.tracee import Tracee

# what a frozen process does with a signal whose action is the default one (signal(7))
DEFAULT_IGNORED = frozenset({signal.SIGCHLD, signal.SIGCONT, signal.SIGURG, signal.SIGWINCH})


class FreezeControl:
    """The supervisor's freezing and unfreezing (``sup``: the supervisor)."""

    def __init__(self, sup) -> None:
        self.sup = sup

    def request_freeze(self, tracee: Tracee, how: str) -> dict:
        """Freeze ``tracee`` ("M": manually, "A": the automatic policy, "P": a package)."""
        if tracee.freezing.frozen is not None:
            if tracee.freezing.wanted == freezing.UNFREEZE:
                tracee.freezing.wanted = None  # stays frozen after all
            if how == "M" and tracee.freezing.frozen.how != "M":
                tracee.freezing.frozen.how = "M"  # not to be unfrozen automatically now
                self.sup.tell(p.UpdateRequest(pid=tracee.pid, changes=p.RowChanges(frozen="M")))
            return {"ok": True}
        if how != "M" and not tracee.state.freezable:
            return {"error": "the process may not be frozen automatically (mosrun -g)"}
        pending = tracee.freezing.wanted in freezing.FREEZE_KINDS
        if not pending or how == "M":
            tracee.freezing.wanted = how
        if not pending:
            ptrace.interrupt(tracee.pid)
        return {"ok": True}

    def request_unfreeze(self, tracee: Tracee, *, automatic: bool) -> dict:
        if tracee.freezing.frozen is None:
            if tracee.freezing.wanted in freezing.FREEZE_KINDS and not (automatic and tracee.freezing.wanted == "M"):
                tracee.freezing.wanted = None  # not frozen yet: just don't
            return {"ok": True}
        if automatic and tracee.freezing.frozen.how == "M":
            return {"error": "a manually frozen process is not unfrozen automatically"}
        if tracee.freezing.wanted != freezing.UNFREEZE:
            tracee.freezing.wanted = freezing.UNFREEZE
            ptrace.interrupt(tracee.pid)
        return {"ok": True}

    def freeze_now(self, tracee: Tracee) -> None:
        pid = tracee.pid
        how, tracee.freezing.wanted = tracee.freezing.wanted, None
        regs = inject.copy_registers(ptrace.get_regs(pid))
        try:
            frozen = self.sup.freezer.freeze(pid, how, tracee.freezing.count, regs)
        except freezing.LostInFreezing as err:
            self.sup.say(tracee, f"freezing failed: {err}")
            os.kill(pid, signal.SIGKILL)
            return
        except freezing.NoSpace as err:
            if how != "M" and err.needed_mb >= self.sup.freezer.killing_memory_mb():
                self.sup.say(tracee, NO_SPACE)  # the manual: "so the program was killed"
                os.kill(pid, signal.SIGKILL)
                return
            # manual freezing, or freeze.conf's killing-memory keeps it: it runs on
            if how == "M" or not tracee.freezing.told_no_space:
                self.sup.say(tracee, f"{NO_SPACE}: the process keeps running")
                tracee.freezing.told_no_space = how != "M"
            self.sup.resume(tracee)
            return
        except CannotFreeze as err:
            self.sup.say(tracee, str(err))
            self.sup.tell(p.UpdateRequest(pid=pid, changes=p.RowChanges(frozen="N/A")))
            self.sup.resume(tracee)
            return
        except (MosixError, OSError) as err:
            if isinstance(err, TraceError) and err.errno == errno.ESRCH:
                return
            self.sup.say(tracee, f"freezing failed: {err}")
            inject.put_back(pid, regs)
            self.sup.resume(tracee)
            return
        tracee.freezing.frozen = frozen
        tracee.freezing.count += 1
        freeze_engine.wait_in_shell(pid, frozen.shell)
        ptrace.cont(pid)
        held, frozen.held = frozen.held, []
        checkpoints.resend(pid, held)  # judged as a frozen process's signals
        self.sup.tell(p.UpdateRequest(pid=pid, changes=p.RowChanges(frozen=frozen.how)))

    def frozen_stop(self, tracee: Tracee, stop: ptrace.Stop) -> None:
        """A frozen process reacts only to unfreezing or a signal that kills it (mosix(7))."""
        pid = tracee.pid
        if stop.kind == "signal":
            self._frozen_signal(tracee, stop.sig)
        elif stop.kind == "event" and stop.event == ptrace.EVENT_STOP and stop.group_stop:
            ptrace.listen(pid)
        elif stop.kind == "event" and stop.event == ptrace.EVENT_STOP and tracee.freezing.wanted == freezing.UNFREEZE:
            self._thaw_now(tracee)
        else:
            ptrace.cont(pid)  # back to its pause()

    def _frozen_signal(self, tracee: Tracee, sig: int) -> None:
        status = procfs.status_fields(tracee.pid)
        caught = sig in procfs.signal_set(status.get("SigCgt", "0"))
        ignored = sig in procfs.signal_set(status.get("SigIgn", "0"))
        if caught or sig in ptrace.STOP_SIGNALS:
            tracee.freezing.frozen.held.append(sig)  # its handler (or the stop) once unfrozen
            ptrace.cont(tracee.pid)
        elif ignored or sig in DEFAULT_IGNORED:
            ptrace.cont(tracee.pid)
        else:
            ptrace.cont(tracee.pid, sig)  # fatal: it dies frozen

    def _thaw_now(self, tracee: Tracee) -> None:
        pid, frozen = tracee.pid, tracee.freezing.frozen
        tracee.freezing.wanted = None
        try:
            deferred = self.sup.freezer.thaw(pid, frozen)
        except ThawFailed as err:
            if err.corrupt or err.shell is None:
                self.sup.say(tracee, freezing.FAILED_DECOMPRESSING if err.corrupt else freezing.UNFREEZE_FAILED)
                os.kill(pid, signal.SIGKILL)
                return
            frozen.shell = err.shell
            self.sup.say(tracee, f"{freezing.REFREEZING} ({err.reason})")
            freeze_engine.wait_in_shell(pid, frozen.shell)
            ptrace.cont(pid)
            return
        tracee.freezing.frozen = None
        frozen.discard()
        self.sup.resume(tracee)
        checkpoints.resend(pid, frozen.held + deferred)
        if self.sup.checkpointing.checkpoint_waiting(tracee):
            ptrace.interrupt(pid)  # the checkpoint asked for while it was frozen
        self.sup.tell(p.UpdateRequest(pid=pid, changes=p.RowChanges(frozen="-")))
