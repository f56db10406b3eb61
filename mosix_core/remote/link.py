"""The two ends of a migrated process's link: the guest side sends each call home and
waits for its reply (delivering the signals that arrive first), the home side runs
the calls in the deputy and sends back the replies and the signals that reached the
process at home.

The rule for the end: an exit is answered once the process has ended at home (its
status is the one its parent sees there); the guest is removed after that.
"""

from __future__ import annotations

import socket
from typing import Callable

from mosix_core.errors import ProtocolError, TraceError
from mosix_core.linux.syscall_names import NUMBERS
from mosix_core.remote.calls import Reply, Request, forwardable, unforwardable_error
from mosix_core.remote.deputy import Deputy
from mosix_core.remote.frames import Channel, encode_reply, encode_signal, request_parts
from mosix_core.remote.guest import Guest

SYS_MMAP = NUMBERS["mmap"]
#: TCP keepalive on the link: idle seconds, probe interval, probes — a node that dies
#: breaks its links in about 11 s (neither half can go on without the other)
KEEPALIVE = (5, 2, 3)


def keep_alive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in zip((socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT), KEEPALIVE):
        sock.setsockopt(socket.IPPROTO_TCP, option, value)


def forwarder(channel: Channel, guest: Guest,
              on_control: Callable[[dict], None] | None = None) -> Callable[[Request], Reply]:
    """The guest's ``forward``: one request out, signals delivered, its reply back.
    Control messages from home that arrive meanwhile go to ``on_control``."""

    def forward(request: Request) -> Reply:
        channel.send_parts(request_parts(request))
        while True:
            answer = channel.receive()
            if isinstance(answer, Reply):
                return answer
            during_call(answer, guest, on_control)

    return forward


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
    return None if forwardable(request) else Reply(-unforwardable_error(request.nr))
