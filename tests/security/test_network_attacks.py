"""A stranger on the network against real mosd daemons (issue 17, items 4, 7 and 8).

The attacker can reach mosd's ports from any 127/8 address — the addresses of the
cluster's nodes included, as a local user of a node could — but holds no secret.
The attacks speak whatever the listener speaks (a connection's hello is no secret),
so each one is the attack on the old daemon and on the new one alike.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import threading
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from mosix_core import log as mosix_log
from mosix_core.daemon import handshake, protocol
from mosix_core.daemon import node as mosd_node
from mosix_core.daemon.node import Node
from mosix_core.daemon.peer import call
from mosix_core.errors import AuthenticationError
from mosix_core.net import wire

pytestmark = pytest.mark.cluster

INTERVAL = 0.2
HELLO = b"MOSXHELO"  # a connection's hello, when the listener sends one
HELLO_SIZE = len(HELLO) + 16


# -- looking at the daemon from outside ---------------------------------------------------------------
def mosd_pid(cluster, k: int) -> int:
    return cluster.client(k).call("localstatus")["daemon"]["pid"]


def tcp_port(cluster, k: int = 1) -> int:
    return cluster.client(k).call("localstatus")["daemon"]["tcp_port"]


def stats(cluster, k: int = 1) -> dict:
    return cluster.client(k).call("localstatus")["daemon"]["stats"]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def open_sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            pass
    return count


def log_text(cluster, k: int = 1) -> str:
    return (cluster.etc(k) / "var" / "mosd.log").read_text(errors="replace")


def timed_status(cluster) -> float:
    started = time.monotonic()
    out = cluster.run(1, "mosctl", "status", timeout=60)
    assert out.returncode == 0, out.stderr
    return time.monotonic() - started


def legitimate_call(cluster) -> dict:
    """Node 2 asks node 1 for its status, as the daemon's own client side does."""
    return asyncio.run(call(Node(cluster.etc(2)), IPv4Address(cluster.ip(1)), {"op": "status"}, timeout=20))


# -- the attacker's side -------------------------------------------------------------------------------
def connect(cluster, source: str) -> socket.socket:
    return socket.create_connection((cluster.ip(1), tcp_port(cluster)), source_address=(source, 0), timeout=10)


def answer_hellos(socks: list[socket.socket], wait: float = 1.0) -> None:
    """Send a hello back on each connection whose listener sent one first."""
    time.sleep(wait)
    for s in socks:
        s.setblocking(False)
        try:
            got = s.recv(HELLO_SIZE, socket.MSG_PEEK)
        except (BlockingIOError, OSError):
            got = b""
        s.setblocking(True)
        s.settimeout(10)
        if got.startswith(HELLO):
            s.recv(HELLO_SIZE)
            s.sendall(HELLO + os.urandom(16))


