"""The typed protocol of mosd: one request and one reply record per operation.

Two sets of operations: :data:`CONTROL` (the local control socket, the ``mos*``
tools and ``mosrun``) and :data:`PEER` (another node's mosd, over the authenticated
TCP port). On the wire a request is the JSON object ``{"op": name, **fields}`` and a
reply one of three shapes, each side reading and writing them only here:

``{"ok": true, **fields}``
    done; ``fields`` are the reply record's.
``{"ok": false, "error": message, **details}``
    refused: an answer, not a failure (the node is not in the map, the process is
    already there, a site policy said no, permission denied...). ``message`` is the
    manual's; the caller gets it back as :class:`~mosix_core.errors.Refused`, with
    its ``details`` (``target``: the node that refused a move).
``{"ok": false, "error": message, "fault": "protocol" | "internal"}``
    the request itself was bad (a ProtocolError at the caller) or the daemon failed
    while serving it (a plain MosixError).

:func:`decode` turns the fields of a request into its record, refusing any field of
the wrong type, out of range, unknown or missing with a ProtocolError that names it
(each field's check is one of :mod:`mosix_core.daemon.field_checks`);
:func:`encode` turns any record back into plain JSON data. The checks of the
process-table fields and of a mosrun request are those of
:func:`mosix_core.cluster.proctable.checked_fields` and :meth:`MosrunRequest.from_fields`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from ipaddress import IPv4Address
from typing import Any, TypeVar, dataclass_transform

import attrs

from mosix_core.cluster.proctable import DECAY_SCALE, DEFAULT_DECAY, SETTABLE, ProcessRecord
from mosix_core.daemon.field_checks import (
    UNSET,
    Check,
    Unset,
    address,
    boolean,
    json_list,
    json_object,
    mosrun_fields,
    number,
    one_of,
    optional,
    process_rows,
    settable,
    text,
    whole,
)
from mosix_core.errors import MosixError, ProtocolError, Refused

MAX_PID = 1 << 22  # the kernel's largest pid_max
MAX_UID = (1 << 32) - 2  # (uid_t)-1 means "none"
MAX_NAME = 256  # a node's number, address or host name; a login name
MAX_PATH = 4096
MAX_TOKEN = 128
MAX_MEMORY_MB = 1 << 40
MAX_COUNT = 1 << 31
MAX_TIMEOUT = 7 * 24 * 3600.0
MAX_PEER_COMMAND = 200  # what the target keeps (and what fits its small first frame)
MOVE_TIMEOUT = 300.0  # how long expel and bring wait for the processes to move, by default
FAULTS = ("protocol", "internal")


class StateFlag(enum.Enum):
    """What ``mosctl stay|lstay|block`` (and their ``no`` forms) set."""

    STAY = "stay"
    LSTAY = "lstay"
    BLOCK = "block"


def _field(check: Check, *, default: Any = attrs.NOTHING) -> Any:
    """A field whose wire value ``check`` checks and normalises (no ``default``: required)."""
    return attrs.field(converter=check, default=default)


_R = TypeVar("_R")


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(attrs.field, _field))
def record(cls: type[_R]) -> type[_R]:
    """A message: frozen, and built by keyword (as it comes off the wire). A type
    checker sees the fields' own types (what the checks normalise to)."""
    return attrs.frozen(kw_only=True)(cls)


PID = whole(1, MAX_PID)
NODE = optional(text(MAX_NAME))  # a number, address or host name of the map; None: this node
COUNT = whole(0, MAX_COUNT)


# -- control requests -----------------------------------------------------------------------------
@record
class NoFields:
    """A reply that carries nothing (stop, supervise...); the base of requests that do not."""


@record
class PingRequest(NoFields):
    pass


@record
class ViewRequest(NoFields):
    pass


@record
class LocalStatusRequest(NoFields):
    pass


@record
class ProcessesRequest(NoFields):
    pass


@record
class PendingRequest(NoFields):
    pass


@record
class OffRequest(NoFields):
    pass


@record
class StopRequest(NoFields):
    pass


@record
class SuperviseRequest(NoFields):
    """From now on, this connection's rows go when it closes (a supervisor's)."""


@record
class StatusRequest:
    node: str | None = _field(NODE, default=None)


@record
class ListpeRequest:
    multi: bool = _field(boolean, default=False)


@record
class BestnodeRequest:
    memory_mb: int | None = _field(optional(whole(0, MAX_MEMORY_MB)), default=None)
    reserve: bool = _field(boolean, default=True)


