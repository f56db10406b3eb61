"""The records hooks receive and return (see ``mosix_core.contract.hookspecs``).

Hooks see read-only things: frozen records made for the call (:class:`NodeContext`,
:class:`OpeningProcess`, the requests) or Protocols naming the few attributes of the
daemon's own objects a plugin may read (:class:`ProcessRow`, :class:`NodesView`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from mosix_core.cluster.gossip import ST_BLOCK, ST_OFF, NodeEntry, NodeStatus
from mosix_core.errors import ProtocolError

if TYPE_CHECKING:
    from mosix_core.config import MosixConfig
    from mosix_core.config.daemon import DaemonSettings


class ProcessRow(Protocol):
    """A row of this node's process table (``mosps``), as plugins read it."""

    @property
    def pid(self) -> int: ...
    @property
    def uid(self) -> int: ...
    @property
    def command(self) -> str: ...
    @property
    def home(self) -> IPv4Address | None: ...  # None: a local process; else a guest from there
    @property
    def is_guest(self) -> bool: ...
    @property
    def where(self) -> str: ...  # "here", "leaving", "starting" or a node address
    @property
    def frozen(self) -> str: ...  # "-" running, "A" automatically frozen, "P", "M", "N/A"
    @property
    def freezable(self) -> bool: ...
    @property
    def started(self) -> float: ...  # wall-clock start
    @property
    def frozen_since(self) -> float: ...  # monotonic time of the last freeze or unfreeze (or start)


class NodesView(Protocol):
    """This node's view of the cluster: every node it has heard of, by address."""

    @property
    def local_ip(self) -> IPv4Address: ...
    @property
    def entries(self) -> Mapping[IPv4Address, NodeEntry]: ...
    def alive_nodes(self) -> Iterator[NodeEntry]: ...


@attrs.frozen
class NodeContext:
    """This node as plugins see it: a snapshot taken for the call (changing it changes
    nothing)."""

    ip: IPv4Address  # its MOSIX address
    etc: Path  # its configuration directory
    config: MosixConfig  # its configuration (the cluster map, partners, mosd.conf ...)
    status: NodeStatus  # what it tells the cluster about itself now (load, memory, state)
    guest_homes: tuple[IPv4Address, ...] = ()  # where each guest running here comes from

    @property
    def settings(self) -> DaemonSettings:
        """mosd.conf's settings."""
        return self.config.daemon

    @property
    def takes_guests(self) -> bool:
        """Neither blocked (``mosctl block``) nor with MOSIX turned off."""
        return not self.status.state & (ST_BLOCK | ST_OFF)

    @classmethod
    def of(cls, node: Any) -> NodeContext:
        """The context of a running :class:`mosix_core.daemon.node.Node`."""
        return cls(
            ip=node.our_ip,
            etc=node.etc,
            config=node.config,
            status=node.local_status(),
            guest_homes=tuple(row.home for row in node.proctable.guests()),
        )


@attrs.frozen
class PlacementRequest:
    """Where should a new process start? (``mosrun -b``, ``mosbestnode``)."""

    memory_mb: int = 0  # -m{mb}: only nodes with this much free memory
    allow_local: bool = True  # the home node itself is a candidate
    local_cluster_only: bool = True  # initial placement stays in the local cluster
    exclude: frozenset[IPv4Address] = frozenset()


#: the refusal of a node that could take the process but not now (the manual's
#: "{computer} is too busy to receive now"; other refusals read "failed migrating to
#: {computer}: {reason}")
TOO_BUSY = "too busy to receive now"


@attrs.frozen
class AdmissionRequest:
    origin: IPv4Address
    memory_mb: int = 0
    from_local_cluster: bool = True
    priority: int = 0


@attrs.frozen
class Admission:
    accepted: bool
    reason: str = ""  # what the user sees when refused

    @classmethod
    def accept(cls) -> Admission:
        return cls(True)

    @classmethod
    def refuse(cls, reason: str) -> Admission:
        return cls(False, reason)


@attrs.frozen
class FreezeSituation:
    load: float  # in the policy's units (processes or standard load)
    running: int  # local MOSIX processes running at home (not frozen)
    frozen: int  # automatically frozen ones
    red: float  # -1: off
    blue: float
    min_keep: int
    max_procs: int  # -1: no limit
    slice_seconds: float = 0.0  # time slice while some are frozen (0: no rotation)
    now: float = 0.0  # the monotonic clock the rows' ``frozen_since`` uses


@attrs.frozen
class FreezeChoice:
    freeze: tuple[int, ...] = ()
    unfreeze: tuple[int, ...] = ()


