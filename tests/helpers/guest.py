"""A process moved into a guest by hand, on one machine (tests/linux/test_away*.py,
test_deputy.py): stopping the traced program where it can leave, the guest's trace
options, and what is left to close of a move made over a socket."""

from __future__ import annotations

import os
import signal
import subprocess

from mosix_core.linux import inject, ptrace

#: the options a guest is traced with (as the guest host traces it)
GUEST_OPTIONS = ptrace.O_TRACESYSGOOD | ptrace.O_TRACESECCOMP | ptrace.O_EXITKILL


def stop_traced(pid: int):
    """Stop ``pid`` (seized by us) at an interrupt stop, letting its signals through on
    the way; a copy of its registers there."""
    ptrace.interrupt(pid)
    while (stop := ptrace.wait_for(pid)).kind != "event":
        ptrace.cont(pid, stop.sig if stop.kind == "signal" else 0)
    return inject.copy_registers(ptrace.get_regs(pid))


def end_link(home_end, proc: subprocess.Popen, host: int | None) -> None:
    """Whatever is left of a move over a socket: the home end, the program, the guest host."""
    home_end.close()
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if host is not None:
        os.kill(host, signal.SIGKILL)
        os.waitpid(host, 0)
