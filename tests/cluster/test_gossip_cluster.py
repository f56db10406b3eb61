"""Real mosd daemons on loopback addresses: convergence, death, revival, authentication."""

from __future__ import annotations

import json
import os
import socket
import time
from ipaddress import IPv4Address

import pytest

from mosix_core.cluster import gossip
from mosix_core.errors import ProtocolError, Refused
from mosix_core.net import wire

pytestmark = pytest.mark.cluster

INTERVAL = 0.2


def log_text(cluster, k: int) -> str:
    return (cluster.etc(k) / "var" / "mosd.log").read_text(errors="replace")


def test_four_nodes_converge_to_a_full_fresh_view(local_cluster):
    cluster = local_cluster(nodes=4, interval=INTERVAL)
    cluster.converged(timeout=10 * INTERVAL + 5)
    for k in range(1, 5):
        view = cluster.view(k)
        assert {n["ip"] for n in view if n["alive"]} == {cluster.ip(j) for j in range(1, 5)}
        # Every entry stays within a few gossip periods of fresh (a 4-node cluster
        # refreshes everything nearly every period).
        assert max(n["age"] for n in view) <= 6 * INTERVAL, view


def test_killed_node_is_seen_dead_in_bounded_time_and_alive_after_restart(local_cluster):
    cluster = local_cluster(nodes=4, interval=INTERVAL)
    cluster.converged()
    dead_after = cluster.client(1).call("view")["dead_after"]
    cluster.stop(3)
    stopped = time.monotonic()
    for k in (1, 2, 4):
        cluster.wait_until(
            lambda k=k: not cluster.node_in_view(k, 3)["alive"],
            timeout=dead_after + 10 * INTERVAL,
            what=f"node {k} to see node 3 dead",
        )
    assert time.monotonic() - stopped <= dead_after + 10 * INTERVAL
    # rstatus: still configured (1), but no information (2) and not fresh (512)
    out = cluster.run(1, "mosctl", "rstatus", "3")
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[0]) & (gossip.ST_INFO | gossip.ST_FRESH) == 0
    assert "Not responding" in cluster.run(1, "mosctl", "status", "3").stdout
    assert "node is not responding" in log_text(cluster, 1)

    cluster.start(3)
    for k in (1, 2, 4):
        cluster.wait_until(
            lambda k=k: cluster.node_in_view(k, 3)["alive"],
            timeout=20 * INTERVAL + 5,
            what=f"node {k} to see node 3 alive again",
        )


def test_node_with_wrong_secret_is_refused_and_logged(local_cluster):
    cluster = local_cluster(nodes=4, interval=INTERVAL)
    cluster.converged()
    cluster.stop(4)
    secret = cluster.etc(4) / "secret"
    secret.write_text("not-the-cluster-password\n")
    cluster.start(4)
    intruder = cluster.ip(4)
    cluster.wait_until(
        lambda: f"Authentication violation with {intruder}" in log_text(cluster, 1),
        timeout=30 * INTERVAL + 5,
        what="the violation to be logged on node 1",
    )
    time.sleep(10 * INTERVAL)
    for k in (1, 2, 3):
        assert not cluster.node_in_view(k, 4)["alive"]
    # and node 4 learns nothing from the others
    assert cluster.alive_seen_by(4) == {intruder}
    assert cluster.client(1).call("localstatus")["daemon"]["stats"]["auth_failures"] > 0


def _udp_from(ip: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, 0))
    return sock


