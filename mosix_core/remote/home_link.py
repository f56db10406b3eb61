"""The home side's link to a process away: whether its node lives, a cut link made
again within the grace period, a guest given up for lost (recovered from its last
checkpoint, else killed with the manual's message), and the CPU the shell shares with
the supervisor while it runs away.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import threading
import time

from mosix_core.daemon import protocol as p
from mosix_core.daemon.client import Client
from mosix_core.errors import MosixError, ProtocolError, TraceError
from mosix_core.linux import cpus
from mosix_core.mosrun import checkpoints, migration, targets
from mosix_core.mosrun.move import MoveRefused, MoveRequest, Phase
from mosix_core.mosrun.tracee import Tracee
from mosix_core.remote.calls import Reply
from mosix_core.remote.frames import Channel, encode_control, encode_reply, reply_parts
from mosix_core.remote.link import NO_SUCH_GUEST, REATTACH_HANDSHAKE, keep_alive

REATTACH_EVERY = 1.0  # seconds between tries to make a cut link to a guest again


class HomeLink:
    """The links to the supervisor's processes away (``sup``: the supervisor)."""

    def __init__(self, sup) -> None:
        self.sup = sup
        self._next_heartbeat_check = 0.0
        self._own_affinity: set[int] | None = None  # ours, while pinned (see pin_shell)
        self._pinned_to = 0

    def check_away_nodes(self) -> None:
        """The nodes our processes run on must be alive in the gossip view. One that
        seems dead: say so (the manual's words) and call the process home — if the
        link still works it comes, else it is lost after a grace period."""
        now = time.monotonic()
        if now < self._next_heartbeat_check:
            return
        self._next_heartbeat_check = now + migration.HEARTBEAT_CHECK
        for tracee in [t for t in self.sup.tracees.values() if t.away is not None and t.away.lost_since is not None]:
            if now - tracee.away.lost_since > tracee.away.grace:
                self.given_up(tracee)  # the link stayed cut: the guest is lost
        away = [
            t
            for t in self.sup.tracees.values()
            if t.away is not None and t.away.dying is None and t.away.lost_since is None
        ]
        if not away or self.sup.etc is None:
            return
        try:
            alive = {n["ip"]: n.get("alive") for n in Client(self.sup.etc).call("view")["nodes"]}
        except (MosixError, KeyError, TypeError):
            return  # no mosd to ask: the link alone decides
        for tracee in away:
            where = tracee.away.where
            if alive.get(where, True):
                tracee.away.dead_since = None
            elif tracee.away.dead_since is None:
                tracee.away.dead_since = now
                self.sup.say(tracee, migration.seems_dead(where))
                with contextlib.suppress(MoveRefused):
                    self.sup.mover.request_migration(tracee, MoveRequest(targets.HOME))
            elif now - tracee.away.dead_since > migration.DEAD_NODE_GRACE:
                self.lost(tracee)

    def link_grace(self) -> float:
        """mosd.conf's link_grace, in seconds."""
        return self.sup.settings().link_grace

    def lost(self, tracee: Tracee) -> None:
        """The link to the guest broke. The guest is frozen where it is, waiting; home
        makes the link again through the node's mosd (a thread tries until the grace
        period ends) and the process goes on as if nothing happened. Only a process
        that cannot wait (no grace, dying) is given up at once."""
        away = tracee.away
        if away is None or away.lost_since is not None:
            return
        if not away.grace or not away.token or away.dying is not None or away.refused:
            self.given_up(tracee)
            return
        away.lost_since = time.monotonic()
        with contextlib.suppress(KeyError, ValueError):
            self.sup.selector.unregister(away.sock)
        with contextlib.suppress(OSError):
            away.sock.close()
        move = tracee.move
        if move is not None and move.target.home:
            # the order may have been lost with the link: given again once it is whole
            if not any(b'"op":"home"' in frame for frame in away.held):
                self.sup.home.away_send(tracee, encode_control({"op": "home"}))
        elif move is not None and move.phase is not Phase.HANDSHAKE:
            # a move on that was under way: asked again later (its way's handshake, still
            # going on, carries on: its order waits for the link)
            move.drop_channel()
            self.sup.mover.move_failed(tracee, move, migration.DID_NOT_COMPLETE, say=False)
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
                    reply, sock = Client(self.sup.etc).call_for_socket("reattach", pid=pid, to=where, token=token)
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
                    outcome = ({"gone": True}, None)  # the node lives, the guest does not
                    break
                time.sleep(REATTACH_EVERY)
            self.sup.later(lambda: self._reattached(tracee, away, *outcome))

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
                self.given_up(tracee)
            return  # the grace period ends it (_check_away_nodes)
        replies = hello.get("replies")
        if not isinstance(replies, int) or replies not in (away.replies, away.replies - 1):
            channel.sock.close()
            self.given_up(tracee)  # the two ends disagree: nothing can be trusted
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
        self.sup.selector.register(away.sock, selectors.EVENT_READ, lambda: self.sup.home.away_readable(tracee))

    def given_up(self, tracee: Tracee) -> None:
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
            self.drop_away(tracee)
            try:
                with self.unpinned():
                    deferred, tracee.program.converted = checkpoints.recover_into(
                        tracee.pid, last[1], away.deputy.injector.address
                    )
            except (MosixError, OSError) as err:
                self.sup.say(tracee, f"recovering from checkpoint {last[0]} failed: {err}")
                self.sup.say(tracee, migration.lost_communication(where))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(tracee.pid, signal.SIGKILL)
                return
            self.sup.say(tracee, migration.recovered_after(last[0], where))
            self.sup.tell(p.UpdateRequest(pid=tracee.pid, changes=p.RowChanges(where="here")))
            self.sup.resume(tracee)
            checkpoints.resend(tracee.pid, deferred + away.deputy.deferred)
            return
        self.sup.say(tracee, migration.lost_communication(where))
        self.drop_away(tracee)
        try:
            os.kill(tracee.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def drop_away(self, tracee: Tracee) -> None:
        away, tracee.away = tracee.away, None
        try:
            self.sup.selector.unregister(away.sock)
        except (KeyError, ValueError):
            pass
        away.close()
        try:
            if away.affinity is not None:
                cpus.pin(tracee.pid, away.affinity)  # home again: wherever the kernel likes
            if self._own_affinity is not None and all(t.away is None for t in self.sup.tracees.values()):
                cpus.pin(0, self._own_affinity)
                self._own_affinity = None
        except TraceError:
            pass

    @contextlib.contextmanager
    def unpinned(self):
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

    def pin_shell(self, tracee: Tracee) -> None:
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

    def away_ended(self, tracee: Tracee) -> None:
        """The process ended at home (its exit, or a signal): the guest gets its last
        answer and goes."""
        try:
            if tracee.away.lost_since is not None:
                pass  # the guest host gives it up after the grace period
            elif tracee.away.dying is not None:
                tracee.away.channel.send(encode_control({"op": "gone"}))
            else:
                tracee.away.channel.send(encode_reply(Reply(0)))
        except OSError:
            pass
        self.drop_away(tracee)