def closed_by_peer(s: socket.socket, timeout: float) -> bool:
    """True if the other end closes ``s`` within ``timeout`` (whatever it sent before)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not s.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


def big_header(sender: str) -> bytes:
    """A frame header declaring the largest payload the wire format allows."""
    return wire.HEADER.pack(
        b"MOSX", 1, 2, 0, IPv4Address(sender).packed, 1, 1, int(time.time() * 1000), 64 * 1024 * 1024
    )


# -- item 4 --------------------------------------------------------------------------------------------
def test_oversized_frames_before_authentication_hold_no_memory(local_cluster):
    cluster = local_cluster(nodes=2, interval=INTERVAL)
    cluster.converged()
    pid = mosd_pid(cluster, 1)
    before = rss_kib(pid)
    connections, each = 32, 8 * 1024 * 1024
    socks = [connect(cluster, cluster.ip(2)) for _ in range(connections)]
    try:
        answer_hellos(socks)

        def flood(s: socket.socket) -> None:
            try:
                s.sendall(big_header(cluster.ip(2)))
                s.sendall(bytes(each))
            except OSError:
                pass  # closed on us: what should happen

        threads = [threading.Thread(target=flood, args=(s,)) for s in socks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        # the attack connections are still open on our side: the daemon must hold
        # (nearly) nothing for them, and answer its users and its peers at once
        grown = rss_kib(pid) - before
        elapsed = timed_status(cluster)
        assert legitimate_call(cluster)["ok"]
        assert grown < 24 * 1024, f"mosd grew by {grown} KiB under {connections} oversized frames"
        assert elapsed < 15, f"mosctl status took {elapsed:.1f} s under attack"
        assert all(closed_by_peer(s, 15) for s in socks)
    finally:
        for s in socks:
            s.close()
    assert cluster.client(1).call("ping")["ip"] == cluster.ip(1)


def test_idle_and_slow_connections_are_bounded_and_dropped(local_cluster):
    cluster = local_cluster(nodes=2, interval=INTERVAL)
    cluster.converged()
    pid = mosd_pid(cluster, 1)
    base = open_sockets(pid)
    stranger = re.sub(r"\.\d+$", ".200", cluster.ip(1))  # outside the map
    socks = []
    try:
        for source, count in ((cluster.ip(2), 200), (cluster.ip(1), 50), (stranger, 50)):
            socks += [connect(cluster, source) for _ in range(count)]
        slow = connect(cluster, cluster.ip(2))  # a byte at a time, never a whole request
        socks.append(slow)
        opened = time.monotonic()
        # the daemon accepts all of them, but holds only a bounded number at once
        time.sleep(1.0)
        held = open_sockets(pid) - base
        assert held <= 64, f"mosd holds {held} sockets for {len(socks)} unauthenticated connections"
        # and still serves its users and its peers (an honest peer gets in at once)
        assert timed_status(cluster) < 15
        assert legitimate_call(cluster)["ok"]

        def drip() -> None:
            for byte in b"MOSX" * 20:
                try:
                    slow.send(bytes([byte]))
                except OSError:
                    return
                time.sleep(0.25)

        dripping = threading.Thread(target=drip)
        dripping.start()
        # every one of them is closed well before a minute (the old frame timeout was 30 s)
        waiting = [s for s in socks if not closed_by_peer(s, max(0.01, 15 - (time.monotonic() - opened)))]
        dripping.join(30)
        assert not waiting, f"{len(waiting)} unauthenticated connections still open after 15 s"
        assert open_sockets(pid) - base <= 4
    finally:
        for s in socks:
            s.close()


# -- item 7 --------------------------------------------------------------------------------------------
def test_a_frame_sealed_for_one_connection_is_worth_nothing_elsewhere():
    key = wire.derive_key(b"cluster password")
    sealer = wire.Sealer(key, IPv4Address("127.0.0.2"))
    here = wire.channel_binding(wire.new_nonce(), wire.new_nonce())
    frame = sealer.seal(wire.RPC_REQUEST, b'{"op": "migrate-in"}', binding=here)
    assert wire.open_envelope(key, frame, here).payload == b'{"op": "migrate-in"}'
    elsewhere = wire.channel_binding(wire.new_nonce(), here[wire.NONCE_SIZE :])  # same caller nonce
    for binding in (elsewhere, b""):  # another connection; a datagram
        with pytest.raises(AuthenticationError):
            wire.open_envelope(key, frame, binding)
    with pytest.raises(AuthenticationError):  # and a datagram is no frame of a connection
        wire.open_envelope(key, sealer.seal(wire.RPC_REQUEST, b"{}"), here)


class Tap:
    """A relay between a caller and node 1's peer port that keeps what the caller sent."""

    def __init__(self, listen_ip: str, target: tuple[str, int], source_ip: str) -> None:
        self.server = socket.create_server((listen_ip, 0))
        self.address = self.server.getsockname()
        self.target, self.source_ip = target, source_ip
        self.sent = bytearray()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        caller, _ = self.server.accept()
        upstream = socket.create_connection(self.target, source_address=(self.source_ip, 0))

        def pump(src: socket.socket, dst: socket.socket, keep: bytearray | None) -> None:
            try:
                while chunk := src.recv(65536):
                    if keep is not None:
                        keep += chunk
                    dst.sendall(chunk)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        back = threading.Thread(target=pump, args=(upstream, caller, None), daemon=True)
        back.start()
        pump(caller, upstream, self.sent)
        back.join(10)
        caller.close()
        upstream.close()
        self.server.close()


def test_migrate_in_replayed_after_the_target_restarts_is_refused(local_cluster):
    cluster = local_cluster(nodes=2, interval=INTERVAL)
    cluster.converged()
    key = wire.derive_key((cluster.etc(2) / "secret").read_text().strip().encode())
    tap = Tap(re.sub(r"\.\d+$", ".250", cluster.ip(1)), (cluster.ip(1), tcp_port(cluster)), cluster.ip(2))
    # node 2's mosd asking node 1 to take a process, exactly as it does (through the tap)
    request = protocol.MigrateInRequest(uid=0, user="root", pid=os.getpid(), memory_mb=1, command="sleep 100")
    accepted = handshake.open_migration(
        wire.Sealer(key, IPv4Address(cluster.ip(2))), key, IPv4Address(tap.address[0]), tap.address[1], request
    )
    accepted.close()  # the guest host it got ends: no image follows
    tap.thread.join(20)
    captured = bytes(tap.sent)
    assert b"migrate-in" in captured

    cluster.stop(1)
    cluster.start(1)
    cluster.wait_until(lambda: cluster.client(1).call("ping"), what="node 1 to be back")
    with connect(cluster, cluster.ip(2)) as s:
        s.sendall(captured)
        answer = b""
        s.settimeout(10)
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except (TimeoutError, OSError):
            pass
    if answer.startswith(HELLO):
        answer = answer[HELLO_SIZE:]
    if answer:  # a sealed reply: it must not be an acceptance
        reply = json.loads(answer[wire.HEADER.size : -wire.MAC_SIZE])
        assert not reply.get("ok"), f"node 1 took a replayed migrate-in: {reply}"
    assert cluster.client(1).call("localstatus")["processes"]["guests"] == 0
    cluster.wait_until(
        lambda: f"Authentication violation with {cluster.ip(2)}" in log_text(cluster), what="the replay to be logged"
    )