def test_garbage_and_replayed_datagrams_do_not_hurt(local_cluster):
    cluster = local_cluster(nodes=3, interval=INTERVAL)
    cluster.converged()
    port = cluster.client(1).call("localstatus")["daemon"]["udp_port"]
    target = (cluster.ip(1), port)
    key = wire.derive_key((cluster.etc(1) / "secret").read_text().strip().encode())
    sealer = wire.Sealer(key, IPv4Address(cluster.ip(2)))
    good = sealer.seal(
        wire.GOSSIP, gossip.encode_entries([(gossip.NodeStatus(IPv4Address(cluster.ip(2)), load=4242), 0.0)])
    )
    junk = [
        b"",
        b"x",
        b"MOSX",
        os.urandom(39),
        os.urandom(4000),
        good[:-1],
        good[:50],
        good + b"!",
        good[:10] + bytes([good[10] ^ 0xFF]) + good[11:],  # tampered sender
        wire.HEADER.pack(wire.MAGIC, 1, 1, 0, b"\x7f\0\0\1", 1, 1, 1, 2**32 - 1),  # absurd length
        wire.HEADER.pack(wire.MAGIC, 99, 1, 0, b"\x7f\0\0\1", 1, 1, 1, 0) + bytes(32),  # bad version
    ]
    with _udp_from(cluster.ip(2)) as from_member, _udp_from("127.254.254.254") as stranger:
        for data in junk:
            from_member.sendto(data, target)
            stranger.sendto(data, target)
        from_member.sendto(good, target)  # authentic: accepted once...
        cluster.wait_until(
            lambda: (
                cluster.node_in_view(1, 2)["load"] == 4242
                or cluster.client(1).call("localstatus")["daemon"]["stats"]["received"] > 0
            ),
            what="the authentic datagram",
        )
        before = cluster.client(1).call("localstatus")["daemon"]["stats"]["auth_failures"]
        from_member.sendto(good, target)  # ...and refused when replayed
        cluster.wait_until(
            lambda: cluster.client(1).call("localstatus")["daemon"]["stats"]["auth_failures"] > before,
            what="the replay to be refused",
        )
    stats = cluster.client(1).call("localstatus")["daemon"]["stats"]
    assert stats["garbled"] > 0
    # the daemon is alive, answers, and the cluster is still whole
    assert cluster.client(1).call("ping")["ip"] == cluster.ip(1)
    cluster.converged()


def test_peer_tcp_listener_authenticates(local_cluster):
    cluster = local_cluster(nodes=2, interval=INTERVAL)
    cluster.converged()
    port = cluster.client(1).call("localstatus")["daemon"]["tcp_port"]
    secret = (cluster.etc(1) / "secret").read_text().strip().encode()
    import json

    nonce = wire.new_nonce()
    binding = b""

    def ask(key: bytes) -> bytes:
        nonlocal binding
        with socket.create_connection((cluster.ip(1), port), source_address=(cluster.ip(2), 0), timeout=5) as s:
            s.sendall(wire.hello(nonce))
            hello = b""
            while len(hello) < wire.HELLO_SIZE:
                hello += s.recv(wire.HELLO_SIZE - len(hello))
            binding = wire.channel_binding(wire.parse_hello(hello), nonce)
            s.sendall(
                wire.Sealer(key, IPv4Address(cluster.ip(2))).seal(wire.RPC_REQUEST, b'{"op": "ping"}', binding=binding)
            )
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return data
                data += chunk
                if len(data) >= wire.HEADER.size and len(data) == wire.peek_length(data):
                    return data

    reply = wire.open_envelope(wire.derive_key(secret), ask(wire.derive_key(secret)), binding)
    assert json.loads(reply.payload)["ip"] == cluster.ip(1)
    # the same through the daemon's own client side, as node 2 would call it
    import asyncio

    from mosix_core.daemon.node import Node
    from mosix_core.daemon.peer import call

    node2 = Node(cluster.etc(2))
    answer = asyncio.run(call(node2, IPv4Address(cluster.ip(1)), {"op": "status"}))
    assert answer["ok"] and answer["speed"] == 10000
    assert asyncio.run(call(node2, IPv4Address(cluster.ip(1)), {"op": "nonsense"}))["ok"] is False
    assert ask(wire.derive_key(b"wrong")) == b""  # closed without an answer
    cluster.wait_until(
        lambda: f"Authentication violation with {cluster.ip(2)}" in log_text(cluster, 1),
        what="the TCP violation to be logged",
    )


