"""The home side of a process running away: its calls, signals and job control.

What stays home is the process itself made a shell (see
:mod:`mosix_core.remote.deputy`); the guest sends its calls here, judged by home's
rules as at home and made by the deputy (or on borrowed descriptors, see
:mod:`mosix_core.remote.shortcut`); signals that reach the shell go to the guest, and
what happens to the guest (a stop, a fatal signal) happens to the shell too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import time

from mosix_core.daemon import protocol as p
from mosix_core.errors import ProtocolError, TraceError
from mosix_core.linux import inject, procfs, ptrace
from mosix_core.linux.syscall_names import NUMBERS
from mosix_core.mosrun import migration, procself, rules
from mosix_core.mosrun.tracee import PENDING, Tracee, configuration
from mosix_core.remote.calls import MAPPED_PRIVATELY, RUN_WHERE_IT_IS, Reply, Request, forwardable, unforwardable_error
from mosix_core.remote.frames import Channel, Poured, encode_signal, reply_parts
from mosix_core.remote.shortcut import WrittenInPart

SYS_OPEN, SYS_OPENAT, SYS_MMAP = NUMBERS["open"], NUMBERS["openat"], NUMBERS["mmap"]
SYS_GETPID = NUMBERS["getpid"]
STOPS = (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGSTOP)
FORWARD_BURST = 64  # calls served one after another before the loop's other work


class HomeSide:
    """The home side of the supervisor's processes away (``sup``: the supervisor; each one's
    state is ``tracee.away``)."""

    def __init__(self, sup) -> None:
        self.sup = sup
        self._pouring: tuple[Tracee, _Counted] | None = None  # a large write being made as it comes

    def away_readable(self, tracee: Tracee) -> None:
        """Frames from the guest. After a call answered at once, the next one is waited
        for a little, spinning: a busy program's next call comes within tens of µs, and
        a CPU that went idle costs more than that to wake (mosd.conf forward_spin_us).
        At most FORWARD_BURST calls so before the loop's other work."""
        spin = self._forward_spin()
        for _ in range(FORWARD_BURST):
            self._away_message(tracee)
            away = tracee.away
            if (
                away is None
                or away.lost_since is not None
                or away.deputy.running is not None
                or not spin
                or not away.channel.readable_within(spin)
            ):
                return

    def _forward_spin(self) -> float:
        """mosd.conf's forward_spin_us, in seconds."""
        return self.sup.settings().forward_spin_us / 1e6

    def _away_message(self, tracee: Tracee) -> None:
        away = tracee.away
        if away is None or away.refused:
            return
        self._pouring = None
        try:
            message = away.channel.receive(pour=lambda *call: self._away_pour(tracee, *call))
        except (ProtocolError, OSError):
            self._cut_in_pour(tracee)
            self.sup.link.lost(tracee)
            return
        if isinstance(message, (Poured, Request)):
            away.requests += 1
        if isinstance(message, Poured):
            self._away_reply(tracee, message.reply)
        elif isinstance(message, Request):
            self._away_call(tracee, message)
        elif isinstance(message, dict) and message.get("op") == "image":
            self.sup.mover.coming_home(tracee, message)
        elif isinstance(message, dict) and message.get("op") == "killed" and isinstance(message.get("signal"), int):
            self._die_like_guest(tracee, message["signal"])
        elif isinstance(message, dict) and message.get("op") == "times":
            self._away_times(tracee, message.get("utime"))
        elif isinstance(message, dict) and message.get("op") == "stopped" and message.get("signal") in STOPS:
            self._away_stopped(tracee, message["signal"])
        else:
            self.sup.link.lost(tracee)

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
            ptrace.syscall(tracee.pid)  # from its idle stop to the signal's stop
        except (TraceError, OSError):
            away.stopping = None

    def _away_times(self, tracee: Tracee, utime) -> None:
        """The guest's CPU time on its node so far: mostimeof adds it to the time here."""
        if isinstance(utime, (int, float)) and utime >= 0:
            tracee.away.utime = float(utime)
            self.sup.tell(
                p.UpdateRequest(
                    pid=tracee.pid, changes=p.RowChanges(remote_utime=round(tracee.remote_utime + utime, 2))
                )
            )

    def _away_call(self, tracee: Tracee, request: Request) -> None:
        if request.nr == MAPPED_PRIVATELY:
            # where the guest mapped a read-only MAP_SHARED privately (see _away_mapping)
            if len(request.args) == 2 and all(isinstance(v, int) for v in request.args):
                tracee.program.converted.append((request.args[0], request.args[0] + request.args[1]))
            self.away_answer(tracee, Reply(0))
            return
        context = self.sup.call_context(tracee)
        verdict = rules.home_verdict(request.nr, request.args, context)
        if request.nr == SYS_MMAP:
            special = self._away_mapping(tracee, request, verdict)
        elif rules.refuses(verdict):
            settled = self._settled(tracee, verdict)
            if isinstance(settled, rules.Answer):
                self.away_answer(tracee, Reply(settled.value, settled.writes))
                return
            special = self._answer(settled)
        elif request.nr in RUN_WHERE_IT_IS:
            special = 0  # home's rules allow it: the guest makes it
        elif not forwardable(request):
            special = -unforwardable_error(request.nr)  # home allows it, but cannot make it for the guest
        else:
            special = self._away_special(tracee, request)
            if special is PENDING:
                return  # its move is under way: answered when it ends
        if special is not None:
            self.away_answer(tracee, Reply(special))
            return
        reply = tracee.away.shortcuts.answer(request) if tracee.away.shortcuts is not None else None
        if isinstance(reply, WrittenInPart):
            tracee.away.written_first, request = reply.done, reply.rest  # the deputy writes the rest
        elif reply is not None:
            self._away_reply(tracee, reply)
            return
        try:
            tracee.away.deputy.begin(request)
        except TraceError:
            pass  # it ended: _gone answers the guest

    def _away_pour(self, tracee: Tracee, request: Request, index: int, size: int, source: Channel) -> Reply | None:
        """A large write made as its data comes (Shortcuts.pour), when it is one that
        would go straight to the shortcuts: one home lets run untouched."""
        shortcuts = tracee.away.shortcuts
        if shortcuts is None:
            return None
        if rules.home_verdict(request.nr, request.args, self.sup.call_context(tracee)) is not None:
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
            self.away_answer(tracee, Reply(pouring[1].taken))

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
            return verdict.flags  # the guest tells where it mapped it (MAPPED_PRIVATELY)
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
        verdict, said, kill = rules.settle(verdict, self.sup.unsupported_mode(tracee))
        for message in said:
            self.sup.say(tracee, message)
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
            self.sup.selector.unregister(away.sock)
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
            return None  # as at home: a real open (which fails)
        if name.startswith("checkpoint"):
            return -errno.EOPNOTSUPP  # checkpoints are taken at home
        if name == "migrate" and flags & 3 == 1:
            # PENDING: answered when the move ends
            return self.sup.mover.migrate_from_program(tracee, value & 0xFFFFFFFF)
        config = configuration(self.sup.etc) if self.sup.etc is not None else None
        env = procself.Environment(
            whereami=lambda: migration.node_value(config, tracee.away.where),
            in_cluster=self.sup.in_cluster,
            read_string=lambda addr: b"",
        )
        result = procself.handle(tracee.state, name, flags, value, env)
        if flags & 3 == 0 and procself.named_by_argument(path, tracee.command):
            self.sup.say(tracee, procself.misread_note(name, result))  # cat /proc/self/whereami
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

    def away_stop(self, tracee: Tracee, stop: ptrace.Stop) -> None:
        away = tracee.away
        deputy = away.deputy
        if away.dying is not None:
            ptrace.cont(tracee.pid, stop.sig if stop.kind == "signal" and stop.sig == away.dying else 0)
            return
        if away.stopping is not None and stop.kind == "signal" and stop.sig == away.stopping:
            ptrace.cont(tracee.pid, stop.sig)  # the stop the guest made: here too, for real
            return
        if stop.kind == "event" and stop.event == ptrace.EVENT_STOP and stop.group_stop:
            away.stopping, away.stopped = None, True
            ptrace.listen(tracee.pid)  # stopped (its parent sees it) until SIGCONT
            return
        if away.stopped and stop.kind == "event":
            # SIGCONT woke it (the signal itself shows at its next resume: not sent twice)
            away.stopped, away.continued = False, True
            self.away_send(tracee, encode_signal(signal.SIGCONT))
            return
        if stop.kind == "signal" and stop.sig == signal.SIGCONT:
            away.stopped = False
        if deputy.running is None:
            if stop.kind == "signal":
                deputy.injector.deferred.append(stop.sig)
                self._send_deferred(tracee)
            return  # the shell waits, stopped, for the next call
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
                tracee.away.continued = False  # sent already, when it woke
                continue
            if sig == signal.SIGSTOP:
                sig = signal.SIGTSTP  # MOSIX processes never get SIGSTOP
            self.away_send(tracee, encode_signal(sig))
        deferred.clear()

    def poll_away_signals(self) -> None:
        """A shell waiting between calls is stopped, so a signal sent to it stays
        pending: look for one now and then, and send it to the guest."""
        now = time.monotonic()
        for tracee in list(self.sup.tracees.values()):
            away = tracee.away
            if (
                away is None
                or away.deputy.running is not None
                or now < away.next_poll
                or away.stopped
                or away.stopping is not None
            ):
                continue
            away.next_poll = now + migration.SIGNAL_POLL
            status = procfs.status_fields(tracee.pid)
            if int(status.get("SigPnd", "0"), 16) | int(status.get("ShdPnd", "0"), 16):
                try:
                    away.deputy.injector.call(SYS_GETPID)  # the signals stop it: kept in deferred
                except TraceError:
                    continue
                self._send_deferred(tracee)

    def _away_reply(self, tracee: Tracee, reply: Reply) -> None:
        """A call's reply to the guest (its data sent from where it is). A write begun
        here and ended by the deputy answers both parts (only the first, if the second
        failed or a signal interrupted it: as a write that waited half-way)."""
        done, tracee.away.written_first = tracee.away.written_first, 0
        if done:
            reply = Reply(done + reply.result if reply.result >= 0 else done)
        self.away_answer(tracee, reply)

    def away_answer(self, tracee: Tracee, reply: Reply) -> None:
        """Every answer to a call of the guest goes here: counted and kept, so that a
        guest whose link broke before the answer came gets it again, once — the call
        is never made twice (a write is not made again)."""
        away = tracee.away
        away.replies += 1
        away.last_reply = reply
        if away.refused or away.lost_since is not None:
            return  # sent when the link is whole again
        try:
            away.channel.send_parts(reply_parts(reply))
        except OSError:
            self.sup.link.lost(tracee)

    def away_send(self, tracee: Tracee, frame: bytes) -> None:
        if tracee.away.refused:
            return
        if tracee.away.lost_since is not None:
            tracee.away.held.append(frame)  # sent when the link is whole again
            return
        try:
            tracee.away.channel.send(frame)
        except OSError:
            self.sup.link.lost(tracee)
            if tracee.away is not None and tracee.away.lost_since is not None:
                tracee.away.held.append(frame)


class _Counted:
    """A channel as a large write made as it comes reads it, counting what it took."""

    def __init__(self, source: Channel) -> None:
        self.source = source
        self.taken = 0

    def receive_into(self, view: memoryview) -> int:
        count = self.source.receive_into(view)
        self.taken += count
        return count
