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
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import secrets
import selectors
import signal
import stat
import threading
import time
from ipaddress import IPv4Address
from typing import Callable

import attrs

from mosix_core.errors import DaemonUnavailable, MosixError, ProtocolError, TraceError
from mosix_core.linux import cpus, inject, memory, procfs, ptrace, seccomp
from mosix_core.linux.syscall_names import NUMBERS
from mosix_core.image import capture
from mosix_core.image import freeze as freeze_engine
from mosix_core.image.freeze import CannotFreeze, ThawFailed
from mosix_core.image.freezedirs import NO_SPACE
from mosix_core.client import Client
from mosix_core.config.daemon import DaemonSettings
from mosix_core.image import stream
from mosix_core.image.stream import ImageReader, ImageWriter
from mosix_core.mosrun import checkpoints, control, freezing, migration, procself, rules, targets
from mosix_core.mosrun.move import Move, MoveRequest, Phase
from mosix_core.remote import clocks, moving
from mosix_core.remote.calls import (MAPPED_PRIVATELY, RUN_WHERE_IT_IS, Reply, Request, forwardable,
                                     unforwardable_error)
from mosix_core.remote.deputy import Deputy
from mosix_core.remote.frames import Channel, Poured, encode_control, encode_reply, encode_signal, reply_parts
from mosix_core.remote.link import NO_SUCH_GUEST, REATTACH_HANDSHAKE, keep_alive
from mosix_core.remote.shortcut import Shortcuts, WrittenInPart
from mosix_core.mosrun import options as mosopts

CONTROL_NAME = "mosrun"
NOTHING_PENDING = object()      # /proc/self/mosrun: how a recursive mosrun talks to us
PENDING = object()              # a call of the program answered later (its /proc/self/migrate)
SYS_GETPID, SYS_GETTID, SYS_GETPPID = NUMBERS["getpid"], NUMBERS["gettid"], NUMBERS["getppid"]
SYS_KILL, SYS_TKILL, SYS_TGKILL = NUMBERS["kill"], NUMBERS["tkill"], NUMBERS["tgkill"]
SYS_OPEN, SYS_OPENAT = NUMBERS["open"], NUMBERS["openat"]
STOPS = (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGSTOP)
SYS_MMAP = NUMBERS["mmap"]
PID_CALLS = frozenset({SYS_GETPID, SYS_GETTID, SYS_GETPPID, SYS_KILL, SYS_TKILL, SYS_TGKILL})
MOSMIGRATE_CHECKPOINTS = {"checkpoint": "continue", "chkstop": "stop", "chkexit": "exit"}
REATTACH_EVERY = 1.0              # seconds between tries to make a cut link to a guest again
FORWARD_BURST = 64                # calls served one after another before the loop's other work
# what a frozen process does with a signal whose action is the default one (signal(7))
DEFAULT_IGNORED = frozenset({signal.SIGCHLD, signal.SIGCONT, signal.SIGURG, signal.SIGWINCH})


def initial_state(opts: mosopts.MosrunOptions) -> procself.MosixState:
    """A new MOSIX process's run-time parameters, from mosrun's options."""
    return procself.MosixState(
        lock=int(opts.lock), freezable=int(opts.freezable),
        unsupportok={"kill": 0, "silent": 1, "warn": 2}[opts.unsupported],
        needmem=opts.memory_mb or 0, cpujob=int(opts.cpujob), decayrate=opts.decay,
        local_time=int(opts.local_time), checkpoint_file=opts.checkpoint_file,
        checkpoint_limit=opts.checkpoint_limit or 0, checkpoint_interval=opts.checkpoint_interval or 0,
        strict=int(opts.strict_limitations))


def options_of(state: procself.MosixState) -> mosopts.MosrunOptions:
    """The inheritable options a process has now (for a recursive mosrun)."""
    return mosopts.MosrunOptions(
        lock=bool(state.lock), freezable=bool(state.freezable),
        unsupported=("kill", "silent", "warn")[state.unsupportok], memory_mb=state.needmem or None,
        cpujob=bool(state.cpujob), decay=state.decayrate, local_time=bool(state.local_time),
        strict_limitations=bool(state.strict))


def flag_summary(state: procself.MosixState) -> str:
    """The short option string mosps shows."""
    flags = []
    if state.needmem:
        flags.append(f"-m{state.needmem}")
    flags += [("", "-e", "-w")[state.unsupportok]] if state.unsupportok else []
    flags += ["-L"] if state.lock else []
    flags += ["-g"] if not state.freezable else []
    flags += ["-c"] if state.cpujob else []
    return " ".join(flags)


@attrs.define(eq=False)
class Tracee:
    pid: int
    state: procself.MosixState | None      # None: not a MOSIX process (mosnative, 32-bit)
    parent: int | None = None
    job: object = None                     # the -S queue job this process is the root of
    # the state to take at the next exec (None: become native), as a recursive
    # mosrun/mosnative asked; NOTHING_PENDING when nothing was asked
    pending_exec: object = attrs.field(factory=lambda: NOTHING_PENDING)
    command: str = ""
    mosix_tool: bool = False               # running our own mosrun/mosenv/mosnative (see _exec)
    virtual_pid: int | None = None         # restored: the pid the program knows itself by
    plan: checkpoints.CheckpointPlan | None = None
    allow_sigstop: bool = False            # chkstop: this once, SIGSTOP is meant
    frozen: freezing.Frozen | None = None
    freeze_wanted: str | None = None       # "A"/"P"/"M": freeze at the next stop; "-": unfreeze
    freezes: int = 0
    told_no_space: bool = False            # said once: the policy retries every few seconds
    away: migration.Away | None = None     # running on another node
    move: Move | None = None               # the move under way (see mosix_core.mosrun.move)
    # the move its next exec makes: mosrun -r/-{n}/-b (where the program starts), or back
    # where the process was when it came home to exec
    start_at: MoveRequest | None = None
    remote_utime: float = 0.0              # user CPU seconds of its stays away that ended
    # read-only MAP_SHARED file mappings it has as MAP_PRIVATE ones, [start, end): adding
    # PROT_WRITE there is unsupported (rules.MapPrivately); until its next exec
    converted: list[tuple[int, int]] = attrs.field(factory=list)

    @property
    def native(self) -> bool:
        return self.state is None

    @property
    def own_pid(self) -> int:
        return self.virtual_pid or self.pid


class MoveRefused(MosixError):
    """No move can begin (no MOSIX on this node)."""