def test_stay_lstay_block_are_visible_in_other_nodes_rstatus(local_cluster):
    cluster = local_cluster(nodes=3, interval=INTERVAL)
    cluster.converged()

    def bits_seen_by_1() -> int:
        return int(cluster.run(1, "mosctl", "rstatus", cluster.ip(2)).stdout.split()[0])

    for command, bit in (("stay", gossip.ST_STAY), ("lstay", gossip.ST_LSTAY), ("block", gossip.ST_BLOCK)):
        assert cluster.run(2, "mosctl", command).returncode == 0
        cluster.wait_until(lambda bit=bit: bits_seen_by_1() & bit, what=f"{command} to reach node 1")
    assert not bits_seen_by_1() & gossip.ST_ACCEPTS  # a blocked node accepts no one
    assert "Mode: stay lstay block" in cluster.run(1, "mosctl", "status", "2").stdout
    for command in ("nostay", "nolstay", "noblock"):
        assert cluster.run(2, "mosctl", command).returncode == 0
    cluster.wait_until(
        lambda: bits_seen_by_1() & (gossip.ST_STAY | gossip.ST_LSTAY | gossip.ST_BLOCK) == 0,
        what="the modes to be cleared at node 1",
    )
    assert bits_seen_by_1() & gossip.ST_ACCEPTS
    # a blocked node is never chosen as the best node by the others
    cluster.run(2, "mosctl", "block")
    cluster.run(3, "mosctl", "block")
    cluster.wait_until(lambda: bits_seen_by_1() & gossip.ST_BLOCK, what="block")
    cluster.wait_until(
        lambda: int(cluster.run(1, "mosctl", "rstatus", "3").stdout.split()[0]) & gossip.ST_BLOCK,
        what="block of node 3",
    )
    for _ in range(3):
        assert cluster.run(1, "mosbestnode").stdout.strip() == cluster.ip(1)


