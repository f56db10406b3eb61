"""One migration of one process, from the request to the target's confirmation.

Every move is a :class:`Move`: from home to a node, from a node on to another (its
image passes through home), and from a node back home. Its :class:`Phase` says where
it is::

    requested -> handshake -> [precopy ->] stopped -> sent -> confirmed
                     \\______________\\__________\\________\\--> failed

* ``handshake``: our mosd's handshake with the target and the clock comparison with
  the guest host there (a thread), then the process is asked to stop at a clean point;
  a move home has no handshake (the guest is asked for its image at once);
* ``precopy``: a large process's memory goes ahead while it runs on;
* ``stopped``: the process is at a clean stop (or, away, its guest was told to stop)
  and its image is being written;
* ``sent``: the image is out; the target's ``restored`` (or home's rebuilding it) is
  awaited;
* ``confirmed`` or ``failed``: over. The failure is the manual's message, said where
  it is known (:meth:`Move.fail`), and given to whoever waits for the outcome
  (``mosmigrate``, or the program's own write to ``/proc/self/migrate``).

The supervisor and the home side drive the transitions; this module holds the state
and checks that each transition is one the diagram allows.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import attrs

from mosix_core.errors import MosixError
from mosix_core.mosrun.targets import MoveTarget
from mosix_core.remote.frames import Channel


class Phase(enum.Enum):
    REQUESTED = "requested"
    HANDSHAKE = "handshake"
    PRECOPY = "precopy"
    STOPPED = "stopped"
    SENT = "sent"
    CONFIRMED = "confirmed"
    FAILED = "failed"


_NEXT = {
    Phase.REQUESTED: {Phase.HANDSHAKE, Phase.STOPPED},
    Phase.HANDSHAKE: {Phase.PRECOPY, Phase.STOPPED},
    Phase.PRECOPY: {Phase.STOPPED},
    Phase.STOPPED: {Phase.SENT},
    Phase.SENT: set(),
}
OVER = frozenset({Phase.CONFIRMED, Phase.FAILED})


class MoveRefused(MosixError):
    """No move can begin (no MOSIX on this node)."""


class BadTransition(RuntimeError):
    """A move was driven along a transition the diagram does not have: a bug."""


@attrs.frozen
class MoveRequest:
    """What was asked: where to, and by whom.

    ``starting``: the program's start elsewhere (mosrun -r/-{n}/-b, or back where its
    process was when it came home to exec) — the move waits at its exec, and without
    ``force`` (-F) a failure ends the program before it ran anything. ``by_program``:
    the program's own ``/proc/self/migrate``, whose call returns only when the move is
    over. ``automatic``: the balancer's (mosd asked): refused for a locked process, and
    its failure is not said to the program — nobody asked it to move."""

    target: MoveTarget
    starting: bool = False
    force: bool = False
    by_program: bool = False
    automatic: bool = False


@attrs.define(eq=False)
class Move:
    request: MoveRequest
    origin: str | None = None  # the node it leaves (None: home)
    phase: Phase = Phase.REQUESTED
    reply: dict = attrs.field(factory=dict)  # mosd's answer to the handshake (target, proximate)
    channel: Channel | None = None  # to the guest host waiting on the target
    precopy_wanted: bool = False  # at its stop: its memory is to go ahead first
    ahead: tuple | None = None  # (the image's writer, capture.Precopy): its memory went ahead
    awaiting_stop: bool = False  # asked to stop (interrupted): the next clean stop sends it
    # by_program, away: its call was answered "made again" (-ERESTARTNOINTR): the guest
    # makes it again where the process arrives, or where it stays
    call_made_again: bool = False
    failure: str | None = None  # the manual's message, once failed
    waiters: list[Callable[[Move], None]] = attrs.field(factory=list)

    @property
    def target(self) -> MoveTarget:
        return self.request.target

    @property
    def over(self) -> bool:
        return self.phase in OVER

    @property
    def where(self) -> str:
        """The target as messages name it: its address once mosd resolved it."""
        return str(self.reply.get("target", self.target.named))

    @property
    def compress(self) -> bool:
        """Whether the image travels lz4-compressed (the target is not proximate)."""
        return not self.reply.get("proximate")

    def to(self, phase: Phase) -> None:
        if phase not in _NEXT.get(self.phase, ()):
            raise BadTransition(f"a move cannot go from {self.phase.value} to {phase.value}")
        self.phase = phase

    def confirm(self) -> None:
        if self.over:
            raise BadTransition(f"a move that is {self.phase.value} cannot be confirmed")
        self.phase = Phase.CONFIRMED
        self._close()
        self._tell()

    def fail(self, message: str) -> None:
        """Over, unsuccessfully: ``message`` is the manual's, for whoever waits."""
        if self.over:
            return
        self.drop_channel()
        self.phase, self.failure = Phase.FAILED, message
        self._close()
        self._tell()

    def wait(self, then: Callable[[Move], None]) -> None:
        """``then(move)`` once the move is over (at once if it is)."""
        if self.over:
            then(self)
        else:
            self.waiters.append(then)

    def _tell(self) -> None:
        waiters, self.waiters = self.waiters, []
        for then in waiters:
            then(self)

    def _close(self) -> None:
        if self.ahead is not None:
            self.ahead[1].close()  # its writes need no following any more
            self.ahead = None
        self.channel = None  # the socket is the caller's: kept or closed by it

    def drop_channel(self) -> None:
        """Close the way (the move failed, or the process ended or went elsewhere)."""
        if self.channel is not None:
            try:
                self.channel.sock.close()
            except OSError:
                pass
            self.channel = None
