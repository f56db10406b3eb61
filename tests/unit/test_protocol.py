"""mosd's typed protocol: every operation has its records, every record survives the
wire, and every kind of bad field is refused with a ProtocolError naming it."""

from __future__ import annotations

import json

import attrs
import pytest

from mosix_core.cluster.proctable import SETTABLE
from mosix_core.daemon import protocol as p
from mosix_core.errors import MosixError, NotInMap, PermissionDenied, PolicyRefused, ProtocolError, Refused

MOSRUN = {
    "argv": ["sleep", "1"],
    "location": "-h",
    "memory_mb": 10,
    "options": ["-e"],
    "queue_jobs": None,
    "strict_limitations": False,
}
NODE = {"ip": "10.0.0.1", "alive": True, "load": 100}
ROW = {"pid": 42, "uid": 1000, "command": "sleep 9", "where": "here"}

#: one request and one reply of every operation, every field set
CONTROL_SAMPLES = {
    "ping": (p.PingRequest(), p.PingReply(ip="10.0.0.1", version="1.2", pid=77, off=False)),
    "view": (p.ViewRequest(), p.ViewReply(local="10.0.0.1", dead_after=4.5, interval=1, nodes=[NODE])),
    "status": (p.StatusRequest(node="2"), p.StatusReply(node=NODE)),
    "localstatus": (
        p.LocalStatusRequest(),
        p.LocalStatusReply(
            node=NODE, daemon={"pid": 7}, processes={"local": 1}, maxguests=None, extra=[["site", "yes"]]
        ),
    ),
    "listpe": (
        p.ListpeRequest(multi=True),
        p.ListpeReply(
            ip="10.0.0.1", number=1, off=False, ranges=[{"first": "10.0.0.1", "count": 3}], aliases=[], partners=[]
        ),
    ),
    "bestnode": (p.BestnodeRequest(memory_mb=500, reserve=False), p.BestnodeReply(ip="10.0.0.2", number=2)),
    "processes": (p.ProcessesRequest(), p.ProcessesReply(ip="10.0.0.1", processes=[ROW])),
    "setstate": (p.SetstateRequest(flag=p.StateFlag.LSTAY, value=True), p.SetstateReply(state=2)),
    "setpe": (
        p.SetpeRequest(map="/etc/mosix/mosix.map", ip="10.0.0.1"),
        p.SetpeReply(ip="10.0.0.1", nodes=4, pending=0),
    ),
    "pending": (p.PendingRequest(), p.PendingReply(pending=3)),
    "off": (p.OffRequest(), p.PendingReply(pending=0)),
    "stop": (p.StopRequest(), p.NoFields()),
    "register": (
        p.RegisterRequest(
            pid=42,
            changes=p.RowChanges(
                command="sleep 9",
                where="10.0.0.2",
                frozen="N/A",
                nmigs=1,
                queue="3/1/0",
                options="-b",
                remote_utime=1.5,
                freezable=False,
            ),
            home="10.0.0.3",
            origpid=9,
        ),
        p.PidReply(pid=42),
    ),
    "update": (
        p.UpdateRequest(pid=42, changes=p.RowChanges(where="leaving", queue=None)),
        p.UpdateReply(pid=42, changed=["where"]),
    ),
    "unregister": (p.UnregisterRequest(pid=42), p.UnregisterReply(pid=42, removed=True)),
    "consider": (p.ConsiderRequest(pid=42), p.NoFields()),
    "supervise": (p.SuperviseRequest(), p.NoFields()),
    "check_mosrun": (p.CheckMosrunRequest(request=MOSRUN), p.CheckMosrunReply(request=MOSRUN)),
    "migrate_out": (
        p.MigrateOutRequest(pid=42, to="2", memory_mb=None, command="sleep 9", nmigs=2, now_at="10.0.0.1"),
        p.MigrateOutReply(target="10.0.0.2", proximate=True),
    ),
    "reattach": (p.ReattachRequest(pid=42, to="10.0.0.2", token="abc"), p.ReattachReply(target="10.0.0.2")),
    "out": (p.OutRequest(pid=42), p.OutReply(pid=42, home="10.0.0.3", origpid=9)),
    "expel": (p.ExpelRequest(timeout=2.5), p.ExpelReply(expelled=2)),
    "bring": (p.BringRequest(timeout=10), p.BringReply(brought=0)),
}
PEER_SAMPLES = {
    "ping": (p.PeerPingRequest(), p.PeerPingReply(ip="10.0.0.1", version="1.2", protocol=4)),
    "status": (p.PeerStatusRequest(), p.PeerStatusReply(load=150, speed=10000, ncpus=2, state=0)),
    "migrate-in": (
        p.MigrateInRequest(uid=1000, user="alice", pid=42, memory_mb=100, command="sleep 9", nmigs=1),
        p.NoFields(),
    ),
    "reattach": (p.PeerReattachRequest(token="abc", pid=42), p.NoFields()),
    "relocate": (p.RelocateRequest(pid=42, to="10.0.0.3"), p.NoFields()),
}


def test_every_operation_has_a_request_and_a_reply_record():
    import mosix_core.daemon.control as control

    served = {name.removeprefix("op_") for name in dir(control.ControlServer) if name.startswith("op_")}
    assert served == set(p.CONTROL) == set(CONTROL_SAMPLES)
    assert set(p.PEER) == set(PEER_SAMPLES)
    for ops in (p.CONTROL, p.PEER):
        requests = [kind for kind, _reply in ops.values()]
        assert len(set(requests)) == len(requests), "a request type names its operation"
        for kind, reply in ops.values():
            assert attrs.has(kind) and attrs.has(reply)
    # the process-table fields a request may set are exactly those proctable checks
    assert tuple(a.name for a in attrs.fields(p.RowChanges)) == SETTABLE