def _ask_as_nobody(socket_path: str, request: dict) -> dict:
    """Send one control request from a child process running as uid 65534."""
    import json

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop privileges, ask, report through the pipe
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(socket_path)
                s.sendall(json.dumps(request).encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    data += s.recv(65536)
            os.write(write_end, data)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def test_state_changes_need_root_but_reading_does_not(local_cluster):
    cluster = local_cluster(nodes=1, interval=INTERVAL)
    path = str(cluster.etc(1) / "var" / "mosd.sock")
    # As in /etc/mosix/var, users must be able to reach the socket; pytest's dirs are 0700.
    for directory in (cluster.etc(1) / "var", *(cluster.etc(1) / "var").parents):
        if str(directory).startswith(("/tmp/pytest-of-", "/tmp/")) and directory != directory.parent:
            if str(directory) == "/tmp":
                break
            os.chmod(directory, os.stat(directory).st_mode | 0o711)
    for request in ({"op": "setstate", "flag": "block", "value": True}, {"op": "off"}, {"op": "setpe"}, {"op": "stop"}):
        reply = _ask_as_nobody(path, request)
        assert reply == {"ok": False, "error": "Permission denied: only the Super-User may do this"}, request
    assert _ask_as_nobody(path, {"op": "status"})["ok"] is True
    # a user may not register someone else's process (pid 1 is root's)
    reply = _ask_as_nobody(path, {"op": "register", "pid": 1})
    assert reply["ok"] is False and "not yours" in reply["error"]
    assert cluster.client(1).call("ping")["off"] is False


def test_check_mosrun_applies_the_policy_and_refuses_garbage(local_cluster):
    cluster = local_cluster(nodes=1, interval=INTERVAL)
    client = cluster.client(1)
    fields = {
        "argv": ["sleep", "1"],
        "location": "-h",
        "memory_mb": 10,
        "options": ["-e"],
        "queue_jobs": None,
        "strict_limitations": False,
    }
    assert client.call("check_mosrun", request=fields) == {"request": fields}  # no policy: unchanged
    # the site's strictness is mosd.conf's, not the caller's
    assert client.call("check_mosrun", request={**fields, "strict_limitations": True}) == {"request": fields}
    (cluster.etc(1) / "mosrun.conf").write_text("require_memory = yes\nunsupported = warn\n")
    # root is exempt from require_memory; the site default (-w) is added for everyone
    changed = client.call("check_mosrun", request={**fields, "memory_mb": None, "options": []})["request"]
    assert changed["options"] == ["-w"] and changed["memory_mb"] is None
    (cluster.etc(1) / "mosrun.conf").write_text("best = sometimes\n")
    with pytest.raises(Refused) as refused:
        client.call("check_mosrun", request=fields)
    assert "mosrun.conf:1:" in str(refused.value) and "sometimes" in str(refused.value)
    for bad in (
        None,
        [],
        {"argv": "sleep"},
        {**fields, "argv": "sleep 1"},
        {**fields, "memory_mb": "10"},
        {**fields, "options": [1]},
        {**fields, "uid": 0},
        {**fields, "location": 5},
        {**fields, "strict_limitations": 1},
    ):
        with pytest.raises(ProtocolError, match="mosrun request"):
            client.call("check_mosrun", request=bad)
    assert client.call("ping")["pid"]  # the daemon is still there


def test_a_refusal_arrives_as_refused_with_the_manuals_message(local_cluster):
    """Every answer that refuses crosses the wire in one shape and is raised again as
    Refused; a bad request is a ProtocolError, never a refusal."""
    from mosix_core.daemon import protocol as p

    cluster = local_cluster(nodes=2, interval=INTERVAL)
    cluster.converged()
    client = cluster.client(1)
    me = os.getpid()
    for to, message in (("10.99.99.99", "not in map"), (cluster.ip(1), "already there"), ("2", "already there")):
        now_at = cluster.ip(2) if to == "2" else None
        with pytest.raises(Refused) as refused:
            client.request_for_socket(p.MigrateOutRequest(pid=me, to=to, now_at=now_at))
        assert str(refused.value) == message, to
    # the target's own refusal (a blocked node takes no one) comes back as it said it
    assert cluster.run(2, "mosctl", "block").returncode == 0
    with pytest.raises(Refused, match="^other node refused$") as refused:
        client.request_for_socket(p.MigrateOutRequest(pid=me, to="2"))
    assert refused.value.details == {"target": cluster.ip(2)}
    # the untyped form that mosrun's supervisor reads keeps its shape
    assert client.call_for_socket("migrate_out", pid=me, to="2") == (
        {"refused": "other node refused", "target": cluster.ip(2)},
        None,
    )
    with pytest.raises(Refused, match="not in map"):
        client.request(p.StatusRequest(node="10.99.99.99"))
    # on the wire: refused is ok false with the message and nothing else
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(cluster.etc(1) / "var" / "mosd.sock"))
        s.sendall(b'{"op": "migrate_out", "pid": %d, "to": "10.99.99.99"}\n' % me)
        assert json.loads(s.makefile().readline()) == {"ok": False, "error": "not in map"}
    with pytest.raises(ProtocolError, match="pid: must be in"):
        client.call("migrate_out", pid=-5, to="2")
    assert client.request(p.PingRequest()).ip == cluster.ip(1)


def test_mossetpe_reloads_the_map_without_restart(local_cluster):
    cluster = local_cluster(nodes=4, interval=INTERVAL)
    cluster.converged()
    pid_before = cluster.client(1).call("ping")["pid"]
    smaller = cluster.root / "two.map"
    smaller.write_text(f"{cluster.ip(1)} 2 p\n")
    out = cluster.run(1, "mossetpe", "-m", str(smaller))
    assert out.returncode == 0, out.stderr
    listing = cluster.run(1, "mossetpe", "-r").stdout
    assert f"{cluster.ip(1)}-{cluster.ip(2)} (2 nodes) proximate" in listing
    assert {n["ip"] for n in cluster.view(1)} == {cluster.ip(1), cluster.ip(2)}
    assert cluster.client(1).call("ping")["pid"] == pid_before
    # back to the full map from mosix.map
    assert cluster.run(1, "mossetpe", "-A").returncode == 0
    cluster.wait_until(lambda: len(cluster.alive_seen_by(1)) == 4, what="node 1 to see all 4 again")