@record
class SetstateRequest:
    flag: StateFlag = _field(one_of(StateFlag))
    value: bool = _field(boolean)


@record
class SetpeRequest:
    map: str | None = _field(optional(text(MAX_PATH)), default=None)
    ip: str | None = _field(optional(text(MAX_NAME)), default=None)


@record
class RowChanges:
    """The process-table fields a request sets (UNSET: left as they are)."""

    command: str | Unset = _field(settable("command"), default=UNSET)
    where: str | Unset = _field(settable("where"), default=UNSET)  # here, leaving, starting, an address
    frozen: str | Unset = _field(settable("frozen"), default=UNSET)  # -, A, P, M, N/A
    nmigs: int | Unset = _field(settable("nmigs"), default=UNSET)
    queue: str | None | Unset = _field(settable("queue"), default=UNSET)  # total/done/fail
    options: str | Unset = _field(settable("options"), default=UNSET)
    remote_utime: float | None | Unset = _field(settable("remote_utime"), default=UNSET)
    freezable: bool | Unset = _field(settable("freezable"), default=UNSET)
    locked: bool | Unset = _field(settable("locked"), default=UNSET)
    cpujob: bool | Unset = _field(settable("cpujob"), default=UNSET)
    decayrate: int | Unset = _field(settable("decayrate"), default=UNSET)
    needmem: int | Unset = _field(settable("needmem"), default=UNSET)
    cleared: int | Unset = _field(settable("cleared"), default=UNSET)

    def present(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SETTABLE if getattr(self, name) is not UNSET}


@record
class RegisterRequest:
    """A row for process ``pid`` (root only: ``home`` and ``origpid``, a guest's)."""

    pid: int = _field(PID)
    changes: RowChanges = RowChanges()
    home: str | None = _field(optional(address), default=None)
    origpid: int | None = _field(optional(PID), default=None)


@record
class UpdateRequest:
    pid: int = _field(PID)
    changes: RowChanges = RowChanges()


@record
class PidRequest:
    pid: int = _field(PID)


@record
class UnregisterRequest(PidRequest):
    pass


@record
class ConsiderRequest(PidRequest):
    """The balancer decides about process ``pid`` now (it wrote -1 to /proc/self/migrate)."""


@record
class OutRequest(PidRequest):
    """The guest ``pid`` goes home."""


@record
class CheckMosrunRequest:
    request: dict = _field(mosrun_fields)


@record
class MigrateOutRequest:
    pid: int = _field(PID)
    to: str | None = _field(NODE, default=None)
    memory_mb: int | None = _field(optional(whole(0, MAX_MEMORY_MB)), default=None)
    command: str = _field(settable("command"), default="?")  # cut to proctable.MAX_COMMAND
    nmigs: int = _field(COUNT, default=0)
    now_at: str | None = _field(optional(text(MAX_NAME)), default=None)  # where the process is now
    automatic: bool = _field(boolean, default=False)  # the balancer's move, not a request's


@record
class ReattachRequest:
    pid: int = _field(PID)
    to: str | None = _field(NODE, default=None)
    token: str = _field(text(MAX_TOKEN, least=1))


@record
class MoveAllRequest:
    """How long to wait for the processes to move."""

    timeout: float = _field(number(0, MAX_TIMEOUT, above=True), default=MOVE_TIMEOUT)


@record
class ExpelRequest(MoveAllRequest):
    pass


@record
class BringRequest(MoveAllRequest):
    pass


# -- control replies ------------------------------------------------------------------------------
@record
class PingReply:
    ip: str = _field(address)
    version: str = _field(text(MAX_NAME))
    pid: int = _field(PID)
    off: bool = _field(boolean)


@record
class ViewReply:
    local: str = _field(address)
    dead_after: float = _field(number(0, MAX_TIMEOUT))
    interval: float = _field(number(0, MAX_TIMEOUT))
    nodes: tuple = _field(json_list)  # node_json() objects


@record
class StatusReply:
    node: dict = _field(json_object)


@record
class LocalStatusReply:
    node: dict = _field(json_object)
    daemon: dict = _field(json_object)
    processes: dict = _field(json_object)
    maxguests: int | None = _field(optional(COUNT))
    extra: tuple = _field(json_list)  # [name, value] pairs from mosix_status_fields


@record
class ListpeReply:
    ip: str = _field(address)
    number: int | None = _field(optional(COUNT))
    off: bool = _field(boolean)
    ranges: tuple = _field(json_list)
    aliases: tuple = _field(json_list)
    partners: tuple = _field(json_list)