@pytest.mark.parametrize(
    "ops, samples", [(p.CONTROL, CONTROL_SAMPLES), (p.PEER, PEER_SAMPLES)], ids=["control", "peer"]
)
def test_every_record_survives_the_wire(ops, samples):
    for op, (request, reply) in samples.items():
        assert (type(request), type(reply)) == ops[op]
        assert p.op_of(request, ops) == op
        wire = json.loads(json.dumps({"op": op, **p.encode(request), "noreply": True}))
        assert p.decode(op, wire, ops) == request, op
        answered = json.loads(json.dumps(p.answer(reply)))
        assert p.decode_reply(op, p.outcome(answered), ops) == reply, op


def test_the_wire_keeps_its_shape():
    """What the tools and the tests that talk raw JSON see (flat rows, plain values)."""
    assert p.encode(CONTROL_SAMPLES["update"][0]) == {"pid": 42, "where": "leaving", "queue": None}
    assert p.encode(p.SetstateRequest(flag=p.StateFlag.BLOCK, value=False)) == {"flag": "block", "value": False}
    assert p.answer(p.PidReply(pid=3)) == {"ok": True, "pid": 3}
    assert p.refusal("not in map") == {"ok": False, "error": "not in map"}


@pytest.mark.parametrize(
    "op, fields, says",
    [
        # wrong type
        ("register", {"pid": "42"}, "pid: must be a whole number"),
        ("setstate", {"flag": "block", "value": 1}, "value: must be true or false"),
        ("status", {"node": 2}, "node: must be a string"),
        ("expel", {"timeout": "soon"}, "timeout: must be a number"),
        ("update", {"pid": 42, "frozen": 1}, "frozen must be one of"),
        ("check_mosrun", {"request": {**MOSRUN, "argv": "sleep 1"}}, "mosrun request: argv must be a list"),
        ("view", [], "not a JSON object"),
        # out of range, or not one of the choices
        ("unregister", {"pid": 0}, "pid: must be in 1.."),
        ("out", {"pid": 1 << 40}, "pid: must be in 1.."),
        ("bestnode", {"memory_mb": -1}, "memory_mb: must be in 0.."),
        ("bring", {"timeout": 0}, "timeout: must be above 0"),
        ("setstate", {"flag": "sleep", "value": True}, "flag: must be one of stay, lstay, block"),
        ("reattach", {"pid": 42, "token": ""}, "token: must be a string of 1..128"),
        ("migrate_out", {"pid": 42, "command": 5}, "command must be a string"),
        ("migrate_out", {"pid": 42, "to": "x" * 300}, "to: must be a string of 0..256"),
        ("register", {"pid": 42, "home": "10.0.0.300", "origpid": 1}, "home: must be an IPv4 address"),
        ("update", {"pid": 42, "where": "the moon"}, "where must be here, leaving, starting or an address"),
        # unknown field
        ("ping", {"please": True}, "unknown field 'please'"),
        ("register", {"pid": 42, "uid": 0}, "unknown field 'uid'"),
        ("check_mosrun", {"request": {**MOSRUN, "uid": 0}}, "mosrun request has exactly the fields"),
        # missing field
        ("setstate", {"flag": "stay"}, "missing field 'value'"),
        ("update", {"frozen": "-"}, "missing field 'pid'"),
        ("reattach", {"pid": 42}, "missing field 'token'"),
        ("check_mosrun", {}, "missing field 'request'"),
        # no such operation
        ("format_disk", {}, "unknown operation 'format_disk'"),
    ],
)
def test_a_bad_field_is_refused_naming_it(op, fields, says):
    with pytest.raises(ProtocolError, match=None) as caught:
        p.decode(op, fields)
    assert says in str(caught.value), str(caught.value)
    assert not isinstance(caught.value, Refused)


@pytest.mark.parametrize(
    "fields",
    [
        {"uid": -1, "user": "a", "pid": 1},
        {"uid": 1, "user": "a", "pid": 1, "memory_mb": True},
        {"uid": 1, "user": "a", "pid": 1, "command": "x" * 201},
        {"uid": 1, "user": "a", "pid": 1, "shell": "/bin/sh"},
        {"uid": 1, "pid": 1},
    ],
)
def test_a_bad_peer_request_is_refused(fields):
    with pytest.raises(ProtocolError, match="migrate-in"):
        p.decode("migrate-in", fields, p.PEER)


def test_the_three_reply_shapes_come_back_as_what_they_were():
    assert p.outcome({"ok": True, "pid": 3}) == {"pid": 3}
    with pytest.raises(Refused, match="^already there$"):
        p.outcome(p.refusal("already there"))
    with pytest.raises(Refused, match="^other node refused$") as caught:
        p.outcome(json.loads(json.dumps(p.refusal("other node refused", {"target": "10.0.0.2"}))))
    assert caught.value.details == {"target": "10.0.0.2"}
    with pytest.raises(ProtocolError, match="bad request"):
        p.outcome(p.fault("protocol", "bad request: x"))
    with pytest.raises(MosixError, match="internal error") as caught:
        p.outcome(p.fault("internal", "internal error: KeyError"))
    assert not isinstance(caught.value, Refused)


def test_the_answers_that_refuse_are_all_refused():
    """Every error that answers rather than fails is one Refused (and still a MosixError)."""
    from mosix_core.daemon.handshake import MigrationRefused

    for kind in (NotInMap, PermissionDenied, PolicyRefused, MigrationRefused):
        assert issubclass(kind, Refused) and issubclass(kind, MosixError)