def test_mossetpe_off_disables_the_node(local_cluster):
    cluster = local_cluster(nodes=3, interval=INTERVAL)
    cluster.converged()
    assert cluster.run(1, "mossetpe", "-off").returncode == 0
    assert "turned off" in cluster.run(1, "mosctl", "status").stdout
    cluster.wait_until(
        lambda: not cluster.node_in_view(2, 1)["alive"], timeout=30, what="node 2 to stop hearing node 1"
    )
    assert cluster.run(1, "mossetpe").returncode == 0
    cluster.wait_until(lambda: cluster.node_in_view(2, 1)["alive"], what="node 1 to come back")


def test_bestnode_promises_starts_and_honours_memory(local_cluster):
    cluster = local_cluster(nodes=3, interval=1.0, memory_mb=2048)
    cluster.converged()
    # -n: information only, the same answer every time
    informed = {cluster.run(1, "mosbestnode", "-n").stdout.strip() for _ in range(3)}
    assert len(informed) == 1
    # without -n each answer assumes a process is about to start there
    chosen = [cluster.run(1, "mosbestnode").stdout.strip() for _ in range(3)]
    assert sorted(chosen) == sorted(cluster.ip(k) for k in range(1, 4)), chosen
    assert cluster.run(1, "mosbestnode", "-u", "-n").stdout.strip() in {"1", "2", "3"}
    assert cluster.run(1, "mosbestnode", "-m4000").stdout.strip() == "0"
    assert cluster.run(1, "mosbestnode", "-m", "1000", "-n").stdout.strip() != "0"


def test_load_of_hosted_processes_propagates(local_cluster):
    import subprocess
    import sys

    cluster = local_cluster(nodes=3, interval=INTERVAL)
    cluster.converged()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        cluster.client(3).call("register", pid=busy.pid)
        cluster.wait_until(
            lambda: cluster.node_in_view(1, 3)["load"] >= 50, timeout=10, what="node 1 to see node 3 loaded"
        )
        assert cluster.node_in_view(1, 3)["nprocs"] == 1
        assert cluster.run(1, "mosbestnode", "-n").stdout.strip() != cluster.ip(3)
    finally:
        busy.kill()
        busy.wait()
    cluster.wait_until(
        lambda: cluster.client(3).call("processes")["processes"] == [], what="the exited process to leave the table"
    )
    cluster.wait_until(lambda: cluster.node_in_view(1, 3)["load"] < 20, timeout=15, what="node 3's load to decay")


def test_whois_status_and_errors(local_cluster):
    cluster = local_cluster(nodes=3, interval=INTERVAL)
    cluster.converged()
    assert cluster.run(1, "mosctl", "whois", cluster.ip(3)).stdout.strip() == "3"
    assert cluster.run(1, "mosctl", "whois").stdout.strip() == "1"
    name = cluster.run(1, "mosctl", "whois", "2").stdout.strip()
    assert name  # host name if resolvable, else the address
    out = cluster.run(1, "mosctl", "status", "9")
    assert out.returncode == 1 and "not in map" in out.stderr and "Traceback" not in out.stderr
    out = cluster.run(1, "mosctl", "status", "10.9.9.9")
    assert out.returncode == 1 and "not in map" in out.stderr
    rstatus = cluster.run(1, "mosctl", "rstatus", "2", "--json")
    assert rstatus.returncode == 0 and '"speed": 10000' in rstatus.stdout
    assert len(cluster.run(1, "mosctl", "rstatus").stdout.split()) == 12
    # a second mosd for the same node is refused
    out = cluster.run(1, "mosd", "--foreground")
    assert out.returncode == 1 and "already running" in out.stderr
    cluster.stop(1)
    out = cluster.run(1, "mosctl", "status")
    assert out.returncode == 1 and "MOSIX is not running" in out.stderr and "Traceback" not in out.stderr