@record
class BestnodeReply:
    ip: str | None = _field(optional(address))
    number: int | None = _field(optional(COUNT))


@record
class ProcessesReply:
    ip: str = _field(address)
    processes: tuple[ProcessRecord, ...] = _field(process_rows)  # on the wire: ProcessRecord.to_json() objects


@record
class SetstateReply:
    state: int = _field(COUNT)


@record
class SetpeReply:
    ip: str = _field(address)
    nodes: int = _field(COUNT)
    pending: int = _field(COUNT)


@record
class PendingReply:
    pending: int = _field(COUNT)


@record
class PidReply:
    pid: int = _field(PID)


@record
class UpdateReply:
    pid: int = _field(PID)
    changed: tuple = _field(json_list)


@record
class UnregisterReply:
    pid: int = _field(PID)
    removed: bool = _field(boolean)


@record
class CheckMosrunReply:
    request: dict = _field(mosrun_fields)


@record
class MigrateOutReply:
    target: str = _field(address)
    proximate: bool = _field(boolean)


@record
class ReattachReply:
    target: str = _field(address)


@record
class OutReply:
    pid: int = _field(PID)
    home: str = _field(address)
    origpid: int | None = _field(optional(PID))


@record
class ExpelReply:
    expelled: int = _field(COUNT)


@record
class BringReply:
    brought: int = _field(COUNT)


# -- peer requests and replies --------------------------------------------------------------------
@record
class PeerPingRequest(NoFields):
    pass


@record
class PeerStatusRequest(NoFields):
    pass


@record
class RelocateRequest:
    """The node where home's process ``pid`` runs asks home to move it on to ``to`` (its
    balancer decided; home runs every move of its processes)."""

    pid: int = _field(PID)
    to: str = _field(address)


@record
class PeerPingReply:
    ip: str = _field(address)
    version: str = _field(text(MAX_NAME))
    protocol: int = _field(COUNT)


@record
class PeerStatusReply:
    load: int = _field(COUNT)
    speed: int = _field(COUNT)
    ncpus: int = _field(COUNT)
    state: int = _field(COUNT)


@record
class MigrateInRequest:
    """A process of ``uid`` (``user`` at home) wants to move here."""

    uid: int = _field(whole(0, MAX_UID))
    user: str = _field(text(MAX_NAME))
    pid: int = _field(PID)
    memory_mb: int = _field(whole(0, MAX_MEMORY_MB), default=0)
    command: str = _field(text(MAX_PEER_COMMAND), default="?")
    nmigs: int = _field(COUNT, default=0)
    # what the target's balancer goes by (its home's process-table row says)
    automatic: bool = _field(boolean, default=False)
    locked: bool = _field(boolean, default=False)
    cpujob: bool = _field(boolean, default=False)
    decayrate: int = _field(whole(0, DECAY_SCALE), default=DEFAULT_DECAY)


@record
class PeerReattachRequest:
    """Home makes a cut link to its guest (``token`` names it) again."""

    token: str = _field(text(MAX_TOKEN, least=1))
    pid: int = _field(PID)


#: op name -> (request record, reply record)
CONTROL: dict[str, tuple[type, type]] = {
    "ping": (PingRequest, PingReply),
    "view": (ViewRequest, ViewReply),
    "status": (StatusRequest, StatusReply),
    "localstatus": (LocalStatusRequest, LocalStatusReply),
    "listpe": (ListpeRequest, ListpeReply),
    "bestnode": (BestnodeRequest, BestnodeReply),
    "processes": (ProcessesRequest, ProcessesReply),
    "setstate": (SetstateRequest, SetstateReply),
    "setpe": (SetpeRequest, SetpeReply),
    "pending": (PendingRequest, PendingReply),
    "off": (OffRequest, PendingReply),
    "stop": (StopRequest, NoFields),
    "register": (RegisterRequest, PidReply),
    "update": (UpdateRequest, UpdateReply),
    "unregister": (UnregisterRequest, UnregisterReply),
    "consider": (ConsiderRequest, NoFields),
    "supervise": (SuperviseRequest, NoFields),
    "check_mosrun": (CheckMosrunRequest, CheckMosrunReply),
    "migrate_out": (MigrateOutRequest, MigrateOutReply),
    "reattach": (ReattachRequest, ReattachReply),
    "out": (OutRequest, OutReply),
    "expel": (ExpelRequest, ExpelReply),
    "bring": (BringRequest, BringReply),
}
PEER: dict[str, tuple[type, type]] = {
    "ping": (PeerPingRequest, PeerPingReply),
    "status": (PeerStatusRequest, PeerStatusReply),
    "migrate-in": (MigrateInRequest, NoFields),
    "reattach": (PeerReattachRequest, NoFields),
    "relocate": (RelocateRequest, NoFields),
}
#: envelope keys of a control request, not fields of its record
ENVELOPE = ("op", "noreply")


