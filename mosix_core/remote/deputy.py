"""The deputy: a migrated process's home half, performing its forwarded calls.

When a MOSIX process leaves home, what stays behind is the process itself made a
shell — exactly what freezing leaves (:func:`mosix_core.image.freeze.release_memory`):
same pid, same parent, same open files (terminal, pipes, sockets), cwd, umask,
credentials, process group and session; no memory but one page. So a call the
migrated process makes "at home" is made *by that process*: the deputy maps a
scratch area in the shell, copies the call's input buffers into it, runs the call
there by injection, and reads back what the call wrote. Every identity question
(``getpid``, ``getppid``, ``kill`` of its family, terminal job control) is answered by
the real thing, with no translation.

A call may block (a read of a terminal or a pipe), so it runs in two halves:
:meth:`Deputy.begin` puts the shell inside the call and returns; the supervisor's
loop sees the shell's next stop and hands it to :meth:`Deputy.on_stop`, which
returns the :class:`Reply` once the call is over (None while it is not).
:meth:`Deputy.call` does both, for callers that may wait.

A signal that interrupts the call here is kept from the shell (``deferred``, for the
caller to forward) and the call ends with its ``-ERESTART*`` code: the guest hands
both to its own kernel, which runs the handler and restarts the call, or fails it
with EINTR, or lets the signal kill the process, exactly as if the call had been
interrupted there.
"""

from __future__ import annotations

import errno
import os
import signal

from mosix_core.errors import TraceError
from mosix_core.linux import inject, ptrace
from mosix_core.remote.calls import MAX_TRANSFER, Reply, Request, reply_outputs

SYS_MMAP, SYS_MUNMAP = 9, 11
SYS_MPROTECT = 10
PROT_EXEC = 4
PAGE = 4096
CALL_CODE = b"\x0f\x05\xcc"  # syscall; int3
CALL_END, BREAKPOINT_END = 2, 3  # rip - code: the call returned; the breakpoint was hit
PROT_READ, PROT_WRITE = 1, 2
MAP_PRIVATE, MAP_ANONYMOUS = 0x2, 0x20
ALIGN = 16
SCRATCH_SIZE = MAX_TRANSFER + 64 * 1024  # the largest call's buffers, plus paths


class Deputy:
    """Runs forwarded calls in shell ``pid`` (stopped, traced by us), whose ``syscall``
    instruction is at ``shell``."""

    def __init__(self, pid: int, shell: int) -> None:
        self.pid = pid
        self.injector = inject.Injector(pid, shell)
        self.scratch = self.injector.check(
            "mmap(deputy scratch)",
            SYS_MMAP,
            0,
            SCRATCH_SIZE,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS,
            -1,
            0,
        )
        self.mem = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        # where calls are made: "syscall; int3", so one stop (the breakpoint) ends a call
        self.code = self.injector.check(
            "mmap(deputy code)", SYS_MMAP, 0, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0
        )
        os.pwrite(self.mem, CALL_CODE, self.code)
        self.injector.check("mprotect(deputy code)", SYS_MPROTECT, self.code, PAGE, PROT_READ | PROT_EXEC)
        self.caller = inject.Injector(pid, self.code)
        self._running: tuple[Request, dict[int, int]] | None = None
        self.ended: ptrace.Stop | None = None  # how the process ended (exit_group, a signal)

    @property
    def running(self) -> Request | None:
        """The call the shell is in, if any."""
        return None if self._running is None else self._running[0]

    @property
    def deferred(self) -> list[int]:
        """Signals that reached the shell while calls ran: the caller forwards them."""
        return self.injector.deferred

    def close(self) -> None:
        """Give the scratch area and the code page back (the shell is stopped again)."""
        try:
            self.injector.call(SYS_MUNMAP, self.scratch, SCRATCH_SIZE)
            self.injector.call(SYS_MUNMAP, self.code, PAGE)
        except TraceError:
            pass
        os.close(self.mem)

    def zeros(self, size: int) -> int:
        """The address of ``size`` zero bytes in the scratch area (an empty signal set,
        a default signal action), for calls the home side makes on its own."""
        os.pwrite(self.mem, bytes(size), self.scratch)
        return self.scratch

    # -- one call --------------------------------------------------------------------------------
    def call(self, request: Request) -> Reply:
        """Run ``request`` to its end (the shell may block in it meanwhile)."""
        self.begin(request)
        while True:
            reply = self.on_stop(ptrace.wait_for(self.pid))
            if reply is not None:
                return reply

    def begin(self, request: Request) -> None:
        """Put the inputs in place and start the call; the shell is resumed, to stop
        once, at the breakpoint after the call (or at a signal that interrupts it)."""
        if self._running is not None:
            raise TraceError("the deputy is already running a call", errno.EBUSY)
        places = self._layout(request)
        for index, data in request.inputs:
            os.pwrite(self.mem, data, places[index])
        args = list(request.args)
        for index, address in places.items():
            args[index] = address
        self.caller.load(request.nr, *args)
        self._running = (request, places)
        ptrace.cont(self.pid)

    def on_stop(self, stop: ptrace.Stop) -> Reply | None:
        """The shell stopped while a call runs: the reply when the call is over.

        A signal that comes while the call runs stops the shell where the call
        returns (interrupted: ``-ERESTART*``; or done) and is kept from it, for the
        guest: the call's result, as it is, is the reply, and the guest's kernel
        decides the rest (see the module's doc). The shell then waits there, idle."""
        if self._running is None:
            raise TraceError("no call is running", errno.EINVAL)
        if stop.kind in ("exited", "killed"):
            self._ended(stop)
        regs = ptrace.get_regs(self.pid)
        at = regs.rip - self.code
        if stop.kind == "signal" and not (stop.sig == signal.SIGTRAP and at == BREAKPOINT_END):
            self.injector.deferred.append(stop.sig)  # the process's, wherever it runs
        returned = at in (CALL_END, BREAKPOINT_END) and (
            stop.kind == "signal" or (stop.kind == "event" and stop.event == ptrace.EVENT_STOP)
        )
        if not returned:
            ptrace.cont(self.pid)  # not in the call yet, or a seccomp stop
            return None
        request, places = self._running
        self._running = None
        result = inject.signed(regs.rax)
        outputs = reply_outputs(request, result, lambda index, size: os.pread(self.mem, size, places[index]))
        return Reply(result, outputs)

    def _ended(self, stop: ptrace.Stop) -> None:
        """The process ended (its own exit_group, or a signal): no reply will come."""
        self._running = None
        self.ended = stop
        raise TraceError(f"process {self.pid} ended during a forwarded call", errno.ESRCH)

    def _layout(self, request: Request) -> dict[int, int]:
        """Where each pointer argument's buffer goes in the scratch area."""
        sizes = {index: len(data) for index, data in request.inputs}
        for index, size in request.outputs:
            sizes[index] = max(size, sizes.get(index, 0))
        places, at = {}, self.scratch
        for index in sorted(sizes):
            places[index] = at
            at += (sizes[index] + ALIGN - 1) // ALIGN * ALIGN
        if at - self.scratch > SCRATCH_SIZE:
            raise TraceError(f"a forwarded call's buffers exceed {SCRATCH_SIZE} bytes", errno.E2BIG)
        return places