def test_mossetpe_with_a_broken_map_keeps_the_running_configuration(local_cluster):
    cluster = local_cluster(nodes=3, interval=INTERVAL)
    cluster.converged()
    mapfile = cluster.etc(1) / "mosix.map"
    good = mapfile.read_text()
    mapfile.write_text(good + "255.255.255.1 1\n")
    out = cluster.run(1, "mossetpe")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"{mapfile}:3:" in out.stderr
    # nothing lost: same daemon, same view, still gossiping
    assert len(cluster.alive_seen_by(1)) == 3
    mapfile.write_text(good)
    assert cluster.run(1, "mossetpe").returncode == 0
    cluster.converged()


def test_bestnode_waits_for_a_node_with_enough_memory(local_cluster):
    import subprocess

    from tests.helpers.cluster import tool_argv

    cluster = local_cluster(nodes=2, interval=INTERVAL, memory_mb=2048)
    cluster.converged()
    waiting = subprocess.Popen(
        tool_argv("mosbestnode", "-w", "-m3000"), env=cluster.env(1), stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(1.5)
        assert waiting.poll() is None  # no node has 3000 MB free: still waiting
        conf = cluster.etc(2) / "mosd.conf"
        conf.write_text(conf.read_text().replace("virtual_memory_mb = 2048", "virtual_memory_mb = 8192"))
        assert cluster.run(2, "mossetpe").returncode == 0  # node 2 now reports more memory
        out, _ = waiting.communicate(timeout=15)
        assert out.strip() == cluster.ip(2)
    finally:
        waiting.kill()


def test_a_slow_but_live_node_is_probed_not_declared_dead(local_cluster):
    """Node 2 gossips only every 30 s; node 1 would take it for dead after 10 of its own
    0.2 s periods, but probes it first and gets an immediate answer."""
    cluster = local_cluster(nodes=2, interval=INTERVAL)
    cluster.converged()
    cluster.stop(2)
    conf = cluster.etc(2) / "mosd.conf"
    conf.write_text(conf.read_text().replace(f"gossip_interval = {INTERVAL}", "gossip_interval = 30.0"))
    cluster.start(2)
    cluster.wait_until(lambda: cluster.node_in_view(1, 2)["alive"], what="node 1 to hear node 2")
    dead_after = cluster.client(1).call("view")["dead_after"]
    deadline = time.monotonic() + 3 * dead_after
    while time.monotonic() < deadline:
        entry = cluster.node_in_view(1, 2)
        assert entry["alive"], entry
        assert entry["age"] <= dead_after
        time.sleep(0.1)
    assert cluster.client(1).call("localstatus")["daemon"]["stats"]["probes"] > 0
    # and a node that really stops answering is still declared dead
    cluster.stop(2)
    cluster.wait_until(
        lambda: not cluster.node_in_view(1, 2)["alive"], timeout=dead_after + 5, what="node 1 to see node 2 dead"
    )


def test_mossetpe_lists_the_cluster_and_the_multi_cluster(local_cluster):
    cluster = local_cluster(nodes=2, interval=INTERVAL)
    (cluster.etc(1) / "partners" / "chemistry").write_text(
        "Chemistry department cluster\n50 1 0\n10.77.0.1 16 1 1 0\n10.78.0.1 2 1 1 1\n"
    )
    assert cluster.run(1, "mossetpe", "-A").returncode == 0
    local = cluster.run(1, "mossetpe", "-r").stdout
    assert f"This is MOSIX node #1 ({cluster.ip(1)})" in local
    assert "chemistry" not in local
    multi = cluster.run(1, "mossetpe", "-R").stdout.splitlines()
    assert "partner chemistry (Chemistry department cluster): pri=50 dont_take" in multi
    assert "    10.77.0.1-10.77.0.16 (16 nodes)" in multi
    assert "    10.78.0.1-10.78.0.2 (2 nodes) proximate" in multi
    # the partner's nodes are known to the configuration: rstatus answers for them (no information yet)
    out = cluster.run(1, "mosctl", "rstatus", "10.77.0.5")
    assert out.returncode == 0 and out.stdout.split()[0] == "1"