# -- decoding and encoding ------------------------------------------------------------------------
def decode(op: str, fields: Any, ops: Mapping[str, tuple[type, type]] = CONTROL) -> Any:
    """The request record of operation ``op`` from its fields (envelope keys ignored)."""
    try:
        kind, _reply = ops[op]
    except (KeyError, TypeError):
        raise ProtocolError(f"unknown operation {op!r}") from None
    return from_fields(kind, {k: v for k, v in _object(fields, op).items() if k not in ENVELOPE}, op)


def decode_reply(op: str, fields: Any, ops: Mapping[str, tuple[type, type]] = CONTROL) -> Any:
    """The reply record of operation ``op`` from a successful reply's fields."""
    _request, kind = ops[op]
    return from_fields(kind, {k: v for k, v in _object(fields, op).items() if k != "ok"}, op)


def _object(fields: Any, op: str) -> dict:
    if not isinstance(fields, Mapping):
        raise ProtocolError(f"bad request: {op}: not a JSON object")
    return dict(fields)


def from_fields(kind: type, fields: dict[str, Any], op: str) -> Any:
    """``kind`` from flat wire fields; ProtocolError naming the first bad field."""
    names = {a.name: a for a in attrs.fields(kind)}
    flat = dict(fields)
    if "changes" in names:  # register, update: the row's fields travel at the top level
        flat["changes"] = from_fields(RowChanges, {n: flat.pop(n) for n in SETTABLE if n in flat}, op)
    unknown = sorted(set(flat) - set(names))
    if unknown:
        raise ProtocolError(f"bad request: {op}: unknown field {', '.join(map(repr, unknown))}")
    missing = [a.name for a in names.values() if a.default is attrs.NOTHING and a.name not in flat]
    if missing:
        raise ProtocolError(f"bad request: {op}: missing field {', '.join(map(repr, missing))}")
    for name, value in flat.items():
        converter = names[name].converter
        if converter is None or name == "changes":
            continue
        try:
            flat[name] = converter(value)
        except (ValueError, TypeError, ProtocolError) as err:
            raise ProtocolError(f"bad request: {op}: {name}: {err}") from None
    return kind(**flat)


def encode(record: Any) -> dict[str, Any]:
    """A request or reply record as flat JSON data (what :func:`decode` reads back)."""
    out: dict[str, Any] = {}
    for a in attrs.fields(type(record)):
        value = getattr(record, a.name)
        if isinstance(value, RowChanges):
            out.update({name: _plain(v) for name, v in value.present().items()})
        else:
            out[a.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, IPv4Address):
        return str(value)
    if isinstance(value, ProcessRecord):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def op_of(request: Any, ops: Mapping[str, tuple[type, type]] = CONTROL) -> str:
    """The operation whose request record ``request`` is."""
    for op, (kind, _reply) in ops.items():
        if kind is type(request):
            return op
    raise TypeError(f"{type(request).__name__} is the request of no operation")


# -- the three reply shapes -----------------------------------------------------------------------
def answer(reply: Any) -> dict[str, Any]:
    """The wire form of a reply record: done."""
    return {"ok": True, **encode(reply)}


def refusal(message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The wire form of a refusal: ``message`` is the manual's."""
    return {**(details or {}), "ok": False, "error": message}


def fault(kind: str, message: str) -> dict[str, Any]:
    """The wire form of a bad request (``protocol``) or a daemon's failure (``internal``)."""
    assert kind in FAULTS
    return {"ok": False, "error": message, "fault": kind}


def outcome(wire: Any) -> dict[str, Any]:
    """A reply read from the wire: its fields when done; else the refusal raised as
    Refused, a bad request as ProtocolError, a daemon's failure as MosixError."""
    if not isinstance(wire, dict):
        raise ProtocolError("a reply is a JSON object")
    fields = dict(wire)
    if fields.pop("ok", False) is True:
        return fields
    message = str(fields.get("error", "request failed"))
    kind = fields.get("fault")
    if kind == "protocol":
        raise ProtocolError(message)
    if kind is not None:
        raise MosixError(message)
    fields.pop("error", None)
    raise Refused(message, **fields)
