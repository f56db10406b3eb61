"""Site hook modules loaded by path into real daemons and tools (hooks_dir in mosd.conf)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.cluster

EVENTS_HOOK = """
from pathlib import Path

import typer

from mosix_core.contract.hookspecs import hookimpl

EVENTS = Path(__file__).with_name("events.log")


def record(*words):
    with open(EVENTS, "a") as f:
        f.write(" ".join(str(w) for w in words) + "\\n")


@hookimpl
def mosix_node_started(node):
    record("started", node.ip)


@hookimpl
def mosix_node_stopping(node):
    record("stopping", node.ip)


@hookimpl
def mosix_view_changed(view, alive, dead):
    for ip in alive:
        record(view.local_ip, "sees-alive", ip)
    for ip in dead:
        record(view.local_ip, "sees-dead", ip)


@hookimpl
def mosix_process_event(event):
    record("process", event.kind, event.pid)


@hookimpl
def mosix_status_fields(node):
    return [("Rack", f"rack-of-{node.ip}")]


rack = typer.Typer()


@rack.command()
def show():
    typer.echo("this node is in rack seven")


@hookimpl
def mosix_cli_commands():
    return [("rack", rack)]
"""

# Gossip over Unix datagram sockets: no UDP at all. The kernel only hands the
# transport sealed bytes, so swapping it changes nothing else.
UNIX_TRANSPORT_HOOK = """
import asyncio
import os
import socket
from pathlib import Path

from mosix_core.contract.hookspecs import hookimpl

SOCKETS = Path(__file__).with_name("sockets")


class UnixTransport:
    def __init__(self, ip):
        self.path = SOCKETS / str(ip)
        self.sock = None

    async def start(self, on_datagram):
        SOCKETS.mkdir(exist_ok=True)
        if self.path.exists():
            self.path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.setblocking(False)

        def readable():
            while True:
                try:
                    data, source = self.sock.recvfrom(65536)
                except BlockingIOError:
                    return
                on_datagram(data, os.path.basename(source))

        asyncio.get_running_loop().add_reader(self.sock.fileno(), readable)

    def send(self, ip, data):
        try:
            self.sock.sendto(data, str(SOCKETS / str(ip)))
        except (FileNotFoundError, ConnectionRefusedError):
            pass  # that node is down

    def close(self):
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None


@hookimpl
def mosix_gossip_transport(node):
    return UnixTransport(node.ip)
"""


@pytest.fixture
def hooks_dir(tmp_path):
    directory = tmp_path / "site-hooks"
    directory.mkdir()
    (directory / "events.py").write_text(EVENTS_HOOK)
    return directory


def test_site_hooks_see_the_life_of_a_cluster(local_cluster, hooks_dir):
    cluster = local_cluster(nodes=3, interval=0.2, extra_conf=f"hooks_dir = {hooks_dir}\n")
    cluster.converged()
    events = hooks_dir / "events.log"
    for k in (1, 2, 3):
        assert f"started {cluster.ip(k)}" in events.read_text()
    cluster.wait_until(
        lambda: f"{cluster.ip(1)} sees-alive {cluster.ip(3)}" in events.read_text(),
        what="node 1 to announce node 3 alive",
    )
    cluster.stop(3)
    assert f"stopping {cluster.ip(3)}" in events.read_text()
    cluster.wait_until(
        lambda: f"{cluster.ip(1)} sees-dead {cluster.ip(3)}" in events.read_text(),
        timeout=15,
        what="node 1 to announce node 3 dead",
    )

    status = cluster.run(1, "mosctl", "localstatus")
    assert f"Rack: rack-of-{cluster.ip(1)}" in status.stdout, status.stderr
    rack = cluster.run(1, "mosctl", "rack", "show")
    assert rack.returncode == 0 and "rack seven" in rack.stdout, rack.stderr
    plugins = cluster.run(1, "mosplugins")
    assert "site:events" in plugins.stdout and str(hooks_dir / "events.py") in plugins.stdout

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        cluster.client(1).call("register", pid=child.pid)
        cluster.wait_until(lambda: f"process started {child.pid}" in events.read_text(), what="start event")
    finally:
        child.kill()
        child.wait()
    cluster.wait_until(lambda: f"process exited {child.pid}" in events.read_text(), what="exit event")


def test_a_site_transport_replaces_udp(local_cluster, hooks_dir):
    (hooks_dir / "events.py").unlink()
    (hooks_dir / "unix_transport.py").write_text(textwrap.dedent(UNIX_TRANSPORT_HOOK))
    # The built-in UDP transport is disabled by name: the nodes can only meet through the site's.
    cluster = local_cluster(
        nodes=3, interval=0.2, extra_conf=f"hooks_dir = {hooks_dir}\ndisabled_plugins = udp_gossip\n"
    )
    cluster.converged()
    assert sorted(p.name for p in (hooks_dir / "sockets").iterdir()) == sorted(cluster.ip(k) for k in (1, 2, 3))
    plugins = cluster.client(1).call("localstatus")["daemon"]["plugins"]
    assert "udp_gossip" not in plugins and "site:unix_transport" in plugins
