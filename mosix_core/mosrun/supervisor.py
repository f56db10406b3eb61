"""The supervisor: one event loop that traces every MOSIX process of an invocation.

A ``mosrun`` invocation — the program, every child it forks, every job of a
``-S`` queue — is supervised by one process running this loop. The programs run
natively: a seccomp filter (:mod:`mosix_core.mosrun.rules`) stops only the calls
MOSIX must see, and each stop is a ``waitpid`` result handled here. The loop
sleeps in ``select`` on a SIGCHLD wake-up pipe (and whatever else a feature adds)
and drains ``waitpid(WNOHANG)`` when woken, so it can serve other sources too.

Nothing here stops a process for longer than it takes to decide its call: a
decision that needs the rest of MOSIX (migration, checkpoints) is a feature's
hook, wired by that feature.

This module dispatches stops and owns the table of processes (:mod:`tracee`); each
feature is a part it hands stops and requests to: checkpoints
(:mod:`~mosix_core.mosrun.checkpointing`), freezing (:mod:`~mosix_core.mosrun.freeze_control`),
moves (:mod:`~mosix_core.mosrun.mover`), and the home side of a process away — its calls
and signals (:mod:`mosix_core.remote.home_side`), its link
(:mod:`mosix_core.remote.home_link`). mosmigrate's requests come through
:class:`mosix_core.mosrun.control_socket.ControlServer`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import selectors
import signal
from collections.abc import Callable

from mosix_core.config.daemon import DaemonSettings
from mosix_core.daemon import protocol as p
from mosix_core.errors import DaemonUnavailable, MosixError, TraceError
from mosix_core.linux import inject, memory, procfs, ptrace, seccomp
from mosix_core.linux.syscall_names import NUMBERS
from mosix_core.mosrun import checkpoints, control_socket, freezing, migration, options_wire, procself, rules, targets
from mosix_core.mosrun import options as mosopts
from mosix_core.mosrun.checkpointing import CheckpointControl
from mosix_core.mosrun.freeze_control import FreezeControl
from mosix_core.mosrun.move import Move, MoveRefused, MoveRequest
from mosix_core.mosrun.mover import Mover
from mosix_core.mosrun.tracee import (  # noqa: F401  (elf_class, flag_summary, initial_state, node_in_cluster: for mosrun)
    NOTHING_PENDING,
    PENDING,
    Program,
    Tracee,
    command_line,
    configuration,
    elf_class,
    flag_summary,
    initial_state,
    is_32bit,
    is_mosix_tool,
    node_in_cluster,
    options_of,
    program_name,
    row_fields,
)
from mosix_core.remote.home_link import HomeLink
from mosix_core.remote.home_side import HomeSide

CONTROL_NAME = "mosrun"
SYS_GETPID, SYS_GETTID, SYS_GETPPID = NUMBERS["getpid"], NUMBERS["gettid"], NUMBERS["getppid"]
SYS_KILL, SYS_TKILL, SYS_TGKILL = NUMBERS["kill"], NUMBERS["tkill"], NUMBERS["tgkill"]
SYS_OPEN, SYS_OPENAT = NUMBERS["open"], NUMBERS["openat"]
PID_CALLS = frozenset({SYS_GETPID, SYS_GETTID, SYS_GETPPID, SYS_KILL, SYS_TKILL, SYS_TGKILL})
MOSMIGRATE_CHECKPOINTS = {"checkpoint": "continue", "chkstop": "stop", "chkexit": "exit"}


class Supervisor:
    """Traces a set of processes until the last one is gone.

    ``home_view`` answers ``/proc/self/in_cluster``; ``session`` (a
    :class:`mosix_core.daemon.client.Session` or None) carries process-table updates to mosd.
    """

    def __init__(
        self,
        *,
        messages_fd: int,
        session=None,
        in_cluster: Callable[[int], bool] = lambda node: False,
        on_exit: Callable[[Tracee, ptrace.Stop], None] | None = None,
        freezer: freezing.Freezer | None = None,
        etc=None,
    ) -> None:
        self.tracees: dict[int, Tracee] = {}
        self.orphans: dict[int, ptrace.Stop] = {}  # born before their parent's fork event
        self.messages_fd = messages_fd
        self.session = session
        self.in_cluster = in_cluster
        self.on_exit = on_exit
        self.timers: list[tuple[float, Callable[[], None]]] = []
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._ways: queue.SimpleQueue = queue.SimpleQueue()  # what threads leave for the loop (see later)
        self.keep_running: Callable[[], bool] = lambda: False
        self.control = None
        self.freezer = freezer or freezing.Freezer(None)
        self.etc = etc
        self._daemon_settings: DaemonSettings | None = None  # this node's mosd.conf (see _settings)
        # what the supervisor does, part by part (each holds a reference back to it)
        self.checkpointing = CheckpointControl(self)
        self.freeze_control = FreezeControl(self)
        self.mover = Mover(self)
        self.home = HomeSide(self)
        self.link = HomeLink(self)

    def serve_control(self) -> None:
        """Listen for mosmigrate (see :mod:`mosix_core.mosrun.control_socket`)."""
        try:
            self.control = control_socket.ControlServer(self.selector, self._may_ask, self._control_request)
        except OSError:
            pass  # no socket left to make: the processes run on, without mosmigrate

    def _may_ask(self, uid: int) -> bool:
        """Whether user ``uid`` may affect any of our processes (else it is not heard)."""
        return (
            uid == 0
            or uid in os.getresuid()
            or any(control_socket.may_affect(uid, t.pid) for t in self.tracees.values() if not t.native)
        )

    # -- setting up --------------------------------------------------------------------------------
    def install_wakeup(self) -> None:
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def adopt(
        self, pid: int, state: procself.MosixState | None, command: str, job=None, virtual_pid: int | None = None
    ) -> Tracee:
        """A process the caller has already seized (running, not yet stopped)."""
        tracee = Tracee(pid, state, job=job, program=Program(command), virtual_pid=virtual_pid)
        if state is not None:
            tracee.plan = checkpoints.plan_for(tracee.own_pid, state)
        self.tracees[pid] = tracee
        if state is not None:
            self._register(tracee)
        return tracee

    # -- the loop --------------------------------------------------------------------------------------
    def run(self) -> None:
        while True:
            self.drain()
            if not self.tracees and not self.keep_running():
                return
            timeout = self.checkpointing.next_checkpoint_in()
            if self.timers:
                timeout = 0.5 if timeout is None else min(timeout, 0.5)
            if any(t.away is not None for t in self.tracees.values()):
                timeout = migration.SIGNAL_POLL if timeout is None else min(timeout, migration.SIGNAL_POLL)
            for key, _ in self.selector.select(timeout=timeout):
                if key.fileobj == self._wake_r:
                    try:
                        while os.read(self._wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                elif key.data is not None:
                    key.data()
            self._run_later()
            for _, tick in list(self.timers):
                tick()
            self.checkpointing.automatic_checkpoints()
            self.home.poll_away_signals()
            self.link.check_away_nodes()

    def drain(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG | ptrace.WALL)
            except ChildProcessError:
                return
            if pid == 0:
                return
            try:
                self.on_stop(ptrace.decode_status(pid, status))
            except TraceError as err:
                if err.errno != errno.ESRCH:  # a tracee killed under our feet is no error
                    self.say(None, f"tracing process {pid} failed: {err}")

    # -- stops -------------------------------------------------------------------------------------------
    def on_stop(self, stop: ptrace.Stop) -> None:
        tracee = self.tracees.get(stop.pid)
        if stop.kind in ("exited", "killed"):
            self._gone(stop, tracee)
            return
        if tracee is None:
            # a new child stopping before its parent's fork event told us who it is
            self.orphans[stop.pid] = stop
            return
        if tracee.away is not None:
            self.home.away_stop(tracee, stop)
            return
        if tracee.move is not None and tracee.move.awaiting_stop and self._may_freeze_at(tracee, stop):
            self.mover.migrate_now(tracee)
            return
        if tracee.freezing.frozen is not None:
            self.freeze_control.frozen_stop(tracee, stop)
            return
        if tracee.freezing.wanted in freezing.FREEZE_KINDS and self._may_freeze_at(tracee, stop):
            self.freeze_control.freeze_now(tracee)
            return
        if stop.kind == "event":
            self._event(tracee, stop)
        elif stop.kind == "signal":
            sig = stop.sig
            if sig == signal.SIGSTOP and not tracee.native:
                if tracee.thread.allow_sigstop:
                    tracee.thread.allow_sigstop = False
                else:
                    sig = signal.SIGTSTP  # MOSIX processes never get SIGSTOP (mosrun(1))
            self.resume(tracee, sig)
        elif stop.kind == "syscall" and self.checkpointing.checkpoint_waiting(tracee):
            if ptrace.syscall_stop_op(tracee.pid) == ptrace.INFO_EXIT:
                self.checkpointing.checkpoint_now(tracee)
            else:
                ptrace.syscall(tracee.pid)
        else:
            ptrace.cont(tracee.pid)

    def resume(self, tracee: Tracee, sig: int = 0) -> None:
        """Let the tracee go on; to the end of its current call if a checkpoint waits for it."""
        if self.checkpointing.checkpoint_waiting(tracee):
            ptrace.syscall(tracee.pid, sig)
        else:
            ptrace.cont(tracee.pid, sig)

    def _event(self, tracee: Tracee, stop: ptrace.Stop) -> None:
        pid, event = tracee.pid, stop.event
        if event == ptrace.EVENT_SECCOMP:
            if tracee.native:
                ptrace.cont(pid)
            else:
                self._syscall(tracee)
        elif event in (ptrace.EVENT_FORK, ptrace.EVENT_VFORK, ptrace.EVENT_CLONE):
            self._born(tracee, ptrace.event_message(pid))
            ptrace.cont(pid)
        elif event == ptrace.EVENT_EXEC:
            self._exec(tracee)
        elif event == ptrace.EVENT_STOP:
            if stop.group_stop:
                ptrace.listen(pid)  # stay stopped (job control) until SIGCONT
            elif self.checkpointing.checkpoint_waiting(tracee):
                self.checkpointing.checkpoint_stop(tracee)
            else:
                ptrace.cont(pid)
        else:
            ptrace.cont(pid)

    def _born(self, parent: Tracee, pid: int) -> None:
        state = None if parent.state is None else parent.state.for_child()
        child = Tracee(
            pid, state, parent=parent.pid, program=Program(parent.command, converted=list(parent.program.converted))
        )
        if state is not None:
            child.plan = checkpoints.plan_for(pid, state)
        self.tracees[pid] = child
        if state is not None:
            self._register(child)
        first = self.orphans.pop(pid, None)
        if first is not None:
            self.on_stop(first)

    def _gone(self, stop: ptrace.Stop, tracee: Tracee | None) -> None:
        self.orphans.pop(stop.pid, None)
        if tracee is None:
            return
        del self.tracees[stop.pid]
        if tracee.move is not None:
            move, tracee.move = tracee.move, None
            move.drop_channel()  # the guest host waiting for it goes
            move.fail(f"{tracee.pid}: the process ended before its move did")
        if tracee.away is not None:
            self.link.away_ended(tracee)
        if tracee.freezing.frozen is not None:
            tracee.freezing.frozen.discard()  # the image's disk space returns now
            tracee.freezing.frozen = None
        if self.on_exit is not None:
            self.on_exit(tracee, stop)

    def _exec(self, tracee: Tracee) -> None:
        pid = tracee.pid
        if tracee.program.pending_exec is not NOTHING_PENDING:
            tracee.state, tracee.program.pending_exec = tracee.program.pending_exec, NOTHING_PENDING
            if tracee.state is None:
                self.tell(p.UnregisterRequest(pid=pid))
        tracee.program.command = command_line(pid)
        tracee.program.converted = []
        # A recursive mosrun/mosenv/mosnative is our own Python program, which uses calls
        # MOSIX refuses (epoll...) before it reaches /proc/self/mosrun: they fail quietly
        # for it, whatever the process's -e/-u, until it execs the real program.
        tracee.program.mosix_tool = is_mosix_tool(tracee.command)
        if not tracee.native and is_32bit(pid):
            self.say(tracee, f"{program_name(pid)} is a 32-bit program - will run in native Linux mode")
            self.tell(p.UnregisterRequest(pid=pid))
            # it stays traced as a native process: the filter it inherited traces every
            # i386 call (an untraced one would fail with ENOSYS), and _event lets a
            # native tracee's calls run untouched
            tracee.state, tracee.plan = None, None
            ptrace.cont(pid)
            return
        if not tracee.native:
            changes = p.RowChanges(command=tracee.command, **row_fields(tracee.state))
            self.tell(p.UpdateRequest(pid=pid, changes=changes))
        # where the new program runs: where mosrun was told to start it, or back where
        # the process was when it came home to exec
        start, tracee.start_at = tracee.start_at, None
        if start is not None and not tracee.native:
            with contextlib.suppress(MoveRefused):
                self.mover.request_migration(tracee, start)
        ptrace.cont(pid)

    # -- system calls ------------------------------------------------------------------------------------
    def _syscall(self, tracee: Tracee) -> None:
        pid = tracee.pid
        info = ptrace.syscall_info(pid)
        if info.arch != seccomp.AUDIT_ARCH_X86_64:
            # never judged as the 64-bit call of the same number (native tracees, the
            # 32-bit programs among them, do not come here: see _event)
            self._carry_out(tracee, rules.foreign_call(info.nr))
            return
        if info.nr in PID_CALLS:
            self._carry_out(tracee, self._pid_call(tracee, info.nr, info.args))
            return
        verdict = rules.decide(info.nr, info.args, self.call_context(tracee))
        if isinstance(verdict, rules.SpecialOpen):
            verdict = self._special_open(tracee, verdict)
            if verdict is None:
                return  # carried out already (a checkpoint)
        self._carry_out(tracee, verdict)

    def _pid_call(self, tracee: Tracee, nr: int, args: tuple[int, ...]):
        """A restored process keeps its pid: answer with it, and translate it back."""
        if nr in (SYS_GETPID, SYS_GETTID):
            return rules.Return(tracee.own_pid) if tracee.virtual_pid else rules.ALLOW
        if nr == SYS_GETPPID:
            parent = self.tracees.get(tracee.parent) if tracee.parent else None
            return rules.Return(parent.own_pid) if parent is not None and parent.virtual_pid else rules.ALLOW
        real = {t.virtual_pid: t.pid for t in self.tracees.values() if t.virtual_pid}
        indexes = (0,) if nr in (SYS_KILL, SYS_TKILL) else (0, 1)
        translated = {}
        for index in indexes:
            value = inject.signed(args[index]) if index == 0 else args[index]
            if value in real:
                translated[index] = real[value]
        if translated:
            inject.set_arguments(tracee.pid, translated)
        return rules.ALLOW

    def parent_pid(self, tracee: Tracee) -> int | None:
        """What getppid says for ``tracee`` (as :meth:`_pid_call` would have it)."""
        parent = self.tracees.get(tracee.parent) if tracee.parent else None
        if parent is not None and parent.virtual_pid:
            return parent.own_pid
        fields = procfs.stat_fields(tracee.pid)
        return None if fields is None else int(fields[1])

    def call_context(self, tracee: Tracee) -> rules.CallContext:
        """What the rules may ask about ``tracee`` (and whether the site is strict with it)."""

        def converted(start: int, length: int) -> bool:
            end = start + max(length, 1)
            return any(low < end and start < high for low, high in tracee.program.converted)

        return rules.CallContext(
            tracee.pid,
            rules.fd_mode_of(tracee.pid),
            strict=bool(tracee.state and tracee.state.strict),
            converted=converted,
        )

    def settings(self) -> DaemonSettings:
        """This node's mosd.conf settings, read once (the defaults where there is none)."""
        if self._daemon_settings is None:
            config = configuration(self.etc) if self.etc is not None else None
            self._daemon_settings = config.daemon if config is not None else DaemonSettings.default()
        return self._daemon_settings

    def _carry_out(self, tracee: Tracee, verdict) -> None:
        pid = tracee.pid
        verdict, said, kill = rules.settle(verdict, self.unsupported_mode(tracee))
        for message in said:
            self.say(tracee, message)
        if kill:
            os.kill(pid, signal.SIGKILL)
            return
        if isinstance(verdict, rules.Answer):
            try:
                for index, data in verdict.writes:
                    memory.write_bytes(pid, ptrace.syscall_info(pid).args[index], data)
                verdict = rules.Return(verdict.value)
            except (TraceError, OSError):
                verdict = rules.Fail(errno.EFAULT)
        if isinstance(verdict, rules.MapPrivately):
            self._map_privately(tracee, verdict.flags)
            return
        if isinstance(verdict, (rules.Fail, rules.Return)):
            inject.skip_call(pid, -verdict.errno if isinstance(verdict, rules.Fail) else verdict.value)
        elif isinstance(verdict, rules.Rewrite):
            inject.set_arguments(pid, {verdict.arg: verdict.value})
        elif not isinstance(verdict, rules.Allow):
            raise TypeError(f"unknown verdict {verdict!r}")
        self.resume(tracee)

    def _map_privately(self, tracee: Tracee, flags: int) -> None:
        """The mmap runs MAP_PRIVATE, to its end here (it does not wait), so the range
        it got is known; signals that came meanwhile are sent again."""
        pid = tracee.pid
        length = inject.set_arguments(pid, {3: flags}).rsi
        injector = inject.Injector(pid, 0)
        try:
            address = injector.run_to(ptrace.INFO_EXIT)
        except inject.TraceeEnded as ended:
            self.on_stop(ended.stop)  # killed meanwhile: its end is seen as any other
            return
        if not -4096 < address < 0:
            tracee.program.converted.append((address, address + length))
        for sig in injector.deferred:
            os.kill(pid, sig)
        self.resume(tracee)

    @staticmethod
    def unsupported_mode(tracee: Tracee) -> int:
        return rules.MODE_SILENT if tracee.program.mosix_tool else tracee.state.unsupportok

    def _special_open(self, tracee: Tracee, call: rules.SpecialOpen):
        try:
            path = memory.read_cstring(tracee.pid, call.path_addr, limit=64)
        except TraceError:
            return rules.ALLOW  # let the kernel report EFAULT as it would
        if path == procself.PREFIX + CONTROL_NAME.encode() and call.flags & 3 == 1:
            return rules.Return(self._control(tracee, call.value))
        name = procself.special_name(path)
        if name is None:
            return rules.ALLOW
        if name == "checkpoint" and call.flags & 3 in (1, 2):
            self.checkpointing.checkpoint_from_program(tracee, call.flags & 3)
            return None
        if name == "migrate" and call.flags & 3 == 1:
            result = self.mover.migrate_from_program(tracee, call.value & 0xFFFFFFFF)
            return None if result is PENDING else rules.Return(result)  # PENDING: answered when the move ends
        env = procself.Environment(
            whereami=lambda: 0, in_cluster=self.in_cluster, read_string=lambda addr: self._read_string(tracee.pid, addr)
        )
        before = row_fields(tracee.state)
        checkpointing = (tracee.state.checkpoint_file, tracee.state.checkpoint_limit, tracee.state.checkpoint_interval)
        result = procself.handle(tracee.state, name, call.flags, call.value, env)
        if result >= 0 and call.flags & 3 and name.startswith("checkpoint"):
            self.checkpointing.checkpoint_settings(tracee, name, checkpointing)
        if (after := row_fields(tracee.state)) != before:
            self.tell(p.UpdateRequest(pid=tracee.pid, changes=p.RowChanges(**after)))
        if call.flags & 3 == 0 and procself.named_by_argument(path, tracee.command):
            self.say(tracee, procself.misread_note(name, result))  # cat /proc/self/whereami
        return rules.Return(result)

    # -- clean stops ------------------------------------------------------------------------------------
    @staticmethod
    def _may_freeze_at(tracee: Tracee, stop: ptrace.Stop) -> bool:
        """Stops where the registers are the program's own, free to save and change."""
        if stop.kind == "event":
            return stop.event == ptrace.EVENT_STOP and not stop.group_stop
        return stop.kind == "syscall" and ptrace.syscall_stop_op(tracee.pid) == ptrace.INFO_EXIT

    # -- work threads leave for the loop ------------------------------------------------------------
    def later(self, then: Callable[[], None]) -> None:
        """``then()`` in the loop, soon (from a thread)."""
        self._ways.put(then)
        try:
            os.write(self._wake_w, b"w")
        except OSError:
            pass

    def _run_later(self) -> None:
        while not self._ways.empty():
            self._ways.get()()

    # -- mosmigrate ----------------------------------------------------------------------------------
    def _control_request(self, req: dict, uid: int) -> dict | Move:
        pid, op = req.get("pid"), req.get("op")
        tracee = next((t for t in self.tracees.values() if pid in (t.pid, t.virtual_pid)), None)
        if tracee is None or tracee.native:
            return {"error": "not a MOSIX process"}
        if not control_socket.may_affect(uid, tracee.pid):
            return {"error": "Operation not permitted"}
        try:
            if op in MOSMIGRATE_CHECKPOINTS:
                self.checkpointing.request_checkpoint(tracee, MOSMIGRATE_CHECKPOINTS[op])
            elif op == "freeze":
                how = req.get("how", "M")
                if how not in freezing.FREEZE_KINDS or (how != "M" and uid != 0):
                    return {"error": f"bad freezing kind {how!r}"}
                return self.freeze_control.request_freeze(tracee, how)
            elif op == "continue":
                return self.freeze_control.request_unfreeze(tracee, automatic=req.get("how") in ("A", "P"))
            elif op == "home" or (op == "migrate" and isinstance(req.get("to"), str)):
                return self._control_move(tracee, req)
            else:
                return {"error": f"'{op}' is not supported by this MOSIX yet"}
        except TraceError as err:
            return {"error": str(err)}
        return {"ok": True}

    def _control_move(self, tracee: Tracee, req: dict):
        """mosmigrate {pid} {node | home} (or mosd's balancer, ``automatic``): the move begun,
        and with ``wait`` (mosmigrate waits for the outcome) the move itself, answered when
        it is over."""
        automatic = req.get("automatic") is True
        if automatic and tracee.state.lock:
            return {"error": "locked (-L or /proc/self/lock): it does not move by itself"}
        try:
            target = targets.HOME if req["op"] == "home" else targets.resolve(configuration(self.etc), req["to"])
            move = self.mover.request_migration(tracee, MoveRequest(target, automatic=automatic))
        except (targets.UnknownTarget, MoveRefused) as err:
            return {"error": str(err)}
        if move is None or not req.get("wait"):
            return {"ok": True}
        return move

    def _read_string(self, pid: int, addr: int) -> bytes:
        try:
            return memory.read_cstring(pid, addr, limit=4096)
        except TraceError as err:
            raise OSError(err.errno, str(err)) from None

    def _control(self, tracee: Tracee, addr: int) -> int:
        """A recursive mosrun (or mosnative) running as this MOSIX process tells us
        what its next exec should be (see :mod:`mosix_core.cli.mosrun`)."""
        try:
            request = json.loads(memory.read_cstring(tracee.pid, addr, limit=1 << 16))
            if request.get("native"):
                tracee.program.pending_exec = None
                return 0
            explicit = options_wire.from_json(request["options"])
            merged = mosopts.inherit(options_of(tracee.state), explicit)
            state = initial_state(merged)
            state.nmigs = tracee.state.nmigs
            state.strict = tracee.state.strict  # the site's, whatever the program sends
            if request.get("now"):
                tracee.state = state  # a nested -S queue driver: its children inherit
                self.tell(p.UpdateRequest(pid=tracee.pid, changes=p.RowChanges(**row_fields(state))))
            else:
                tracee.program.pending_exec = state
            return 0
        except (TraceError, ValueError, KeyError, TypeError, MosixError):
            return -errno.EINVAL

    # -- talking ----------------------------------------------------------------------------------------
    def say(self, tracee: Tracee | None, message: str) -> None:
        """A MOSRUN message, on the process's own standard error when it has one."""
        data = (rules.PREFIX + message + "\n").encode(errors="replace")
        fd = None
        if tracee is not None:
            try:
                pidfd = os.pidfd_open(tracee.pid)
                try:
                    fd = memory.borrow_fd(pidfd, 2)
                finally:
                    os.close(pidfd)
            except (OSError, TraceError):
                fd = None
        try:
            os.write(fd if fd is not None else self.messages_fd, data)
        except OSError:
            pass
        finally:
            if fd is not None:
                os.close(fd)

    def _register(self, tracee: Tracee) -> None:
        changes = p.RowChanges(command=tracee.command, **row_fields(tracee.state))
        self.tell(p.RegisterRequest(pid=tracee.pid, changes=changes))

    def tell(self, request: p.RegisterRequest | p.UpdateRequest | p.UnregisterRequest | p.ConsiderRequest) -> None:
        """A request record for mosd about one of our processes, sent without waiting
        (nothing without a session; one that broke is dropped)."""
        if self.session is None:
            return
        try:
            self.session.tell(request)
        except (DaemonUnavailable, OSError):
            self.session = None
