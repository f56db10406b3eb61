"""The two ends of a migrated process's link: the guest side sends each call home and
waits for its reply (delivering the signals that arrive first), the home side runs
the calls in the deputy and sends back the replies and the signals that reached the
process at home.

The rule for the end: an exit is answered once the process has ended at home (its
status is the one its parent sees there); the guest is removed after that.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import time
from collections.abc import Callable

import attrs

from mosix_core.errors import ProtocolError, TraceError
from mosix_core.linux.syscall_names import NUMBERS
from mosix_core.remote.calls import RUN_WHERE_IT_IS, Reply, Request, forwardable, unforwardable_error
from mosix_core.remote.deputy import Deputy
from mosix_core.remote.frames import Channel, encode_reply, encode_signal, request_parts
from mosix_core.remote.guest import Guest

SYS_MMAP = NUMBERS["mmap"]
#: TCP keepalive on the link: idle seconds, probe interval, probes — a node that dies
#: breaks its links in about 11 s (neither half can go on without the other)
KEEPALIVE = (5, 2, 3)
#: the same bound for data that is never acknowledged (TCP_USER_TIMEOUT, ms): without
#: it a call sent into a cut link is retransmitted for some 15 minutes
UNACKNOWLEDGED_MS = 11_000
#: how long a guest host waits for the first word on a connection home made again
REATTACH_HANDSHAKE = 20.0
#: a node's mosd answers a reattach so when no guest host there waits for the token
NO_SUCH_GUEST = "no such guest"


def keep_alive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in zip((socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT), KEEPALIVE):
        sock.setsockopt(socket.IPPROTO_TCP, option, value)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, UNACKNOWLEDGED_MS)


@attrs.define
class Tally:
    """The guest side's count of its link home, kept across connections: how many
    replies to its calls have come (home counts the requests it received and the
    replies it made; the two counts tell, after a cut, whether the call that was
    waiting must be sent again or its reply will come)."""

    replies: int = 0
    # home's count of requests received, as it said when the link was made again
    home_requests: int = 0
    # the call that was waiting at the cut was sent by the C loop: Python sends it
    # again only if home did not receive it
    in_doubt: bool = False

    def home_has_it(self) -> bool:
        """Whether home has the request the guest is waiting on (it answers it)."""
        return self.home_requests > self.replies


#: ``on_lost(error, in_call)``: the link broke; returns once it is whole again (the
#: tally's ``home_requests`` updated) or raises (home is gone for good)
OnLost = Callable[[BaseException, bool], None]


def forwarder(
    channel: Channel,
    guest: Guest,
    on_control: Callable[[dict], None] | None = None,
    *,
    tally: Tally | None = None,
    on_lost: OnLost | None = None,
) -> Callable[[Request], Reply]:
    """The guest's ``forward``: one request out, signals delivered, its reply back.
    Control messages from home that arrive meanwhile go to ``on_control``. With
    ``on_lost``, a link that breaks during the call is waited for (the guest stays
    stopped in its call) and the call goes on over the new one: sent again if home
    never had it, else its reply waited for (home sends it again if it was lost)."""
    tally = tally if tally is not None else Tally()

    def forward(request: Request) -> Reply:
        sent = tally.in_doubt and tally.home_has_it()
        tally.in_doubt = False
        while True:
            try:
                if not sent:
                    channel.send_parts(request_parts(request))
                    sent = True
                while True:
                    answer = channel.receive()
                    if isinstance(answer, Reply):
                        tally.replies += 1
                        return answer
                    during_call(answer, guest, on_control)
            except (ProtocolError, OSError) as err:
                if on_lost is None:
                    raise
                on_lost(err, True)
                sent = tally.home_has_it()

    return forward


# -- a link made again -------------------------------------------------------------------------------
def reattach_address(token: str) -> bytes:
    """The abstract Unix socket where the guest host of the guest ``token`` names
    waits for its connection home to be made again (mosd hands it over there). The
    name is a digest: the token itself stays between home and the guest host."""
    return b"\0mosix-reattach-" + hashlib.sha256(token.encode()).hexdigest()[:32].encode()


def listen_for_home(token: str) -> socket.socket:
    """The guest host's end of :func:`reattach_address` (a listening SEQPACKET socket)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        listener.bind(reattach_address(token))
        listener.listen(4)
    except OSError:
        listener.close()
        raise
    return listener


def accept_home(listener: socket.socket, deadline: float) -> socket.socket | None:
    """The connection home made again, as this node's mosd hands it over (only root —
    mosd — may); None once ``deadline`` (monotonic) has passed."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        listener.settimeout(left)
        try:
            conn, _ = listener.accept()
        except (TimeoutError, BlockingIOError):
            return None
        with conn:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            if struct.unpack("3i", creds)[1] not in (0, os.getuid()):
                continue  # not mosd: a guest may not pose as home
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                message, fds, _, _ = socket.recv_fds(conn, 4096, 1)
            except (TimeoutError, OSError):
                continue
            if len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                continue
            sock = socket.socket(fileno=fds[0])
            if sock.family != socket.AF_INET or sock.type != socket.SOCK_STREAM:
                sock.close()
                continue
            return sock


def reach_waiting(token: str) -> socket.socket | None:
    """mosd's part, first: the guest host waiting for ``token``'s link home, reached
    (None if no guest host here waits for it)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        conn.settimeout(2.0)
        conn.connect(reattach_address(token))
        return conn
    except OSError:
        conn.close()
        return None


def hand_to_waiting(conn: socket.socket, fd: int, message: dict) -> bool:
    """...then the connection ``fd`` passed to it (False if it has gone meanwhile)."""
    try:
        socket.send_fds(conn, [json.dumps(message).encode()], [fd])
        return True
    except OSError:
        return False
    finally:
        conn.close()


def during_call(message, guest: Guest, on_control: Callable[[dict], None] | None = None) -> None:
    """A frame from home while a call waits for its reply: a signal reaches the guest,
    a control message goes to ``on_control``; anything else is a ProtocolError."""
    if isinstance(message, int):
        guest.signal(message)
    elif isinstance(message, dict) and on_control is not None:
        on_control(message)
    else:
        raise ProtocolError("a request from home")


def serve(deputy: Deputy, channel: Channel, before_call: Callable[[Request], None] | None = None) -> None:
    """Answer the guest's calls until the process has ended at home (``deputy.ended``).
    Blocking: the supervisor's event loop will drive :meth:`Deputy.begin` and
    :meth:`Deputy.on_stop` itself; this is the loop for a home side with one process."""
    while True:
        request = channel.receive()
        if not isinstance(request, Request):
            raise ProtocolError("a reply or signal from the guest")
        if before_call is not None:
            before_call(request)
        answer = _answered_here(request)
        if answer is not None:
            channel.send(encode_reply(answer))
            continue
        try:
            reply = deputy.call(request)
        except TraceError:
            if deputy.ended is None:
                raise
            channel.send(encode_reply(Reply(0)))
            return
        for sig in deputy.deferred:
            channel.send(encode_signal(sig))
        deputy.deferred.clear()
        channel.send(encode_reply(reply))


def _answered_here(request: Request) -> Reply | None:
    """What a home without mosrun's rules answers itself: a file mapping keeps its
    flags (the guest copies the pages), a call no table describes fails."""
    if request.nr == SYS_MMAP:
        return Reply(request.args[3] & 0xFFFFFFFF)
    if request.nr in RUN_WHERE_IT_IS:
        return Reply(0)  # no rules to judge it: the guest makes it
    return None if forwardable(request) else Reply(-unforwardable_error(request.nr))