class Supervisor:
    """Traces a set of processes until the last one is gone.

    ``home_view`` answers ``/proc/self/in_cluster``; ``session`` (a
    :class:`mosix_core.client.Session` or None) carries process-table updates to mosd.
    """

    def __init__(self, *, messages_fd: int, session=None,
                 in_cluster: Callable[[int], bool] = lambda node: False,
                 on_exit: Callable[[Tracee, ptrace.Stop], None] | None = None,
                 freezer: freezing.Freezer | None = None, etc=None) -> None:
        self.tracees: dict[int, Tracee] = {}
        self.orphans: dict[int, ptrace.Stop] = {}     # born before their parent's fork event
        self.messages_fd = messages_fd
        self.session = session
        self.in_cluster = in_cluster
        self.on_exit = on_exit
        self.timers: list[tuple[float, Callable[[], None]]] = []
        self._next_heartbeat_check = 0.0
        self._own_affinity: set[int] | None = None      # ours, while pinned (see _pin_shell)
        self._pinned_to = 0
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._ways: queue.SimpleQueue = queue.SimpleQueue()   # what threads leave for the loop (see _later)
        self.keep_running: Callable[[], bool] = lambda: False
        self.control = None
        self.freezer = freezer or freezing.Freezer(None)
        self.etc = etc
        self._daemon_settings: DaemonSettings | None = None     # this node's mosd.conf (see _settings)
        self._pouring: tuple[Tracee, _Counted] | None = None    # a large write being made as it comes

    def serve_control(self) -> None:
        """Listen for mosmigrate (see :mod:`mosix_core.mosrun.control`)."""
        self._incoming: list[control.Incoming] = []       # requests still arriving, oldest first
        try:
            self.control = control.listen(os.getpid())
        except OSError:
            return                    # no socket left to make: the processes run on, without mosmigrate
        self.selector.register(self.control, selectors.EVENT_READ, self._accept)

    # -- setting up --------------------------------------------------------------------------------
    def install_wakeup(self) -> None:
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def adopt(self, pid: int, state: procself.MosixState | None, command: str, job=None,
              virtual_pid: int | None = None) -> Tracee:
        """A process the caller has already seized (running, not yet stopped)."""
        tracee = Tracee(pid, state, job=job, command=command, virtual_pid=virtual_pid)
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
            timeout = self._next_checkpoint_in()
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
            self._automatic_checkpoints()
            self._poll_away_signals()
            self._check_away_nodes()

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
                if err.errno != errno.ESRCH:     # a tracee killed under our feet is no error
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
            self._away_stop(tracee, stop)
            return
        if tracee.move is not None and tracee.move.awaiting_stop and self._may_freeze_at(tracee, stop):
            self._migrate_now(tracee)
            return
        if tracee.frozen is not None:
            self._frozen_stop(tracee, stop)
            return
        if tracee.freeze_wanted in freezing.FREEZE_KINDS and self._may_freeze_at(tracee, stop):
            self._freeze_now(tracee)
            return
        if stop.kind == "event":
            self._event(tracee, stop)
        elif stop.kind == "signal":
            sig = stop.sig
            if sig == signal.SIGSTOP and not tracee.native:
                if tracee.allow_sigstop:
                    tracee.allow_sigstop = False
                else:
                    sig = signal.SIGTSTP       # MOSIX processes never get SIGSTOP (mosrun(1))
            self._resume(tracee, sig)
        elif stop.kind == "syscall" and self._checkpoint_waiting(tracee):
            if ptrace.syscall_stop_op(tracee.pid) == ptrace.INFO_EXIT:
                self._checkpoint_now(tracee)
            else:
                ptrace.syscall(tracee.pid)
        else:
            ptrace.cont(tracee.pid)

    def _checkpoint_waiting(self, tracee: Tracee) -> bool:
        return tracee.plan is not None and tracee.plan.requested is not None

    def _resume(self, tracee: Tracee, sig: int = 0) -> None:
        """Let the tracee go on; to the end of its current call if a checkpoint waits for it."""
        if self._checkpoint_waiting(tracee):
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
                ptrace.listen(pid)          # stay stopped (job control) until SIGCONT
            elif self._checkpoint_waiting(tracee):
                self._checkpoint_stop(tracee)
            else:
                ptrace.cont(pid)
        else:
            ptrace.cont(pid)

    def _born(self, parent: Tracee, pid: int) -> None:
        state = None if parent.state is None else parent.state.for_child()
        child = Tracee(pid, state, parent=parent.pid, command=parent.command, converted=list(parent.converted))
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
            move.drop_channel()                  # the guest host waiting for it goes
            move.fail(f"{tracee.pid}: the process ended before its move did")
        if tracee.away is not None:
            self._away_ended(tracee)
        if tracee.frozen is not None:
            tracee.frozen.discard()          # the image's disk space returns now
            tracee.frozen = None
        if self.on_exit is not None:
            self.on_exit(tracee, stop)

    def _exec(self, tracee: Tracee) -> None:
        pid = tracee.pid
        if tracee.pending_exec is not NOTHING_PENDING:
            tracee.state, tracee.pending_exec = tracee.pending_exec, NOTHING_PENDING
            if tracee.state is None:
                self._send("unregister", pid=pid)
        tracee.command = _command_line(pid)
        tracee.converted = []
        # A recursive mosrun/mosenv/mosnative is our own Python program, which uses calls
        # MOSIX refuses (epoll...) before it reaches /proc/self/mosrun: they fail quietly
        # for it, whatever the process's -e/-u, until it execs the real program.
        tracee.mosix_tool = _is_mosix_tool(tracee.command)
        if not tracee.native and _is_32bit(pid):
            self.say(tracee, f"{_program_name(pid)} is a 32-bit program - will run in native Linux mode")
            self._send("unregister", pid=pid)
            # it stays traced as a native process: the filter it inherited traces every
            # i386 call (an untraced one would fail with ENOSYS), and _event lets a
            # native tracee's calls run untouched
            tracee.state, tracee.plan = None, None
            ptrace.cont(pid)
            return
        if not tracee.native:
            self._send("update", pid=pid, command=tracee.command, options=flag_summary(tracee.state))
        # where the new program runs: where mosrun was told to start it, or back where
        # the process was when it came home to exec
        start, tracee.start_at = tracee.start_at, None
        if start is not None and not tracee.native:
            with contextlib.suppress(MoveRefused):
                self.request_migration(tracee, start)
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
        verdict = rules.decide(info.nr, info.args, self._context(tracee))
        if isinstance(verdict, rules.SpecialOpen):
            verdict = self._special_open(tracee, verdict)
            if verdict is None:
                return                  # carried out already (a checkpoint)
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

    def _parent_pid(self, tracee: Tracee) -> int | None:
        """What getppid says for ``tracee`` (as :meth:`_pid_call` would have it)."""
        parent = self.tracees.get(tracee.parent) if tracee.parent else None
        if parent is not None and parent.virtual_pid:
            return parent.own_pid
        fields = procfs.stat_fields(tracee.pid)
        return None if fields is None else int(fields[1])

    def _context(self, tracee: Tracee) -> rules.CallContext:
        """What the rules may ask about ``tracee`` (and whether the site is strict with it)."""
        def converted(start: int, length: int) -> bool:
            end = start + max(length, 1)
            return any(low < end and start < high for low, high in tracee.converted)
        return rules.CallContext(tracee.pid, rules.fd_mode_of(tracee.pid), strict=bool(tracee.state and tracee.state.strict),
                                 converted=converted)

    def _settings(self) -> DaemonSettings:
        """This node's mosd.conf settings, read once (the defaults where there is none)."""
        if self._daemon_settings is None:
            config = _configuration(self.etc) if self.etc is not None else None
            self._daemon_settings = config.daemon if config is not None else DaemonSettings.default()
        return self._daemon_settings

    def _carry_out(self, tracee: Tracee, verdict) -> None:
        pid = tracee.pid
        verdict, said, kill = rules.settle(verdict, self._unsupported_mode(tracee))
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
        self._resume(tracee)

    def _map_privately(self, tracee: Tracee, flags: int) -> None:
        """The mmap runs MAP_PRIVATE, to its end here (it does not wait), so the range
        it got is known; signals that came meanwhile are sent again."""
        pid = tracee.pid
        length = inject.set_arguments(pid, {3: flags}).rsi
        injector = inject.Injector(pid, 0)
        try:
            address = injector.run_to(ptrace.INFO_EXIT)
        except inject.TraceeEnded as ended:
            self.on_stop(ended.stop)           # killed meanwhile: its end is seen as any other
            return
        if not -4096 < address < 0:
            tracee.converted.append((address, address + length))
        for sig in injector.deferred:
            os.kill(pid, sig)
        self._resume(tracee)

    @staticmethod
    def _unsupported_mode(tracee: Tracee) -> int:
        return rules.MODE_SILENT if tracee.mosix_tool else tracee.state.unsupportok

    def _special_open(self, tracee: Tracee, call: rules.SpecialOpen):
        try:
            path = memory.read_cstring(tracee.pid, call.path_addr, limit=64)
        except TraceError:
            return rules.ALLOW               # let the kernel report EFAULT as it would
        if path == procself.PREFIX + CONTROL_NAME.encode() and call.flags & 3 == 1:
            return rules.Return(self._control(tracee, call.value))
        name = procself.special_name(path)
        if name is None:
            return rules.ALLOW
        if name == "checkpoint" and call.flags & 3 in (1, 2):
            self._checkpoint_from_program(tracee, call.flags & 3)
            return None
        if name == "migrate" and call.flags & 3 == 1:
            result = self._migrate_from_program(tracee, call.value & 0xFFFFFFFF)
            return None if result is PENDING else rules.Return(result)    # PENDING: answered when the move ends
        env = procself.Environment(
            whereami=lambda: 0, in_cluster=self.in_cluster,
            read_string=lambda addr: self._read_string(tracee.pid, addr))
        before = (tracee.state.needmem, tracee.state.lock, tracee.state.unsupportok,
                  tracee.state.freezable, tracee.state.cpujob)
        checkpointing = (tracee.state.checkpoint_file, tracee.state.checkpoint_limit,
                         tracee.state.checkpoint_interval)
        result = procself.handle(tracee.state, name, call.flags, call.value, env)
        if result >= 0 and call.flags & 3 and name.startswith("checkpoint"):
            self._checkpoint_settings(tracee, name, checkpointing)
        after = (tracee.state.needmem, tracee.state.lock, tracee.state.unsupportok,
                 tracee.state.freezable, tracee.state.cpujob)
        if before != after:
            self._send("update", pid=tracee.pid, options=flag_summary(tracee.state),
                       freezable=bool(tracee.state.freezable))
        if call.flags & 3 == 0 and procself.named_by_argument(path, tracee.command):
            self.say(tracee, procself.misread_note(name, result))       # cat /proc/self/whereami
        return rules.Return(result)

    # -- checkpoints -----------------------------------------------------------------------------------
    def _checkpoint_settings(self, tracee: Tracee, name: str, before: tuple) -> None:
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
        if not waiting and tracee.frozen is None:
            ptrace.interrupt(tracee.pid)    # a frozen process checkpoints once unfrozen

    def _checkpoint_stop(self, tracee: Tracee) -> None:
        """An interrupt stop with a checkpoint requested: now, or when the call returns."""
        if checkpoints.in_blocking_call(ptrace.get_regs(tracee.pid)):
            ptrace.syscall(tracee.pid)        # the manual: delayed until the call completes
        else:
            self._checkpoint_now(tracee)

    def _checkpoint_now(self, tracee: Tracee) -> None:
        plan = tracee.plan
        then, plan.requested = plan.requested, None
        ok, what, deferred = checkpoints.take(tracee.pid, tracee.own_pid, tracee.state, plan,
                                              converted=tracee.converted)
        if not ok:
            self.say(tracee, f"checkpoint failed: {what}")
        if plan.interval_minutes:
            plan.reset_timer()
        if then == "exit":
            checkpoints.exit_now(tracee.pid)
        elif then == "stop":
            tracee.allow_sigstop = True
            os.kill(tracee.pid, signal.SIGSTOP)
        ptrace.cont(tracee.pid)
        checkpoints.resend(tracee.pid, deferred)

    def _checkpoint_from_program(self, tracee: Tracee, access: int) -> None:
        """open("/proc/self/checkpoint", 1|O_CREAT) or (2|O_CREAT): mosix(7) — 0 (write
        only) or the version (read-write) on success, -1 when the checkpoint fails. The
        image holds the success value, so the recovered program sees the same."""
        pid, plan = tracee.pid, tracee.plan
        version = plan.naming.next_version()
        inject.finish_call(pid, 0 if access == 1 else version)
        ok, what, deferred = checkpoints.take(pid, tracee.own_pid, tracee.state, plan, converted=tracee.converted)
        if not ok:
            self.say(tracee, f"checkpoint failed: {what}")
            inject.set_result(pid, -errno.EIO)
        ptrace.cont(pid)
        checkpoints.resend(pid, deferred)

    def _next_checkpoint_in(self) -> float | None:
        dues = [t.plan.due for t in self.tracees.values() if t.plan is not None and t.plan.due is not None]
        # capped: select() refuses timeouts of years (-A10000000 is 19 years)
        return None if not dues else min(max(0.0, min(dues) - time.monotonic()), 3600.0)

    def _automatic_checkpoints(self) -> None:
        now = time.monotonic()
        for tracee in list(self.tracees.values()):
            plan = tracee.plan
            if plan is not None and plan.due is not None and plan.due <= now:
                plan.due = None               # set again when the checkpoint is taken
                try:
                    self.request_checkpoint(tracee, "continue")
                except TraceError:
                    pass

    # -- freezing ---------------------------------------------------------------------------------------
    def request_freeze(self, tracee: Tracee, how: str) -> dict:
        """Freeze ``tracee`` ("M": manually, "A": the automatic policy, "P": a package)."""
        if tracee.frozen is not None:
            if tracee.freeze_wanted == freezing.UNFREEZE:
                tracee.freeze_wanted = None            # stays frozen after all
            if how == "M" and tracee.frozen.how != "M":
                tracee.frozen.how = "M"                # not to be unfrozen automatically now
                self._send("update", pid=tracee.pid, frozen="M")
            return {"ok": True}
        if how != "M" and not tracee.state.freezable:
            return {"error": "the process may not be frozen automatically (mosrun -g)"}
        pending = tracee.freeze_wanted in freezing.FREEZE_KINDS
        if not pending or how == "M":
            tracee.freeze_wanted = how
        if not pending:
            ptrace.interrupt(tracee.pid)
        return {"ok": True}

    def request_unfreeze(self, tracee: Tracee, *, automatic: bool) -> dict:
        if tracee.frozen is None:
            if tracee.freeze_wanted in freezing.FREEZE_KINDS and not (automatic and tracee.freeze_wanted == "M"):
                tracee.freeze_wanted = None            # not frozen yet: just don't
            return {"ok": True}
        if automatic and tracee.frozen.how == "M":
            return {"error": "a manually frozen process is not unfrozen automatically"}
        if tracee.freeze_wanted != freezing.UNFREEZE:
            tracee.freeze_wanted = freezing.UNFREEZE
            ptrace.interrupt(tracee.pid)
        return {"ok": True}

    @staticmethod
    def _may_freeze_at(tracee: Tracee, stop: ptrace.Stop) -> bool:
        """Stops where the registers are the program's own, free to save and change."""
        if stop.kind == "event":
            return stop.event == ptrace.EVENT_STOP and not stop.group_stop
        return stop.kind == "syscall" and ptrace.syscall_stop_op(tracee.pid) == ptrace.INFO_EXIT

    def _freeze_now(self, tracee: Tracee) -> None:
        pid = tracee.pid
        how, tracee.freeze_wanted = tracee.freeze_wanted, None
        regs = inject.copy_registers(ptrace.get_regs(pid))
        try:
            frozen = self.freezer.freeze(pid, how, tracee.freezes, regs)
        except freezing.LostInFreezing as err:
            self.say(tracee, f"freezing failed: {err}")
            os.kill(pid, signal.SIGKILL)
            return
        except freezing.NoSpace as err:
            if how != "M" and err.needed_mb >= self.freezer.killing_memory_mb():
                self.say(tracee, NO_SPACE)        # the manual: "so the program was killed"
                os.kill(pid, signal.SIGKILL)
                return
            # manual freezing, or freeze.conf's killing-memory keeps it: it runs on
            if how == "M" or not tracee.told_no_space:
                self.say(tracee, f"{NO_SPACE}: the process keeps running")
                tracee.told_no_space = how != "M"
            self._resume(tracee)
            return
        except CannotFreeze as err:
            self.say(tracee, str(err))
            self._send("update", pid=pid, frozen="N/A")
            self._resume(tracee)
            return
        except (MosixError, OSError) as err:
            if isinstance(err, TraceError) and err.errno == errno.ESRCH:
                return
            self.say(tracee, f"freezing failed: {err}")
            inject.put_back(pid, regs)
            self._resume(tracee)
            return
        tracee.frozen = frozen
        tracee.freezes += 1
        freeze_engine.wait_in_shell(pid, frozen.shell)
        ptrace.cont(pid)
        held, frozen.held = frozen.held, []
        checkpoints.resend(pid, held)            # judged as a frozen process's signals
        self._send("update", pid=pid, frozen=how)

    def _frozen_stop(self, tracee: Tracee, stop: ptrace.Stop) -> None:
        """A frozen process reacts only to unfreezing or a signal that kills it (mosix(7))."""
        pid = tracee.pid
        if stop.kind == "signal":
            self._frozen_signal(tracee, stop.sig)
        elif stop.kind == "event" and stop.event == ptrace.EVENT_STOP and stop.group_stop:
            ptrace.listen(pid)
        elif stop.kind == "event" and stop.event == ptrace.EVENT_STOP and tracee.freeze_wanted == freezing.UNFREEZE:
            self._thaw_now(tracee)
        else:
            ptrace.cont(pid)                   # back to its pause()

    def _frozen_signal(self, tracee: Tracee, sig: int) -> None:
        status = procfs.status_fields(tracee.pid)
        caught = sig in procfs.signal_set(status.get("SigCgt", "0"))
        ignored = sig in procfs.signal_set(status.get("SigIgn", "0"))
        if caught or sig in ptrace.STOP_SIGNALS:
            tracee.frozen.held.append(sig)      # its handler (or the stop) once unfrozen
            ptrace.cont(tracee.pid)
        elif ignored or sig in DEFAULT_IGNORED:
            ptrace.cont(tracee.pid)
        else:
            ptrace.cont(tracee.pid, sig)        # fatal: it dies frozen

    def _thaw_now(self, tracee: Tracee) -> None:
        pid, frozen = tracee.pid, tracee.frozen
        tracee.freeze_wanted = None
        try:
            deferred = self.freezer.thaw(pid, frozen)
        except ThawFailed as err:
            if err.corrupt or err.shell is None:
                self.say(tracee, freezing.FAILED_DECOMPRESSING if err.corrupt else freezing.UNFREEZE_FAILED)
                os.kill(pid, signal.SIGKILL)
                return
            frozen.shell = err.shell
            self.say(tracee, f"{freezing.REFREEZING} ({err.reason})")
            freeze_engine.wait_in_shell(pid, frozen.shell)
            ptrace.cont(pid)
            return
        tracee.frozen = None
        frozen.discard()
        self._resume(tracee)
        checkpoints.resend(pid, frozen.held + deferred)
        if self._checkpoint_waiting(tracee):
            ptrace.interrupt(pid)             # the checkpoint asked for while it was frozen
        self._send("update", pid=pid, frozen="-")

    # -- migration -----------------------------------------------------------------------------------
    def request_migration(self, tracee: Tracee, request: MoveRequest) -> Move | None:
        """Begin the move ``request`` asks for (its target resolved already, see
        :mod:`mosix_core.mosrun.targets`): the :class:`Move` under way, or None when there
        is nothing to do (there already; a frozen process stays home). A request while a
        move is under way joins it. :class:`MoveRefused` when no move can begin.

        Elsewhere than home, the way there is opened first — our mosd's handshake, the
        target's guest host starting, the clocks compared — in a thread, while the
        process runs on (away, its calls keep being served here); only then is it
        stopped and sent. A ``starting`` move waits at the program's exec for the way
        (mosrun -r/-{n}/-b), so that a refused start runs nothing of the program."""
        if self.etc is None:
            raise MoveRefused("MOSIX is not running on this node")
        to, away, current = request.target, tracee.away, tracee.move
        if away is not None:
            if current is not None and to.home and not current.target.home and current.phase is Phase.HANDSHAKE:
                # home, while the way on is still being opened: the way on is dropped
                self._move_failed(tracee, current, "called home instead", say=False)
                current = None
            if current is not None:
                return current                    # on its way already
            if to.home:
                move = tracee.move = Move(request, origin=away.where)
                move.to(Phase.STOPPED)
                self._send_order(tracee, move, {"op": "home"})
                return move
            if to.text == away.where:
                return None                       # there already
            move = tracee.move = Move(request, origin=away.where)
            self._open_way_then(tracee, move, lambda: self._onward_way_open(tracee, move))
            return move
        if to.home or tracee.frozen is not None:
            return None                           # at home already (a frozen process stays)
        if current is not None:
            return current
        move = tracee.move = Move(request)
        if request.starting:
            move.to(Phase.HANDSHAKE)
            move.reply, move.channel = self._handshake(tracee, move)
            self._way_open(tracee, move)
        else:
            self._open_way_then(tracee, move, lambda: self._way_open(tracee, move))
        return move

    def _later(self, then: Callable[[], None]) -> None:
        """``then()`` in the loop, soon (from a thread)."""
        self._ways.put(then)
        try:
            os.write(self._wake_w, b"w")
        except OSError:
            pass

    def _run_later(self) -> None:
        while not self._ways.empty():
            self._ways.get()()

    def _open_way_then(self, tracee: Tracee, move: Move, then: Callable[[], None]) -> None:
        """:meth:`_handshake` in a thread; ``then()`` in the loop after, if the move is
        still the process's."""
        move.to(Phase.HANDSHAKE)

        def work() -> None:
            reply, channel = self._handshake(tracee, move)

            def opened() -> None:
                if tracee.move is not move or move.over:
                    if channel is not None:
                        channel.sock.close()      # it ended, came home or went elsewhere meanwhile
                    return
                move.reply, move.channel = reply, channel
                then()
            self._later(opened)
        threading.Thread(target=work, name=f"way-{tracee.pid}-{move.target.text}", daemon=True).start()

    def _handshake(self, tracee: Tracee, move: Move) -> tuple[dict, Channel | None]:
        """Our mosd's handshake with the move's target (from ``move.origin``, where the
        process is), then the clock comparison with the guest host there: (mosd's reply,
        the channel to that guest host — None when refused, and the reply says why)."""
        try:
            reply, sock = Client(self.etc).call_for_socket(
                "migrate_out", pid=tracee.pid, to=move.target.text, memory_mb=tracee.state.needmem,
                command=tracee.command, nmigs=tracee.state.nmigs, now_at=move.origin)
        except MosixError as err:
            return {"refused": str(err)}, None
        if sock is None:
            return reply, None
        try:
            keep_alive(sock)
            sock.settimeout(migration.RESTORE_TIMEOUT)
            channel = Channel(sock)
            clocks.answer_home_side(lambda message: channel.send(encode_control(message)), channel.receive,
                                    local_time=bool(tracee.state.local_time))
        except (MosixError, OSError):
            sock.close()
            return {**reply, "refused": migration.DID_NOT_COMPLETE}, None
        return reply, channel

    def _way_open(self, tracee: Tracee, move: Move) -> None:
        """The handshake of a move from home is over: the process is sent from its next
        clean stop (where a refusal is handled too: a start that fails ends the program
        there). The program's own request waits in its call, which ends now."""
        if not self._at_home(tracee):
            self._move_failed(tracee, move, "the process is frozen", say=False)
            return
        if move.request.by_program:
            self._program_way_open(tracee, move)
            return
        move.precopy_wanted = move.channel is not None and migration.worth_sending_ahead(tracee.pid)
        move.awaiting_stop = True
        try:
            ptrace.interrupt(tracee.pid)
        except TraceError:
            pass                                  # it has just ended: _gone ends the move

    def _program_way_open(self, tracee: Tracee, move: Move) -> None:
        """/proc/self/migrate at home, its call waiting at its seccomp stop: it returns
        0 where the process arrives, or -1 (EAGAIN) here if the move fails."""
        pid = tracee.pid
        if move.channel is None:
            already = move.reply.get("refused") == "already there"
            if already:
                tracee.move = None
                move.confirm()
            else:
                self._move_failed(tracee, move, move.reply.get("refused", "no response"))
            inject.skip_call(pid, 0 if already else -errno.EAGAIN)
            self._resume(tracee)
            return
        try:
            held = inject.end_call(pid, 0)       # a clean stop: the call's exit
        except TraceError:
            return                                # it ended meanwhile: _gone ends the move
        self._migrate_now(tracee, held)

    def _at_home(self, tracee: Tracee) -> bool:
        """Still ours, at home and not frozen (nothing happened to it meanwhile)."""
        return self.tracees.get(tracee.pid) is tracee and tracee.away is None and tracee.frozen is None

    def _move_failed(self, tracee: Tracee, move: Move, reason: str, *, say: bool = True) -> None:
        """``move`` failed for ``reason``: the manual's message, said to the process
        (``say``) and given to whoever waits. A program away whose own request it was
        gets its answer: -1 (EAGAIN) now, or when it makes its call again (it was told
        to, so that the call is made where it arrives)."""
        message = migration.failed_migrating(move.where if not move.target.home else "home", reason)
        if say:
            self.say(tracee, message)
        if tracee.move is move:
            tracee.move = None
        if move.request.by_program and tracee.away is not None and not move.over:
            if move.call_made_again:
                tracee.away.program_move_failed = True
            else:
                self._away_answer(tracee, Reply(-errno.EAGAIN))
        move.fail(message)

    def _send_ahead(self, tracee: Tracee, move: Move, regs: ptrace.Registers) -> bool:
        """Begin the move while the process runs on: its memory goes ahead (a thread
        writes it), then it is stopped again and only what it changed follows — it is
        stopped for that, not for all of its memory. False if its writes cannot be
        followed here: it is then sent stopped, as small processes are."""
        pid = tracee.pid
        tracker, held = moving.start_tracking(pid, regs)
        checkpoints.resend(pid, held)
        if tracker is None:
            return False
        move.to(Phase.PRECOPY)
        writer = ImageWriter(move.channel.sock.makefile("wb"), compress=move.compress)
        self._send("update", pid=pid, where="leaving")

        def work() -> None:
            try:
                outcome: object = moving.send_ahead(pid, writer, tracker)
            except (MosixError, OSError) as err:
                outcome = err
            self._later(lambda: self._sent_ahead(tracee, move, writer, tracker, outcome))
        with self._unpinned():
            threading.Thread(target=work, name=f"ahead-{pid}", daemon=True).start()
        self._resume(tracee)
        return True

    def _sent_ahead(self, tracee: Tracee, move: Move, writer: ImageWriter, tracker, outcome: object) -> None:
        """The memory went ahead: stop the process for the rest (or, if it failed, it
        runs on here)."""
        gone = tracee.move is not move or not self._at_home(tracee)
        if gone or not isinstance(outcome, capture.Precopy):
            tracker.close()
            move.drop_channel()
            if not gone:
                self._send("update", pid=tracee.pid, where="here")
                self._move_failed(tracee, move, migration.DID_NOT_COMPLETE)
            return
        move.ahead = (writer, outcome)
        move.awaiting_stop = True
        try:
            ptrace.interrupt(tracee.pid)
        except TraceError:
            pass                                  # it has just ended: _gone ends the move

    def _onward_way_open(self, tracee: Tracee, move: Move) -> None:
        """The way on for a process away: it is asked for its image (which this side
        will pass on), or told the user why not."""
        if move.channel is None:
            if move.reply.get("refused") == "already there":
                tracee.move = None
                if move.request.by_program:
                    self._away_answer(tracee, Reply(0))
                move.confirm()
            else:
                self._move_failed(tracee, move, move.reply.get("refused", "no response"))
            return
        move.to(Phase.STOPPED)
        self._send_order(tracee, move, {"op": "home", "compress": move.compress})

    def _send_order(self, tracee: Tracee, move: Move, order: dict) -> None:
        """Ask the guest for its image (home, or on through home). The program's own
        request, waiting in its call, is answered "made again": the guest makes it
        again where it arrives (or, if it stays, there — and learns the failure)."""
        self._away_send(tracee, encode_control(order))
        if move.request.by_program and not move.call_made_again and tracee.away is not None:
            move.call_made_again = True
            self._away_answer(tracee, Reply(-inject.ERESTARTNOINTR))
        if tracee.away is not None and tracee.away.deputy.running is not None:
            # a call that may block here (a read of a terminal...) ends as if
            # interrupted; the guest then makes it again — at home
            try:
                ptrace.interrupt(tracee.pid)
            except TraceError:
                pass

    def _migrate_from_program(self, tracee: Tracee, value: int):
        """open("/proc/self/migrate", 1|O_CREAT, value): 0 home, -1 "consider" (the
        automatic decision, made elsewhere), else a node number or IP address. The
        call returns when the move is over (PENDING until then): 0 if it happened, -1
        if not (mosix(7))."""
        if value == 0xFFFFFFFF:
            return 0
        try:
            target = targets.resolve(_configuration(self.etc), targets.proc_value_text(value))
        except targets.UnknownTarget as err:
            self.say(tracee, str(err))
            return -errno.EINVAL
        away = tracee.away
        if away is not None and away.program_move_failed:
            away.program_move_failed = False      # the call made again after its move failed
            return -errno.EAGAIN
        try:
            move = self.request_migration(tracee, MoveRequest(target, by_program=True))
        except MoveRefused:
            return -errno.EAGAIN
        if move is None or not move.request.by_program or move.over:
            return 0                              # there already, or someone else's move carries it
        return PENDING

    def _migrate_now(self, tracee: Tracee, held: list[int] | tuple = ()) -> None:
        """Send the process where ``tracee.move`` goes, from a clean stop; it stays
        whole here until the target confirms, and runs on here if anything fails."""
        pid, move = tracee.pid, tracee.move
        move.awaiting_stop = False
        regs = inject.copy_registers(ptrace.get_regs(pid))
        if move.channel is None:
            if move.reply.get("refused") == "already there":
                tracee.move = None
                move.confirm()
                self._resume(tracee)
            else:
                self._move_failed(tracee, move, move.reply.get("refused", "no response"))
                self._start_failed(tracee, move)
            checkpoints.resend(pid, list(held))
            return
        if move.precopy_wanted:
            move.precopy_wanted = False
            if self._send_ahead(tracee, move, regs):
                return                               # it runs on while its memory goes
        move.to(Phase.STOPPED)
        (writer, ahead), move.ahead = move.ahead or (None, None), None
        channel, target = move.channel, move.where
        sock = channel.sock
        self._send("update", pid=pid, where="leaving")
        deferred: list[int] = list(held)

        def restored() -> None:
            writer.out.flush()
            move.to(Phase.SENT)
            answer = channel.receive()
            if not isinstance(answer, dict) or answer.get("op") != "restored":
                raise ProtocolError(str(answer.get("reason", answer)) if isinstance(answer, dict) else "no answer")
        try:
            if writer is None:
                writer = ImageWriter(sock.makefile("wb"), compress=move.compress)
            with self._unpinned():
                shell, signals = moving.leave(pid, writer, regs, {"pid": tracee.own_pid}, confirmed=restored,
                                              ahead=ahead)
            deferred += signals
            deputy = Deputy(pid, shell)
            # the guest keeps the signal mask; here every signal must show, to be sent on;
            # its timers went with it
            inject.unblock_every_signal(deputy.injector, deputy.zeros(8))
            inject.stop_interval_timers(deputy.injector, deputy.zeros(32))
            sock.settimeout(None)
            token, grace = secrets.token_hex(16), self._link_grace()
            channel.send(encode_control({"op": "go", "signals": deferred, "token": token, "grace": grace}))
        except (MosixError, OSError) as err:
            if isinstance(err, moving.NotConfirmed):
                deferred += err.deferred
            move.drop_channel()
            self._send("update", pid=pid, where="here")
            if isinstance(err, TraceError) and err.errno == errno.ESRCH:
                return                               # it ended: _gone ends the move
            self._move_failed(tracee, move, migration.DID_NOT_COMPLETE)
            inject.put_back(pid, regs)
            if move.request.by_program:
                inject.set_result(pid, -errno.EAGAIN)     # its /proc/self/migrate fails
            checkpoints.resend(pid, deferred)
            self._start_failed(tracee, move)
            return
        finally:
            if ahead is not None:
                ahead.close()                        # its writes need no following any more
        tracee.away = migration.Away(target, sock, channel, deputy, compress=move.compress, token=token, grace=grace)
        tracee.move = None
        try:
            tracee.away.shortcuts = Shortcuts(pid, tracee.own_pid, lambda: self._parent_pid(tracee))
        except OSError:
            pass                                     # every call goes through the deputy
        self._pin_shell(tracee)
        self.selector.register(sock, selectors.EVENT_READ, lambda: self._away_readable(tracee))
        tracee.state.nmigs += 1
        self._send("update", pid=pid, where=target, nmigs=tracee.state.nmigs)
        move.confirm()
        self._signal_migrated(tracee)

    def _start_failed(self, tracee: Tracee, move: Move) -> None:
        """A move failed: the process runs on at home — unless it was to start
        elsewhere (mosrun -r/-{n}/-b) without -F, when it does not run at all."""
        if move.request.starting and not move.request.force:
            checkpoints.exit_now(tracee.pid, 1)
        self._resume(tracee)

    def _signal_migrated(self, tracee: Tracee) -> None:
        """/proc/self/sigmig: the process asked for a signal after each migration."""
        if tracee.state.sigmig:
            if tracee.away is not None:
                self._away_send(tracee, encode_signal(tracee.state.sigmig))
            else:
                checkpoints.resend(tracee.pid, [tracee.state.sigmig])

    def _away_readable(self, tracee: Tracee) -> None:
        """Frames from the guest. After a call answered at once, the next one is waited
        for a little, spinning: a busy program's next call comes within tens of µs, and
        a CPU that went idle costs more than that to wake (mosd.conf forward_spin_us).
        At most FORWARD_BURST calls so before the loop's other work."""
        spin = self._forward_spin()
        for _ in range(FORWARD_BURST):
            self._away_message(tracee)
            away = tracee.away
            if away is None or away.lost_since is not None or away.deputy.running is not None or not spin or \
                    not away.channel.readable_within(spin):
                return

    def _forward_spin(self) -> float:
        """mosd.conf's forward_spin_us, in seconds."""
        return self._settings().forward_spin_us / 1e6

    def _away_message(self, tracee: Tracee) -> None:
        away = tracee.away
        if away is None or away.refused:
            return
        self._pouring = None
        try:
            message = away.channel.receive(pour=lambda *call: self._away_pour(tracee, *call))
        except (ProtocolError, OSError):
            self._cut_in_pour(tracee)
            self._lost(tracee)
            return
        if isinstance(message, (Poured, Request)):
            away.requests += 1
        if isinstance(message, Poured):
            self._away_reply(tracee, message.reply)
        elif isinstance(message, Request):
            self._away_call(tracee, message)
        elif isinstance(message, dict) and message.get("op") == "image":
            self._coming_home(tracee, message)
        elif isinstance(message, dict) and message.get("op") == "killed" and isinstance(message.get("signal"), int):
            self._die_like_guest(tracee, message["signal"])
        elif isinstance(message, dict) and message.get("op") == "times":
            self._away_times(tracee, message.get("utime"))
        elif isinstance(message, dict) and message.get("op") == "stopped" and message.get("signal") in STOPS:
            self._away_stopped(tracee, message["signal"])
        else:
            self._lost(tracee)

    def _away_stopped(self, tracee: Tracee, sig: int) -> None:
        """The guest stopped (^Z, SIGTTIN...): so does the process here, of the same
        signal, so its parent (a shell's job control) sees it stopped. The shell takes
        the signal's default action (its handler, if any, ran in the guest)."""
        away = tracee.away
        if away.deputy.running is not None or away.stopped or away.stopping is not None:
            return
        try:
            inject.default_action(away.deputy.injector, sig, away.deputy.zeros(32))
            os.kill(tracee.pid, sig)
            away.stopping = sig
            ptrace.syscall(tracee.pid)             # from its idle stop to the signal's stop
        except (TraceError, OSError):
            away.stopping = None

    def _away_times(self, tracee: Tracee, utime) -> None:
        """The guest's CPU time on its node so far: mostimeof adds it to the time here."""
        if isinstance(utime, (int, float)) and utime >= 0:
            tracee.away.utime = float(utime)
            self._send("update", pid=tracee.pid, remote_utime=round(tracee.remote_utime + utime, 2))

    def _away_call(self, tracee: Tracee, request: Request) -> None:
        if request.nr == MAPPED_PRIVATELY:
            # where the guest mapped a read-only MAP_SHARED privately (see _away_mapping)
            if len(request.args) == 2 and all(isinstance(v, int) for v in request.args):
                tracee.converted.append((request.args[0], request.args[0] + request.args[1]))
            self._away_answer(tracee, Reply(0))
            return
        context = self._context(tracee)
        verdict = rules.home_verdict(request.nr, request.args, context)
        if request.nr == SYS_MMAP:
            special = self._away_mapping(tracee, request, verdict)
        elif rules.refuses(verdict):
            settled = self._settled(tracee, verdict)
            if isinstance(settled, rules.Answer):
                self._away_answer(tracee, Reply(settled.value, settled.writes))
                return
            special = self._answer(settled)
        elif request.nr in RUN_WHERE_IT_IS:
            special = 0                          # home's rules allow it: the guest makes it
        elif not forwardable(request):
            special = -unforwardable_error(request.nr)   # home allows it, but cannot make it for the guest
        else:
            special = self._away_special(tracee, request)
            if special is PENDING:
                return                           # its move is under way: answered when it ends
        if special is not None:
            self._away_answer(tracee, Reply(special))
            return
        reply = tracee.away.shortcuts.answer(request) if tracee.away.shortcuts is not None else None
        if isinstance(reply, WrittenInPart):
            tracee.away.written_first, request = reply.done, reply.rest      # the deputy writes the rest
        elif reply is not None:
            self._away_reply(tracee, reply)
            return
        try:
            tracee.away.deputy.begin(request)
        except TraceError:
            pass                                 # it ended: _gone answers the guest

    def _away_pour(self, tracee: Tracee, request: Request, index: int, size: int, source: Channel) -> Reply | None:
        """A large write made as its data comes (Shortcuts.pour), when it is one that
        would go straight to the shortcuts: one home lets run untouched."""
        shortcuts = tracee.away.shortcuts
        if shortcuts is None:
            return None
        if rules.home_verdict(request.nr, request.args, self._context(tracee)) is not None:
            return None
        self._pouring = (tracee, _Counted(source))
        return shortcuts.pour(request, index, size, self._pouring[1])

    def _cut_in_pour(self, tracee: Tracee) -> None:
        """The link broke in the middle of a large write made as it came: what was
        written stays written, and the call is answered as a short write of it (the
        guest, asking again, gets that answer; its program writes the rest)."""
        pouring, self._pouring = self._pouring, None
        if pouring is not None and pouring[0] is tracee and pouring[1].taken:
            tracee.away.requests += 1
            self._away_answer(tracee, Reply(pouring[1].taken))

    def _away_mapping(self, tracee: Tracee, request: Request, verdict) -> int:
        """mmap of a file away: the guest maps a private copy of the file's pages, read
        here through the descriptor. Home's ``verdict`` comes first (MAP_SHARED,
        character devices); the answer is the flags the guest may map with, or -errno."""
        args = request.args
        mode = rules.fd_mode_of(tracee.pid)(inject.signed(args[4]))
        if mode is None:
            return -errno.EBADF
        verdict = self._settled(tracee, verdict or rules.ALLOW)
        if isinstance(verdict, rules.Fail):
            return -verdict.errno
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            return -errno.ENODEV
        if isinstance(verdict, rules.MapPrivately):
            return verdict.flags                 # the guest tells where it mapped it (MAPPED_PRIVATELY)
        return verdict.value if isinstance(verdict, rules.Rewrite) else args[3] & 0xFFFFFFFF

    @staticmethod
    def _answer(verdict) -> int:
        """A settled verdict as the call's result."""
        if isinstance(verdict, rules.Return):
            return verdict.value
        return -verdict.errno if isinstance(verdict, rules.Fail) else -errno.ENOSYS

    def _settled(self, tracee: Tracee, verdict):
        """``verdict`` with its messages said; a process the rules kill dies here (and
        so, its guest): what is left is Fail(ENOSYS)."""
        verdict, said, kill = rules.settle(verdict, self._unsupported_mode(tracee))
        for message in said:
            self.say(tracee, message)
        if kill:
            if tracee.away is not None:
                self._refuse_away(tracee)
            os.kill(tracee.pid, signal.SIGKILL)
            return rules.Fail(errno.ENOSYS)
        return verdict

    def _refuse_away(self, tracee: Tracee) -> None:
        """The rules kill a process for a call it made away: the guest gets no answer
        but its death, and home reads nothing more from it (its calls queued behind
        the refused one would otherwise be made before the kill lands here)."""
        away = tracee.away
        away.refused = True
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(away.sock)
        with contextlib.suppress(OSError):
            away.channel.send(encode_signal(signal.SIGKILL))

    def _away_special(self, tracee: Tracee, request: Request) -> int | None:
        """The result of an open of one of MOSIX's /proc/self files (None: not one)."""
        if request.nr not in (SYS_OPEN, SYS_OPENAT):
            return None
        path_index, flags_index = (0, 1) if request.nr == SYS_OPEN else (1, 2)
        path = dict(request.inputs).get(path_index, b"").rstrip(b"\0")
        name = procself.special_name(path)
        if name is None:
            return None
        flags, value = request.args[flags_index], request.args[flags_index + 1]
        if flags & ~rules.O_LARGEFILE not in rules.SPECIAL_OPEN_FLAGS:
            return None                        # as at home: a real open (which fails)
        if name.startswith("checkpoint"):
            return -errno.EOPNOTSUPP           # checkpoints are taken at home
        if name == "migrate" and flags & 3 == 1:
            return self._migrate_from_program(tracee, value & 0xFFFFFFFF)   # PENDING: answered when the move ends
        config = _configuration(self.etc) if self.etc is not None else None
        env = procself.Environment(
            whereami=lambda: migration.node_value(config, tracee.away.where), in_cluster=self.in_cluster,
            read_string=lambda addr: b"")
        result = procself.handle(tracee.state, name, flags, value, env)
        if flags & 3 == 0 and procself.named_by_argument(path, tracee.command):
            self.say(tracee, procself.misread_note(name, result))       # cat /proc/self/whereami
        return result

    def _die_like_guest(self, tracee: Tracee, sig: int) -> None:
        """A signal killed the process away: it dies of the same one here (the shell's
        handler for it goes first), which its parent and shell see."""
        away = tracee.away
        away.dying = sig
        if sig != signal.SIGKILL:
            inject.default_action(away.deputy.injector, sig, away.deputy.zeros(32))
        os.kill(tracee.pid, sig)
        ptrace.cont(tracee.pid)

    def _away_stop(self, tracee: Tracee, stop: ptrace.Stop) -> None:
        away = tracee.away
        deputy = away.deputy
        if away.dying is not None:
            ptrace.cont(tracee.pid, stop.sig if stop.kind == "signal" and stop.sig == away.dying else 0)
            return
        if away.stopping is not None and stop.kind == "signal" and stop.sig == away.stopping:
            ptrace.cont(tracee.pid, stop.sig)      # the stop the guest made: here too, for real
            return
        if stop.kind == "event" and stop.event == ptrace.EVENT_STOP and stop.group_stop:
            away.stopping, away.stopped = None, True
            ptrace.listen(tracee.pid)              # stopped (its parent sees it) until SIGCONT
            return
        if away.stopped and stop.kind == "event":
            # SIGCONT woke it (the signal itself shows at its next resume: not sent twice)
            away.stopped, away.continued = False, True
            self._away_send(tracee, encode_signal(signal.SIGCONT))
            return
        if stop.kind == "signal" and stop.sig == signal.SIGCONT:
            away.stopped = False
        if deputy.running is None:
            if stop.kind == "signal":
                deputy.injector.deferred.append(stop.sig)
                self._send_deferred(tracee)
            return                               # the shell waits, stopped, for the next call
        try:
            reply = deputy.on_stop(stop)
        except TraceError:
            return
        self._send_deferred(tracee)
        if reply is not None:
            self._away_reply(tracee, reply)

    def _send_deferred(self, tracee: Tracee) -> None:
        deferred = tracee.away.deputy.deferred
        for sig in deferred:
            if sig == signal.SIGCONT and tracee.away.continued:
                tracee.away.continued = False      # sent already, when it woke
                continue
            if sig == signal.SIGSTOP:
                sig = signal.SIGTSTP               # MOSIX processes never get SIGSTOP
            self._away_send(tracee, encode_signal(sig))
        deferred.clear()

    def _poll_away_signals(self) -> None:
        """A shell waiting between calls is stopped, so a signal sent to it stays
        pending: look for one now and then, and send it to the guest."""
        now = time.monotonic()
        for tracee in list(self.tracees.values()):
            away = tracee.away
            if away is None or away.deputy.running is not None or now < away.next_poll or away.stopped \
                    or away.stopping is not None:
                continue
            away.next_poll = now + migration.SIGNAL_POLL
            status = procfs.status_fields(tracee.pid)
            if int(status.get("SigPnd", "0"), 16) | int(status.get("ShdPnd", "0"), 16):
                try:
                    away.deputy.injector.call(SYS_GETPID)      # the signals stop it: kept in deferred
                except TraceError:
                    continue
                self._send_deferred(tracee)

    def _check_away_nodes(self) -> None:
        """The nodes our processes run on must be alive in the gossip view. One that
        seems dead: say so (the manual's words) and call the process home — if the
        link still works it comes, else it is lost after a grace period."""
        now = time.monotonic()
        if now < self._next_heartbeat_check:
            return
        self._next_heartbeat_check = now + migration.HEARTBEAT_CHECK
        for tracee in [t for t in self.tracees.values() if t.away is not None and t.away.lost_since is not None]:
            if now - tracee.away.lost_since > tracee.away.grace:
                self._given_up(tracee)               # the link stayed cut: the guest is lost
        away = [t for t in self.tracees.values() if t.away is not None and t.away.dying is None
                and t.away.lost_since is None]
        if not away or self.etc is None:
            return
        try:
            alive = {n["ip"]: n.get("alive") for n in Client(self.etc).call("view")["nodes"]}
        except (MosixError, KeyError, TypeError):
            return                                   # no mosd to ask: the link alone decides
        for tracee in away:
            where = tracee.away.where
            if alive.get(where, True):
                tracee.away.dead_since = None
            elif tracee.away.dead_since is None:
                tracee.away.dead_since = now
                self.say(tracee, migration.seems_dead(where))
                with contextlib.suppress(MoveRefused):
                    self.request_migration(tracee, MoveRequest(targets.HOME))
            elif now - tracee.away.dead_since > migration.DEAD_NODE_GRACE:
                self._lost(tracee)

    def _away_reply(self, tracee: Tracee, reply: Reply) -> None:
        """A call's reply to the guest (its data sent from where it is). A write begun
        here and ended by the deputy answers both parts (only the first, if the second
        failed or a signal interrupted it: as a write that waited half-way)."""
        done, tracee.away.written_first = tracee.away.written_first, 0
        if done:
            reply = Reply(done + reply.result if reply.result >= 0 else done)
        self._away_answer(tracee, reply)

    def _away_answer(self, tracee: Tracee, reply: Reply) -> None:
        """Every answer to a call of the guest goes here: counted and kept, so that a
        guest whose link broke before the answer came gets it again, once — the call
        is never made twice (a write is not made again)."""
        away = tracee.away
        away.replies += 1
        away.last_reply = reply
        if away.refused or away.lost_since is not None:
            return                                   # sent when the link is whole again
        try:
            away.channel.send_parts(reply_parts(reply))
        except OSError:
            self._lost(tracee)

    def _away_send(self, tracee: Tracee, frame: bytes) -> None:
        if tracee.away.refused:
            return
        if tracee.away.lost_since is not None:
            tracee.away.held.append(frame)           # sent when the link is whole again
            return
        try:
            tracee.away.channel.send(frame)
        except OSError:
            self._lost(tracee)
            if tracee.away is not None and tracee.away.lost_since is not None:
                tracee.away.held.append(frame)

    def _link_grace(self) -> float:
        """mosd.conf's link_grace, in seconds."""
        return self._settings().link_grace

    def _lost(self, tracee: Tracee) -> None:
        """The link to the guest broke. The guest is frozen where it is, waiting; home
        makes the link again through the node's mosd (a thread tries until the grace
        period ends) and the process goes on as if nothing happened. Only a process
        that cannot wait (no grace, dying) is given up at once."""
        away = tracee.away
        if away is None or away.lost_since is not None:
            return
        if not away.grace or not away.token or away.dying is not None or away.refused:
            self._given_up(tracee)
            return
        away.lost_since = time.monotonic()
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(away.sock)
        with contextlib.suppress(OSError):
            away.sock.close()
        move = tracee.move
        if move is not None and move.target.home:
            # the order may have been lost with the link: given again once it is whole
            if not any(b'"op":"home"' in frame for frame in away.held):
                self._away_send(tracee, encode_control({"op": "home"}))
        elif move is not None and move.phase is not Phase.HANDSHAKE:
            # a move on that was under way: asked again later (its way's handshake, still
            # going on, carries on: its order waits for the link)
            move.drop_channel()
            self._move_failed(tracee, move, migration.DID_NOT_COMPLETE, say=False)
        self._reattach_soon(tracee, away)

    def _reattach_soon(self, tracee: Tracee, away: migration.Away) -> None:
        """In a thread: ask our mosd, again and again until the grace period ends, to
        make the link to the guest host waiting on the node (the guest's token names
        it); then wait for its first word, and let the loop take over (_reattached)."""
        if away.reattaching:
            return
        away.reattaching = True
        pid, where, token = tracee.pid, away.where, away.token
        deadline = away.lost_since + away.grace

        def work() -> None:
            outcome: tuple[dict, Channel | None] = ({}, None)
            while time.monotonic() < deadline and away.lost_since is not None and tracee.away is away:
                try:
                    reply, sock = Client(self.etc).call_for_socket("reattach", pid=pid, to=where, token=token)
                except MosixError as err:
                    reply, sock = {"refused": str(err)}, None
                if sock is not None:
                    try:
                        keep_alive(sock)
                        sock.settimeout(REATTACH_HANDSHAKE)
                        channel = Channel(sock)
                        hello = channel.receive()
                        if isinstance(hello, dict) and hello.get("op") == "reattached":
                            outcome = (hello, channel)
                            break
                    except (ProtocolError, OSError):
                        pass
                    sock.close()
                elif reply.get("refused") == NO_SUCH_GUEST:
                    outcome = ({"gone": True}, None)     # the node lives, the guest does not
                    break
                time.sleep(REATTACH_EVERY)
            self._later(lambda: self._reattached(tracee, away, *outcome))
        threading.Thread(target=work, name=f"reattach-{pid}", daemon=True).start()

    def _reattached(self, tracee: Tracee, away: migration.Away, hello: dict, channel: Channel | None) -> None:
        """The link to the guest is whole again (``channel``), or cannot be: the guest
        says how many answers it has had; it gets the one it missed, if it missed one,
        and what was held for it, and goes on."""
        away.reattaching = False
        if tracee.away is not away or away.lost_since is None:
            if channel is not None:
                channel.sock.close()
            return
        if channel is None:
            if hello.get("gone"):
                self._given_up(tracee)
            return                                   # the grace period ends it (_check_away_nodes)
        replies = hello.get("replies")
        if not isinstance(replies, int) or replies not in (away.replies, away.replies - 1):
            channel.sock.close()
            self._given_up(tracee)                   # the two ends disagree: nothing can be trusted
            return
        try:
            channel.send(encode_control({"op": "resumed", "requests": away.requests}))
            for frame in away.held:
                channel.send(frame)
            if replies < away.replies:
                channel.send_parts(reply_parts(away.last_reply))
            channel.sock.settimeout(None)
        except OSError:
            channel.sock.close()
            self._reattach_soon(tracee, away)
            return
        away.held = []
        away.sock, away.channel, away.lost_since = channel.sock, channel, None
        self.selector.register(away.sock, selectors.EVENT_READ, lambda: self._away_readable(tracee))

    def _given_up(self, tracee: Tracee) -> None:
        """The guest is lost for good (its node died, or the link stayed cut past the
        grace period). A process with a checkpoint is recovered from its last one, here
        in its own body; MOSIX kills it ("Lost communication with {computer}")."""
        away = tracee.away
        if away is None:
            return
        where = away.where
        move, tracee.move = tracee.move, None
        if move is not None:
            move.drop_channel()
            move.fail(migration.lost_communication(where))
        last = tracee.plan.last if tracee.plan is not None else None
        if last is not None and away.deputy.running is None and away.dying is None and not away.refused:
            self._drop_away(tracee)
            try:
                with self._unpinned():
                    deferred, tracee.converted = checkpoints.recover_into(tracee.pid, last[1],
                                                                         away.deputy.injector.address)
            except (MosixError, OSError) as err:
                self.say(tracee, f"recovering from checkpoint {last[0]} failed: {err}")
                self.say(tracee, migration.lost_communication(where))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(tracee.pid, signal.SIGKILL)
                return
            self.say(tracee, migration.recovered_after(last[0], where))
            self._send("update", pid=tracee.pid, where="here")
            self._resume(tracee)
            checkpoints.resend(tracee.pid, deferred + away.deputy.deferred)
            return
        self.say(tracee, migration.lost_communication(where))
        self._drop_away(tracee)
        try:
            os.kill(tracee.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _drop_away(self, tracee: Tracee) -> None:
        away, tracee.away = tracee.away, None
        try:
            self.selector.unregister(away.sock)
        except (KeyError, ValueError):
            pass
        away.close()
        try:
            if away.affinity is not None:
                cpus.pin(tracee.pid, away.affinity)      # home again: wherever the kernel likes
            if self._own_affinity is not None and all(t.away is None for t in self.tracees.values()):
                cpus.pin(0, self._own_affinity)
                self._own_affinity = None
        except TraceError:
            pass

    @contextlib.contextmanager
    def _unpinned(self):
        """While an image is written or read (its threads are made now, with our
        affinity), every CPU is ours again; pinned back after."""
        pinned = self._own_affinity is not None
        try:
            if pinned:
                cpus.pin(0, self._own_affinity)
        except TraceError:
            pinned = False
        try:
            yield
        finally:
            try:
                if pinned:
                    cpus.pin(0, self._pinned_to)
            except TraceError:
                pass

    def _pin_shell(self, tracee: Tracee) -> None:
        """While away, the shell runs the process's calls: it and this supervisor stay
        on one CPU (the supervisor's), where a stop wakes its tracer cheaply."""
        try:
            if self._own_affinity is None:
                self._own_affinity = cpus.allowed()
                self._pinned_to = cpus.current()
                cpus.pin(0, self._pinned_to)
            tracee.away.affinity = cpus.allowed(tracee.pid)
            cpus.pin(tracee.pid, self._pinned_to)
        except TraceError:
            pass

    def _away_ended(self, tracee: Tracee) -> None:
        """The process ended at home (its exit, or a signal): the guest gets its last
        answer and goes."""
        try:
            if tracee.away.lost_since is not None:
                pass                                 # the guest host gives it up after the grace period
            elif tracee.away.dying is not None:
                tracee.away.channel.send(encode_control({"op": "gone"}))
            else:
                tracee.away.channel.send(encode_reply(Reply(0)))
        except OSError:
            pass
        self._drop_away(tracee)

    def _coming_home(self, tracee: Tracee, message: dict) -> None:
        """The guest sends the process's image back: rebuild it in its shell (the move
        home ends), or pass it on (:meth:`_move_on`). It comes by itself to fork or
        exec (``for``): made here; a new program then goes back, and a move on that was
        under way starts again from here."""
        away, pid = tracee.away, tracee.pid
        coming_for = message.get("for")
        move, again = tracee.move, None
        if move is not None and not move.target.home:
            if move.phase is Phase.STOPPED and coming_for in (None, "home"):
                self._move_on(tracee, move)
                return
            move.drop_channel()                      # it came for a fork or exec: made here first
            tracee.move, again, move = None, move, None
        if move is not None:
            move.to(Phase.SENT)
        self._send("update", pid=pid, where="starting")
        try:
            reader = ImageReader(away.sock.makefile("rb", buffering=0), streaming=True)
            with self._unpinned():
                deferred = moving.come_home(pid, reader, away.deputy.injector.address)
        except ThawFailed as err:
            self._not_home(tracee, err)
            return
        except (MosixError, OSError):
            self._given_up(tracee)                   # the image broke off: its shell is half rebuilt
            return
        try:
            sent = away.channel.receive()
            away.channel.send(encode_control({"op": "arrived"}))
        except (ProtocolError, OSError):
            sent = {}
        self._drop_away(tracee)
        sent = sent if isinstance(sent, dict) else {}
        deferred += list(sent.get("signals", []))
        self._stay_ended(tracee, away, sent, "here")
        if coming_for in ("execve", "execveat"):
            back = targets.MoveTarget(away.where, IPv4Address(away.where))
            tracee.start_at = MoveRequest(back, starting=True, force=True)
        if move is not None:
            tracee.move = None
            move.confirm()
        self._resume(tracee)
        checkpoints.resend(pid, deferred + away.deputy.deferred)
        self._signal_migrated(tracee)
        if again is not None:
            self._start_again(tracee, again)

    def _start_again(self, tracee: Tracee, move: Move) -> None:
        """``move`` (on, from a node) starts again from home: whoever waits for it waits
        for the new one."""
        try:
            new = self.request_migration(tracee, move.request)
        except MoveRefused as err:
            move.fail(str(err))
            return
        if new is None:
            move.confirm()
        else:
            new.waiters.extend(move.waiters)
            move.waiters.clear()
            move.fail("started again from home")

    def _move_on(self, tracee: Tracee, move: Move) -> None:
        """The guest sends its image for the next node: pass it on as it comes (it is
        never restored here). Once the next node has it, that guest runs and this one
        goes; if the next node fails, this one runs on where it is."""
        away, pid = tracee.away, tracee.pid
        move.to(Phase.SENT)
        onward = move.channel
        self._send("update", pid=pid, where="leaving")
        try:
            with self._unpinned():
                _, failed = stream.relay(away.sock.recv_into, onward.sock.sendall)
            sent = away.channel.receive()
        except (MosixError, OSError):
            move.drop_channel()
            self._move_failed(tracee, move, migration.DID_NOT_COMPLETE, say=False)
            self._lost(tracee)                       # its image broke off: the link with it
            return
        sent = sent if isinstance(sent, dict) else {}
        answer = None
        if failed is None:
            try:
                answer = onward.receive()
                if isinstance(answer, dict) and answer.get("op") == "restored":
                    onward.sock.settimeout(None)
                    token = secrets.token_hex(16)
                    onward.send(encode_control({"op": "go", "signals": sent.get("signals", []),
                                                "token": token, "grace": away.grace}))
            except (ProtocolError, OSError) as err:
                failed = err
        if failed is not None or not (isinstance(answer, dict) and answer.get("op") == "restored"):
            move.drop_channel()
            self._send("update", pid=pid, where=away.where)
            self._away_send(tracee, encode_control({"op": "stay"}))
            self._move_failed(tracee, move, migration.DID_NOT_COMPLETE)
            return
        try:
            away.channel.send(encode_control({"op": "arrived"}))
        except OSError:
            pass                                     # it goes there anyway: its guest is elsewhere now
        self.selector.unregister(away.sock)
        try:
            away.sock.close()
        except OSError:
            pass
        self._stay_ended(tracee, away, sent, move.where)
        away.where, away.sock, away.channel, away.compress = move.where, onward.sock, onward, move.compress
        away.utime, away.dead_since = 0.0, None
        away.token, away.requests, away.replies, away.last_reply = token, 0, 0, None   # a new guest host
        tracee.move = None
        move.confirm()
        self.selector.register(away.sock, selectors.EVENT_READ, lambda: self._away_readable(tracee))
        self._signal_migrated(tracee)

    def _stay_ended(self, tracee: Tracee, away: migration.Away, sent: dict, where: str) -> None:
        """A stay away ended, the process now ``where`` ("here" or the next node): the
        CPU time it used there (as the guest's ``sent`` says, else its last report)
        and the migration counted."""
        trip = sent.get("utime")
        tracee.remote_utime += float(trip) if isinstance(trip, (int, float)) and trip >= 0 else away.utime
        tracee.state.nmigs += 1
        self._send("update", pid=tracee.pid, where=where, nmigs=tracee.state.nmigs,
                   remote_utime=round(tracee.remote_utime, 2))

    def _not_home(self, tracee: Tracee, err: ThawFailed) -> None:
        """Coming home failed: the process runs on where it was, if it can."""
        away = tracee.away
        if err.shell is None:
            self.say(tracee, f"failed migrating home: {err.reason}")
            self._given_up(tracee)
            return
        away.deputy = Deputy(tracee.pid, err.shell)
        try:
            away.channel.receive()                  # the "sent" that follows the image
            away.channel.send(encode_control({"op": "stay"}))
        except (ProtocolError, OSError):
            self._lost(tracee)
            return
        away.deputy = Deputy(tracee.pid, err.shell)
        move = tracee.move
        if move is not None and move.target.home:
            self._move_failed(tracee, move, err.reason)
        else:
            self.say(tracee, migration.failed_migrating("home", err.reason))

    # -- mosmigrate ----------------------------------------------------------------------------------
    def _accept(self) -> None:
        """A new client. This loop also serves the calls forwarded from away, so no client may
        hold it: a user who may affect none of our processes is cut off before a byte is read,
        and the others' requests are read only as their bytes arrive."""
        for _ in range(control.MAX_PENDING * 4):   # the whole backlog: strangers must not fill it
            try:
                conn, _ = self.control.accept()
            except OSError:
                return
            try:
                uid = control.peer_uid(conn)
            except OSError:
                uid = None
            if uid is not None and self._may_ask(uid):
                self._arriving(conn, uid)
            else:
                conn.close()

    def _arriving(self, conn, uid: int) -> None:
        """Read ``conn``'s request as it comes; the late and the surplus ones are dropped."""
        conn.setblocking(False)
        now = time.monotonic()
        for incoming in [i for i in self._incoming if i.late(now)]:
            self._answer_control(incoming, {"error": "bad request: not sent in time"})
        if len(self._incoming) >= control.MAX_PENDING:
            self._answer_control(self._incoming[0], {"error": "bad request: too many at once"})
        incoming = control.Incoming(conn, uid, now + control.REQUEST_WITHIN)
        self._incoming.append(incoming)
        self.selector.register(conn, selectors.EVENT_READ, lambda: self._control_arrives(incoming))

    def _may_ask(self, uid: int) -> bool:
        return (uid == 0 or uid in os.getresuid()
                or any(control.may_affect(uid, t.pid) for t in self.tracees.values() if not t.native))

    def _control_arrives(self, incoming: control.Incoming) -> None:
        try:
            req = incoming.read()
            if req is None:
                if not incoming.late(time.monotonic()):
                    return
                raise ValueError("not sent in time")
            reply = self._control_request(req, incoming.uid)
        except (OSError, ValueError) as err:
            reply = {"error": f"bad request: {err}"}
        if isinstance(reply, Move):
            self._answer_when_over(incoming, reply)
        else:
            self._answer_control(incoming, reply)

    def _answer_when_over(self, incoming: control.Incoming, move: Move) -> None:
        """The request is whole: no longer "arriving" (nor late); its answer is the
        move's outcome."""
        self._incoming.remove(incoming)
        self.selector.unregister(incoming.conn)

        def answer(over: Move) -> None:
            with incoming.conn:
                control.answer(incoming.conn, {"ok": True} if over.failure is None else {"error": over.failure})
        move.wait(answer)

    def _answer_control(self, incoming: control.Incoming, reply: dict) -> None:
        self._incoming.remove(incoming)
        self.selector.unregister(incoming.conn)
        with incoming.conn:
            control.answer(incoming.conn, reply)

    def _control_request(self, req: dict, uid: int) -> dict | Move:
        pid, op = req.get("pid"), req.get("op")
        tracee = next((t for t in self.tracees.values() if pid in (t.pid, t.virtual_pid)), None)
        if tracee is None or tracee.native:
            return {"error": "not a MOSIX process"}
        if not control.may_affect(uid, tracee.pid):
            return {"error": "Operation not permitted"}
        try:
            if op in MOSMIGRATE_CHECKPOINTS:
                self.request_checkpoint(tracee, MOSMIGRATE_CHECKPOINTS[op])
            elif op == "freeze":
                how = req.get("how", "M")
                if how not in freezing.FREEZE_KINDS or (how != "M" and uid != 0):
                    return {"error": f"bad freezing kind {how!r}"}
                return self.request_freeze(tracee, how)
            elif op == "continue":
                return self.request_unfreeze(tracee, automatic=req.get("how") in ("A", "P"))
            elif op == "home" or (op == "migrate" and isinstance(req.get("to"), str)):
                return self._control_move(tracee, req)
            else:
                return {"error": f"'{op}' is not supported by this MOSIX yet"}
        except TraceError as err:
            return {"error": str(err)}
        return {"ok": True}

    def _control_move(self, tracee: Tracee, req: dict):
        """mosmigrate {pid} {node | home}: the move begun, and with ``wait`` (mosmigrate
        waits for the outcome) the move itself, answered when it is over."""
        try:
            target = targets.HOME if req["op"] == "home" else targets.resolve(_configuration(self.etc), req["to"])
            move = self.request_migration(tracee, MoveRequest(target))
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
                tracee.pending_exec = None
                return 0
            explicit = mosopts.from_json(request["options"])
            merged = mosopts.inherit(options_of(tracee.state), explicit)
            state = initial_state(merged)
            state.nmigs = tracee.state.nmigs
            state.strict = tracee.state.strict    # the site's, whatever the program sends
            if request.get("now"):
                tracee.state = state          # a nested -S queue driver: its children inherit
                self._send("update", pid=tracee.pid, options=flag_summary(state))
            else:
                tracee.pending_exec = state
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
        self._send("register", pid=tracee.pid, command=tracee.command, options=flag_summary(tracee.state),
                   freezable=bool(tracee.state.freezable))

    def _send(self, op: str, **args) -> None:
        if self.session is None:
            return
        try:
            self.session.send(op, **args)
        except (DaemonUnavailable, OSError):
            self.session = None


class _Counted:
    """A channel as a large write made as it comes reads it, counting what it took."""

    def __init__(self, source: Channel) -> None:
        self.source = source
        self.taken = 0

    def receive_into(self, view: memoryview) -> int:
        count = self.source.receive_into(view)
        self.taken += count
        return count


def _command_line(pid: int) -> str:
    line = procfs.command_line(pid)
    return "?" if line is None else line


MOSIX_TOOLS = frozenset({"mosrun", "mosenv", "mosnative"})


def _is_mosix_tool(command: str) -> bool:
    words = command.split()[:2]
    return any(os.path.basename(word) in MOSIX_TOOLS for word in words)


def _program_name(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return "program"


def elf_class(path: str) -> int | None:
    """1 for a 32-bit ELF file, 2 for 64-bit, None if it is not ELF (a script...)."""
    try:
        with open(path, "rb") as f:
            head = f.read(5)
    except OSError:
        return None
    if head[:4] != b"\x7fELF":
        return None
    return head[4]


def _is_32bit(pid: int) -> bool:
    return elf_class(f"/proc/{pid}/exe") == 1


def node_in_cluster(etc) -> Callable[[int], bool]:
    """``in_cluster`` for the node whose configuration is in ``etc``: a node number or
    host-order IP. The configuration is read when a program first asks (rarely), not
    while the program waits to start."""
    loaded: list = []

    def check(value: int) -> bool:
        if not loaded:
            loaded.append(_configuration(etc))
        config = loaded[0]
        if config is None:
            return False
        from ipaddress import IPv4Address

        try:
            if value <= 65535:
                ip = config.resolve_node(str(value))
            else:
                ip = IPv4Address(value)
            return bool(config.cluster.contains(ip))
        except (MosixError, ValueError):
            return False
    return check


def _configuration(etc):
    """The node's MOSIX configuration; None where there is none (or it does not load)."""
    from mosix_core.config import load_config_if_present

    try:
        return load_config_if_present(etc)
    except MosixError:
        return None