@attrs.frozen
class OpeningProcess:
    """A MOSIX process opening ``/proc/self/{name}``, as ``mosix_special_path`` sees it.

    The manual's interface: ``open(path, 0)`` reads, ``open(path, 1|O_CREAT, value)``
    writes, ``open(path, 2|O_CREAT, value)`` writes and returns the previous value."""

    flags: int  # open's flags: the access mode (0, 1, 2), perhaps | O_CREAT
    value: int = 0  # open's third argument (the value written)
    where: int = 0  # the node it runs on: 0 at home, else its number (or address)
    lock: bool = False  # -L or /proc/self/lock
    needmem: int = 0  # -m{mb} or /proc/self/needmem
    nmigs: int = 0  # migrations so far

    @property
    def reading(self) -> bool:
        return self.flags & 3 in (0, 2)

    @property
    def writing(self) -> bool:
        return self.flags & 3 in (1, 2)


@attrs.frozen
class SpecialPathResult:
    """The outcome of an intercepted ``open()``: a value, or -1 and an errno."""

    result: int = 0
    errno: int = 0

    @classmethod
    def value(cls, value: int) -> SpecialPathResult:
        return cls(value, 0)

    @classmethod
    def error(cls, errno: int) -> SpecialPathResult:
        return cls(-1, errno)


@attrs.frozen
class MosrunRequest:
    """A ``mosrun`` invocation as site policies see it (before anything starts)."""

    uid: int
    user: str
    argv: tuple[str, ...]  # the program and its arguments
    location: str | None = None  # "-b", "-h", "-r{host}", "-{n}", "-{a.b.c.d}" or None
    memory_mb: int | None = None
    options: tuple[str, ...] = ()  # every other mosrun option, as given
    queue_jobs: int | None = None  # -S{maxjobs}
    etc: str | None = None  # the configuration directory: site parameters are in {etc}/mosrun.conf
    # the manual's LIMITATIONS exactly (no call answered beyond them): mosd.conf's
    # strict_limitations to begin with; a policy may set it either way for this invocation
    strict_limitations: bool = False

    @classmethod
    def from_fields(cls, fields: Any, *, uid: int, user: str, etc: str | None) -> MosrunRequest:
        """A request from :meth:`policy_fields`-shaped data (from mosrun, perhaps over
        the control socket): anything of the wrong shape is a ProtocolError."""
        if not isinstance(fields, dict):
            raise ProtocolError("a mosrun request is a JSON object")
        known = {"argv", "location", "memory_mb", "options", "queue_jobs", "strict_limitations"}
        if set(fields) != known:
            raise ProtocolError(f"a mosrun request has exactly the fields {', '.join(sorted(known))}")
        words = {name: fields[name] for name in ("argv", "options")}
        for name, value in words.items():
            if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
                raise ProtocolError(f"mosrun request: {name} must be a list of strings")
        if fields["location"] is not None and not isinstance(fields["location"], str):
            raise ProtocolError("mosrun request: location must be a string")
        for name in ("memory_mb", "queue_jobs"):
            value = fields[name]
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ProtocolError(f"mosrun request: {name} must be a whole number")
        strict = fields["strict_limitations"]
        if not isinstance(strict, bool):
            raise ProtocolError("mosrun request: strict_limitations must be true or false")
        return cls(
            uid=uid,
            user=user,
            argv=tuple(words["argv"]),
            location=fields["location"],
            memory_mb=fields["memory_mb"],
            options=tuple(words["options"]),
            queue_jobs=fields["queue_jobs"],
            etc=etc,
            strict_limitations=strict,
        )

    def policy_fields(self) -> dict[str, Any]:
        """What a policy may have changed, as plain data (the inverse of :meth:`from_fields`)."""
        return {
            "argv": list(self.argv),
            "location": self.location,
            "memory_mb": self.memory_mb,
            "options": list(self.options),
            "queue_jobs": self.queue_jobs,
            "strict_limitations": self.strict_limitations,
        }


class PlacementView:
    """What placement hooks see: the live nodes that a request may go to.

    Built by the daemon from its :class:`mosix_core.cluster.gossip.ClusterView`; ``in_cluster``
    tells whether an address belongs to the local cluster (not a partner).
    """

    def __init__(self, view: NodesView, in_cluster: Callable[[IPv4Address], bool]) -> None:
        self.view = view
        self.local_ip = view.local_ip
        self.in_cluster = in_cluster

    @property
    def local(self) -> NodeEntry | None:
        """This node's entry."""
        return self.view.entries.get(self.local_ip)

    def candidates(self, request: PlacementRequest) -> list[NodeEntry]:
        """The live nodes ``request`` may go to (its memory free, not blocked, ...)."""
        out = []
        for ip, entry in self.view.entries.items():
            if not entry.alive or ip in request.exclude:
                continue
            is_local = ip == self.local_ip
            if is_local and not request.allow_local:
                continue
            # "block" keeps guests out; the home node always takes its own processes.
            if not is_local and entry.status.state & (ST_BLOCK | ST_OFF):
                continue
            if request.local_cluster_only and not is_local and not self.in_cluster(ip):
                continue
            if request.memory_mb and entry.status.mem_avail_mb < request.memory_mb:
                continue
            out.append(entry)
        return out
