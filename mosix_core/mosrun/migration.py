"""The supervisor's side of migration: what it keeps of a process that runs away.

A process that leaves keeps its pid, parent, open files, cwd and credentials here,
in its own body made a shell (what freezing leaves); the :class:`Away` record holds
the connection to the guest host and the deputy that performs the calls the guest
sends home. Everything in this module is plain data and small helpers; the
supervisor's loop drives them.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address

import attrs

from mosix_core.linux import procfs
from mosix_core.mosrun.targets import HOME_WORDS, failed_migrating  # noqa: F401  (their home is targets)
from mosix_core.remote.deputy import Deputy
from mosix_core.remote.frames import Channel
from mosix_core.remote.shortcut import Shortcuts

#: how long the target may take to restore an image before the move counts as failed
RESTORE_TIMEOUT = 120.0
#: how often an idle shell is checked for signals sent to the process at home
SIGNAL_POLL = 0.05
DID_NOT_COMPLETE = "did not complete (no memory there?)"
# A process with at least this much anonymous memory is moved pre-copied: its memory
# goes while it runs, and it stops only for what it wrote meanwhile. Below, the extra
# stop and pass cost more than they save.
SEND_AHEAD_FROM = 64 << 20


def lost_communication(computer: str) -> str:
    return f"Lost communication with {computer}"


def recovered_after(version: int, computer: str) -> str:
    return f"recovered from checkpoint {version} after {computer} died"


def seems_dead(computer: str) -> str:
    return f"remote-site ({computer}) seems to be dead"


#: how often the gossip view is asked whether the nodes running our processes live
HEARTBEAT_CHECK = 1.0
#: how long a process away on a node that seems dead may take to come home before it
#: is given up for lost (the link's keepalive usually breaks sooner)
DEAD_NODE_GRACE = 15.0


@attrs.define(eq=False)
class Away:
    """A process running on another node."""

    where: str  # the node's address
    sock: socket.socket
    channel: Channel
    deputy: Deputy
    compress: bool
    next_poll: float = 0.0
    dying: int | None = None  # a signal killed it away: it dies of it here too
    utime: float = 0.0  # user CPU seconds there so far (as its host reports)
    dead_since: float | None = None  # when the node stopped being seen alive (gossip)
    stopping: int | None = None  # the guest stopped of this signal: the shell is to stop too
    stopped: bool = False  # the shell is stopped (job control) until SIGCONT
    continued: bool = False  # its SIGCONT was sent on already, when it woke
    affinity: set[int] | None = None  # the CPUs it may run on at home (its shell is pinned)
    shortcuts: Shortcuts | None = None  # calls on regular files, made here on borrowed descriptors
    # its program's own move (/proc/self/migrate) failed after its call was answered
    # "made again": the call, made again, fails (see Supervisor._send_order)
    program_move_failed: bool = False
    written_first: int = 0  # bytes of the call the deputy makes that were written here
    # -- the link made again after a cut (see Supervisor._link_lost) ----------------------------
    token: str = ""  # the guest's secret with its guest host: names it to that node's mosd
    grace: float = 0.0  # how long a cut link is waited for before the process is given up
    requests: int = 0  # the guest's calls received (whole) over every connection
    replies: int = 0  # ... and answered: the last answer is kept, for a guest that lost it
    last_reply: object = None
    lost_since: float | None = None  # the link is cut: since when (None: it is whole)
    held: list = attrs.field(factory=list)  # frames for the guest made while the link was cut
    reattaching: bool = False  # a thread is trying to make the link again
    # the rules killed it for a call it made away: nothing it sends any more is read,
    # so nothing it did after that call takes effect
    refused: bool = False

    def close(self) -> None:
        if self.shortcuts is not None:
            self.shortcuts.close()
            self.shortcuts = None
        try:
            self.sock.close()
        except OSError:
            pass


def node_value(config, where: str) -> int:
    """``/proc/self/whereami``: the node number, or the host-order IP outside the map."""
    ip = IPv4Address(where)
    number = config.node_number(ip) if config is not None else None
    return number if number else int(ip)


def worth_sending_ahead(pid: int) -> bool:
    """Whether process ``pid`` has enough memory of its own to be moved pre-copied."""
    try:
        status = procfs.status_fields(pid)
        kib = sum(int(status.get(field, "0 kB").split()[0]) for field in ("RssAnon", "VmSwap"))
    except (OSError, ValueError):
        return False
    return kib * 1024 >= SEND_AHEAD_FROM
