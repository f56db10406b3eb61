"""The supervisor's moves: from home to a node, on from node to node (the image
passes through home, never restored there), and back home.

Each is a :class:`~mosix_core.mosrun.move.Move`, driven here through its phases: the
way opened (mosd's handshake, in a thread, while the process runs on), its memory sent
ahead if it is large, the process stopped and sent, the target's confirmation — or the
failure, said where it is known and given to whoever waits (mosmigrate, or the
program's own ``/proc/self/migrate``).
"""

from __future__ import annotations

import errno
import secrets
import selectors
import threading
from collections.abc import Callable
from ipaddress import IPv4Address

from mosix_core.daemon import protocol as p
from mosix_core.daemon.client import Client
from mosix_core.errors import MosixError, ProtocolError, Refused, TraceError
from mosix_core.image import capture, stream
from mosix_core.image.freeze import ThawFailed
from mosix_core.image.stream import ImageReader, ImageWriter
from mosix_core.linux import inject, ptrace
from mosix_core.mosrun import checkpoints, migration, targets
from mosix_core.mosrun.move import Move, MoveRefused, MoveRequest, Phase
from mosix_core.mosrun.tracee import PENDING, Tracee, configuration
from mosix_core.remote import clocks, moving
from mosix_core.remote.calls import Reply
from mosix_core.remote.deputy import Deputy
from mosix_core.remote.frames import Channel, encode_control, encode_signal
from mosix_core.remote.link import keep_alive
from mosix_core.remote.shortcut import Shortcuts