# -- item 8 --------------------------------------------------------------------------------------------
def send_from_many(port_of: tuple[str, int], data: bytes, sources: range, prefix: str) -> None:
    for i in sources:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((f"{prefix}.{i >> 8 & 255}.{i & 255}", 0))
            s.sendto(data, port_of)


def bad_mac_datagram(sender: str) -> bytes:
    """Well framed, right sender, wrong key: a "Authentication violation"."""
    return wire.Sealer(wire.derive_key(b"not the cluster secret"), IPv4Address(sender)).seal(wire.GOSSIP, b"\0\0")


def test_bad_mac_flood_from_many_sources_is_bounded(local_cluster):
    cluster = local_cluster(nodes=2, interval=INTERVAL)
    cluster.converged()
    port = cluster.client(1).call("localstatus")["daemon"]["udp_port"]
    logged_before = log_text(cluster).count("Authentication violation with")
    size_before = (cluster.etc(1) / "var" / "mosd.log").stat().st_size
    started = time.monotonic()
    sources = 30000
    send_from_many((cluster.ip(1), port), bad_mac_datagram(cluster.ip(2)), range(1, sources + 1), "127.251")
    # wait until mosd has taken in what it will of the flood (the socket drops the excess)
    last = -1
    while (seen := stats(cluster)["auth_failures"]) != last:
        last = seen
        time.sleep(0.5)
    assert seen >= 2000, f"only {seen} of {sources} datagrams reached mosd: no flood to speak of"
    elapsed = time.monotonic() - started
    lines = log_text(cluster).count("Authentication violation with") - logged_before
    allowed = mosd_node.AUTH_LOG_BURST + mosd_node.AUTH_LOG_RATE * elapsed + 2
    assert lines <= allowed, f"{lines} lines logged for {seen} violations in {elapsed:.1f} s"
    grown = (cluster.etc(1) / "var" / "mosd.log").stat().st_size - size_before
    assert grown < 64 * 1024, f"the log grew by {grown} bytes"
    # what mosd remembers per source stays bounded
    assert stats(cluster)["auth_sources"] <= mosd_node.AUTH_LOG_SOURCES
    cluster.wait_until(
        lambda: re.search(r"\d+ more authentication violations suppressed", log_text(cluster)),
        timeout=mosd_node.AUTH_SUMMARY_EVERY + 20,
        what="the summary line",
    )
    assert cluster.client(1).call("ping")["ip"] == cluster.ip(1)
    cluster.converged()


def all_logs(var) -> str:
    """Every log file's text; a file renamed by a rotation meanwhile is read under its new name."""
    texts = []
    for path in sorted(var.glob("mosd.log*")):
        try:
            texts.append(path.read_text(errors="replace"))
        except FileNotFoundError:
            return all_logs(var)
    return "".join(texts)


def test_mosd_log_is_rotated_and_bounded(local_cluster):
    cluster = local_cluster(nodes=2, interval=INTERVAL)
    cluster.converged()
    port = cluster.client(1).call("localstatus")["daemon"]["udp_port"]
    var = cluster.etc(1) / "var"
    current = var / "mosd.log"
    filler = (b"x" * 1023 + b"\n") * 1024
    for round in range(1, mosix_log.LOG_BACKUPS + 3):
        # what a long life of logging would have left (appended as mosd appends)
        with open(current, "ab") as f:
            while f.tell() < mosix_log.LOG_MAX_BYTES:
                f.write(filler)
        marker = f"127.252.0.{round}"
        send_from_many((cluster.ip(1), port), bad_mac_datagram(cluster.ip(2)), range(round, round + 1), "127.252")
        cluster.wait_until(
            lambda: f"Authentication violation with {marker}" in all_logs(var), what=f"violation {round} to be logged"
        )
        cluster.wait_until(
            lambda: current.stat().st_size < mosix_log.LOG_MAX_BYTES, timeout=20, what="the log to be rotated"
        )
    expected = ["mosd.log"] + [f"mosd.log.{i}" for i in range(1, mosix_log.LOG_BACKUPS + 1)]
    # the last rotation's renames may still be under way when the new file is small
    cluster.wait_until(
        lambda: [p.name for p in sorted(var.glob("mosd.log*"))] == expected, timeout=20, what=f"exactly {expected}"
    )
    logs = sorted(var.glob("mosd.log*"))
    for p in logs:
        assert p.stat().st_size < mosix_log.LOG_MAX_BYTES + 64 * 1024, p
    # the daemon goes on logging into the current file
    send_from_many((cluster.ip(1), port), bad_mac_datagram(cluster.ip(2)), range(200, 201), "127.252")
    cluster.wait_until(
        lambda: "Authentication violation with 127.252.0.200" in current.read_text(errors="replace"),
        what="a line in the new file",
    )