class Mover:
    """The supervisor's moves (``sup``: the supervisor; the move under way is ``tracee.move``)."""

    def __init__(self, sup) -> None:
        self.sup = sup

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
        if self.sup.etc is None:
            raise MoveRefused("MOSIX is not running on this node")
        to, away, current = request.target, tracee.away, tracee.move
        if away is not None:
            if current is not None and to.home and not current.target.home and current.phase is Phase.HANDSHAKE:
                # home, while the way on is still being opened: the way on is dropped
                self.move_failed(tracee, current, "called home instead", say=False)
                current = None
            if current is not None:
                return current  # on its way already
            if to.home:
                move = tracee.move = Move(request, origin=away.where)
                move.to(Phase.STOPPED)
                self._send_order(tracee, move, {"op": "home"})
                return move
            if to.text == away.where:
                return None  # there already
            move = tracee.move = Move(request, origin=away.where)
            self._open_way_then(tracee, move, lambda: self._onward_way_open(tracee, move))
            return move
        if to.home or tracee.freezing.frozen is not None:
            return None  # at home already (a frozen process stays)
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

    def _open_way_then(self, tracee: Tracee, move: Move, then: Callable[[], None]) -> None:
        """:meth:`_handshake` in a thread; ``then()`` in the loop after, if the move is
        still the process's."""
        move.to(Phase.HANDSHAKE)

        def work() -> None:
            reply, channel = self._handshake(tracee, move)

            def opened() -> None:
                if tracee.move is not move or move.over:
                    if channel is not None:
                        channel.sock.close()  # it ended, came home or went elsewhere meanwhile
                    return
                move.reply, move.channel = reply, channel
                then()

            self.sup.later(opened)

        threading.Thread(target=work, name=f"way-{tracee.pid}-{move.target.text}", daemon=True).start()

    def _handshake(self, tracee: Tracee, move: Move) -> tuple[dict, Channel | None]:
        """Our mosd's handshake with the move's target (from ``move.origin``, where the
        process is), then the clock comparison with the guest host there: (mosd's reply,
        the channel to that guest host — None when refused, and the reply says why)."""
        try:
            request = p.MigrateOutRequest(
                pid=tracee.pid,
                to=move.target.text,
                memory_mb=tracee.state.needmem,
                command=tracee.command,
                nmigs=tracee.state.nmigs,
                now_at=move.origin,
                automatic=move.request.automatic,
            )
            answer, sock = Client(self.sup.etc).request_for_socket(request)
        except Refused as err:
            return {**err.details, "refused": str(err)}, None  # why, and the node that refused
        except (MosixError, ValueError) as err:
            return {"refused": str(err)}, None
        reply = p.encode(answer)  # the move keeps it: the target as mosd resolved it
        try:
            keep_alive(sock)
            sock.settimeout(migration.RESTORE_TIMEOUT)
            channel = Channel(sock)
            clocks.answer_home_side(
                lambda message: channel.send(encode_control(message)),
                channel.receive,
                local_time=bool(tracee.state.local_time),
            )
        except (MosixError, OSError):
            sock.close()
            return {**reply, "refused": migration.DID_NOT_COMPLETE}, None
        return reply, channel

    def _way_open(self, tracee: Tracee, move: Move) -> None:
        """The handshake of a move from home is over: the process is sent from its next
        clean stop (where a refusal is handled too: a start that fails ends the program
        there). The program's own request waits in its call, which ends now."""
        if not self._at_home(tracee):
            self.move_failed(tracee, move, "the process is frozen", say=False)
            return
        if move.request.by_program:
            self._program_way_open(tracee, move)
            return
        move.precopy_wanted = move.channel is not None and migration.worth_sending_ahead(tracee.pid)
        self._interrupt_for(tracee, move)

    def _interrupt_for(self, tracee: Tracee, move: Move) -> None:
        """Ask for the interrupt stop at which ``move`` goes on."""
        move.awaiting_stop = True
        try:
            ptrace.interrupt(tracee.pid)
        except TraceError:
            pass  # it has just ended: _gone ends the move

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
                self.move_failed(tracee, move, move.reply.get("refused", "no response"))
            inject.skip_call(pid, 0 if already else -errno.EAGAIN)
            self.sup.resume(tracee)
            return
        try:
            held = inject.end_call(pid, 0)  # a clean stop: the call's exit
        except TraceError:
            return  # it ended meanwhile: _gone ends the move
        self.migrate_now(tracee, held)

    def _at_home(self, tracee: Tracee) -> bool:
        """Still ours, at home and not frozen (nothing happened to it meanwhile)."""
        return self.sup.tracees.get(tracee.pid) is tracee and tracee.away is None and tracee.freezing.frozen is None

    def move_failed(self, tracee: Tracee, move: Move, reason: str, *, say: bool = True) -> None:
        """``move`` failed for ``reason``: the manual's message, said to the process
        (``say``) and given to whoever waits. A program away whose own request it was
        gets its answer: -1 (EAGAIN) now, or when it makes its call again (it was told
        to, so that the call is made where it arrives)."""
        message = migration.failed_migrating(move.where if not move.target.home else "home", reason)
        if say and not move.request.automatic:
            self.sup.say(tracee, message)
        if tracee.move is move:
            tracee.move = None
        if move.request.by_program and tracee.away is not None and not move.over:
            if move.call_made_again:
                tracee.away.program_move_failed = True
            else:
                self.sup.home.away_answer(tracee, Reply(-errno.EAGAIN))
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
        self.sup.tell(p.UpdateRequest(pid=pid, changes=p.RowChanges(where="leaving")))

        def work() -> None:
            try:
                outcome: object = moving.send_ahead(pid, writer, tracker)
            except (MosixError, OSError) as err:
                outcome = err
            self.sup.later(lambda: self._sent_ahead(tracee, move, writer, tracker, outcome))

        with self.sup.link.unpinned():
            threading.Thread(target=work, name=f"ahead-{pid}", daemon=True).start()
        self.sup.resume(tracee)
        return True

    def _sent_ahead(self, tracee: Tracee, move: Move, writer: ImageWriter, tracker, outcome: object) -> None:
        """The memory went ahead: stop the process for the rest (or, if it failed, it
        runs on here)."""
        gone = tracee.move is not move or not self._at_home(tracee)
        if gone or not isinstance(outcome, capture.Precopy):
            tracker.close()
            move.drop_channel()
            if not gone:
                self.sup.tell(p.UpdateRequest(pid=tracee.pid, changes=p.RowChanges(where="here")))
                self.move_failed(tracee, move, migration.DID_NOT_COMPLETE)
            return
        move.ahead = (writer, outcome)
        self._interrupt_for(tracee, move)

    def _onward_way_open(self, tracee: Tracee, move: Move) -> None:
        """The way on for a process away: it is asked for its image (which this side
        will pass on), or told the user why not."""
        if move.channel is None:
            if move.reply.get("refused") == "already there":
                tracee.move = None
                if move.request.by_program:
                    self.sup.home.away_answer(tracee, Reply(0))
                move.confirm()
            else:
                self.move_failed(tracee, move, move.reply.get("refused", "no response"))
            return
        move.to(Phase.STOPPED)
        self._send_order(tracee, move, {"op": "home", "compress": move.compress})

    def _send_order(self, tracee: Tracee, move: Move, order: dict) -> None:
        """Ask the guest for its image (home, or on through home). The program's own
        request, waiting in its call, is answered "made again": the guest makes it
        again where it arrives (or, if it stays, there — and learns the failure)."""
        self.sup.home.away_send(tracee, encode_control(order))
        if move.request.by_program and not move.call_made_again and tracee.away is not None:
            move.call_made_again = True
            self.sup.home.away_answer(tracee, Reply(-inject.ERESTARTNOINTR))
        if tracee.away is not None and tracee.away.deputy.running is not None:
            # a call that may block here (a read of a terminal...) ends as if
            # interrupted; the guest then makes it again — at home
            try:
                ptrace.interrupt(tracee.pid)
            except TraceError:
                pass

    def migrate_from_program(self, tracee: Tracee, value: int):
        """open("/proc/self/migrate", 1|O_CREAT, value): 0 home, -1 "consider" (the
        automatic decision, made elsewhere), else a node number or IP address. The
        call returns when the move is over (PENDING until then): 0 if it happened, -1
        if not (mosix(7))."""
        if value == 0xFFFFFFFF:
            self.sup.tell(p.ConsiderRequest(pid=tracee.pid))  # mosd's balancer decides now
            return 0
        try:
            target = targets.resolve(configuration(self.sup.etc), targets.proc_value_text(value))
        except targets.UnknownTarget as err:
            self.sup.say(tracee, str(err))
            return -errno.EINVAL
        away = tracee.away
        if away is not None and away.program_move_failed:
            away.program_move_failed = False  # the call made again after its move failed
            return -errno.EAGAIN
        try:
            move = self.request_migration(tracee, MoveRequest(target, by_program=True))
        except MoveRefused:
            return -errno.EAGAIN
        if move is None or not move.request.by_program or move.over:
            return 0  # there already, or someone else's move carries it
        return PENDING

    def migrate_now(self, tracee: Tracee, held: list[int] | tuple = ()) -> None:
        """Send the process where ``tracee.move`` goes, from a clean stop; it stays
        whole here until the target confirms, and runs on here if anything fails."""
        pid, move = tracee.pid, tracee.move
        move.awaiting_stop = False
        regs = inject.copy_registers(ptrace.get_regs(pid))
        if move.channel is None:
            if move.reply.get("refused") == "already there":
                tracee.move = None
                move.confirm()
                self.sup.resume(tracee)
            else:
                self.move_failed(tracee, move, move.reply.get("refused", "no response"))
                self._start_failed(tracee, move)
            checkpoints.resend(pid, list(held))
            return
        if move.precopy_wanted:
            move.precopy_wanted = False
            if self._send_ahead(tracee, move, regs):
                return  # it runs on while its memory goes
        move.to(Phase.STOPPED)
        (writer, ahead), move.ahead = move.ahead or (None, None), None
        channel, target = move.channel, move.where
        sock = channel.sock
        self.sup.tell(p.UpdateRequest(pid=pid, changes=p.RowChanges(where="leaving")))
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
            with self.sup.link.unpinned():
                shell, signals = moving.leave(
                    pid, writer, regs, {"pid": tracee.own_pid}, confirmed=restored, ahead=ahead
                )
            deferred += signals
            deputy = Deputy(pid, shell)
            # the guest keeps the signal mask; here every signal must show, to be sent on;
            # its timers went with it
            inject.unblock_every_signal(deputy.injector, deputy.zeros(8))
            inject.stop_interval_timers(deputy.injector, deputy.zeros(32))
            sock.settimeout(None)
            token, grace = secrets.token_hex(16), self.sup.link.link_grace()
            channel.send(encode_control({"op": "go", "signals": deferred, "token": token, "grace": grace}))
        except (MosixError, OSError) as err:
            if isinstance(err, moving.NotConfirmed):
                deferred += err.deferred
            move.drop_channel()
            self.sup.tell(p.UpdateRequest(pid=pid, changes=p.RowChanges(where="here")))
            if isinstance(err, TraceError) and err.errno == errno.ESRCH:
                return  # it ended: _gone ends the move
            self.move_failed(tracee, move, migration.DID_NOT_COMPLETE)
            inject.put_back(pid, regs)
            if move.request.by_program:
                inject.set_result(pid, -errno.EAGAIN)  # its /proc/self/migrate fails
            checkpoints.resend(pid, deferred)
            self._start_failed(tracee, move)
            return
        finally:
            if ahead is not None:
                ahead.close()  # its writes need no following any more
        tracee.away = migration.Away(target, sock, channel, deputy, compress=move.compress, token=token, grace=grace)
        tracee.move = None
        try:
            tracee.away.shortcuts = Shortcuts(pid, tracee.own_pid, lambda: self.sup.parent_pid(tracee))
        except OSError:
            pass  # every call goes through the deputy
        self.sup.link.pin_shell(tracee)
        self.sup.selector.register(sock, selectors.EVENT_READ, lambda: self.sup.home.away_readable(tracee))
        tracee.state.nmigs += 1
        self.sup.tell(p.UpdateRequest(pid=pid, changes=p.RowChanges(where=target, nmigs=tracee.state.nmigs)))
        move.confirm()
        self._signal_migrated(tracee)

    def _start_failed(self, tracee: Tracee, move: Move) -> None:
        """A move failed: the process runs on at home — unless it was to start
        elsewhere (mosrun -r/-{n}/-b) without -F, when it does not run at all."""
        if move.request.starting and not move.request.force:
            checkpoints.exit_now(tracee.pid, 1)
        self.sup.resume(tracee)

    def _signal_migrated(self, tracee: Tracee) -> None:
        """/proc/self/sigmig: the process asked for a signal after each migration."""
        if tracee.state.sigmig:
            if tracee.away is not None:
                self.sup.home.away_send(tracee, encode_signal(tracee.state.sigmig))
            else:
                checkpoints.resend(tracee.pid, [tracee.state.sigmig])

    def coming_home(self, tracee: Tracee, message: dict) -> None:
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
            move.drop_channel()  # it came for a fork or exec: made here first
            tracee.move, again, move = None, move, None
        if move is not None:
            move.to(Phase.SENT)
        self.sup.tell(p.UpdateRequest(pid=pid, changes=p.RowChanges(where="starting")))
        try:
            reader = ImageReader(away.sock.makefile("rb", buffering=0), streaming=True)
            with self.sup.link.unpinned():
                deferred = moving.come_home(pid, reader, away.deputy.injector.address)
        except ThawFailed as err:
            self._not_home(tracee, err)
            return
        except (MosixError, OSError):
            self.sup.link.given_up(tracee)  # the image broke off: its shell is half rebuilt
            return
        try:
            sent = away.channel.receive()
            away.channel.send(encode_control({"op": "arrived"}))
        except (ProtocolError, OSError):
            sent = {}
        self.sup.link.drop_away(tracee)
        sent = sent if isinstance(sent, dict) else {}
        deferred += list(sent.get("signals", []))
        self._stay_ended(tracee, away, sent, "here")
        if coming_for in ("execve", "execveat"):
            back = targets.MoveTarget(away.where, IPv4Address(away.where))
            tracee.start_at = MoveRequest(back, starting=True, force=True)
        if move is not None:
            tracee.move = None
            move.confirm()
        self.sup.resume(tracee)
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
        self.sup.tell(p.UpdateRequest(pid=pid, changes=p.RowChanges(where="leaving")))
        try:
            with self.sup.link.unpinned():
                _, failed = stream.relay(away.sock.recv_into, onward.sock.sendall)
            sent = away.channel.receive()
        except (MosixError, OSError):
            move.drop_channel()
            self.move_failed(tracee, move, migration.DID_NOT_COMPLETE, say=False)
            self.sup.link.lost(tracee)  # its image broke off: the link with it
            return
        sent = sent if isinstance(sent, dict) else {}
        answer = None
        if failed is None:
            try:
                answer = onward.receive()
                if isinstance(answer, dict) and answer.get("op") == "restored":
                    onward.sock.settimeout(None)
                    token = secrets.token_hex(16)
                    onward.send(
                        encode_control(
                            {"op": "go", "signals": sent.get("signals", []), "token": token, "grace": away.grace}
                        )
                    )
            except (ProtocolError, OSError) as err:
                failed = err
        if failed is not None or not (isinstance(answer, dict) and answer.get("op") == "restored"):
            move.drop_channel()
            self.sup.tell(p.UpdateRequest(pid=pid, changes=p.RowChanges(where=away.where)))
            self.sup.home.away_send(tracee, encode_control({"op": "stay"}))
            self.move_failed(tracee, move, migration.DID_NOT_COMPLETE)
            return
        try:
            away.channel.send(encode_control({"op": "arrived"}))
        except OSError:
            pass  # it goes there anyway: its guest is elsewhere now
        self.sup.selector.unregister(away.sock)
        try:
            away.sock.close()
        except OSError:
            pass
        self._stay_ended(tracee, away, sent, move.where)
        away.where, away.sock, away.channel, away.compress = move.where, onward.sock, onward, move.compress
        away.utime, away.dead_since = 0.0, None
        away.token, away.requests, away.replies, away.last_reply = token, 0, 0, None  # a new guest host
        tracee.move = None
        move.confirm()
        self.sup.selector.register(away.sock, selectors.EVENT_READ, lambda: self.sup.home.away_readable(tracee))
        self._signal_migrated(tracee)

    def _stay_ended(self, tracee: Tracee, away: migration.Away, sent: dict, where: str) -> None:
        """A stay away ended, the process now ``where`` ("here" or the next node): the
        CPU time it used there (as the guest's ``sent`` says, else its last report)
        and the migration counted."""
        trip = sent.get("utime")
        tracee.remote_utime += float(trip) if isinstance(trip, (int, float)) and trip >= 0 else away.utime
        tracee.state.nmigs += 1
        changes = p.RowChanges(where=where, nmigs=tracee.state.nmigs, remote_utime=round(tracee.remote_utime, 2))
        self.sup.tell(p.UpdateRequest(pid=tracee.pid, changes=changes))

    def _not_home(self, tracee: Tracee, err: ThawFailed) -> None:
        """Coming home failed: the process runs on where it was, if it can."""
        away = tracee.away
        if err.shell is None:
            self.sup.say(tracee, f"failed migrating home: {err.reason}")
            self.sup.link.given_up(tracee)
            return
        away.deputy = Deputy(tracee.pid, err.shell)
        try:
            away.channel.receive()  # the "sent" that follows the image
            away.channel.send(encode_control({"op": "stay"}))
        except (ProtocolError, OSError):
            self.sup.link.lost(tracee)
            return
        away.deputy = Deputy(tracee.pid, err.shell)
        move = tracee.move
        if move is not None and move.target.home:
            self.move_failed(tracee, move, err.reason)
        else:
            self.sup.say(tracee, migration.failed_migrating("home", err.reason))
