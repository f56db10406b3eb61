"""Starting and stopping mosd: the pid-file lock, sockets, signals, the main loop."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mosix_core import log, paths
from mosix_core.contract.plugins import first_answer
from mosix_core.contract.records import NodeContext
from mosix_core.daemon.control import ControlServer
from mosix_core.daemon.node import Node
from mosix_core.daemon.peer import PeerServer
from mosix_core.errors import DaemonUnavailable, MosixError
from mosix_core.linux.procfs import stat_fields


class PidLock:
    """One mosd per configuration directory: an flock()ed pid file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise MosixError(f"mosd is already running for {self.path.parent.parent} (pid {other or '?'})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                self.path.unlink()
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None


async def _serve(node: Node) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    peer = PeerServer(node)

    async def bind_network() -> None:
        if node.transport is not None:
            node.transport.close()
        peer.close()
        transport = first_answer(node.pm.hook.mosix_gossip_transport, node=NodeContext.of(node))
        await transport.start(node.on_datagram)
        node.transport = transport
        await peer.start()

    try:
        await bind_network()
    except OSError as err:
        raise MosixError(
            f"cannot bind {node.our_ip} (UDP {node.settings.udp_port}, TCP {node.settings.tcp_port}): "
            f"{err.strerror or err}"
        ) from None

    async def reconfigure() -> None:
        await bind_network()

    async def reload_on_hup() -> None:
        try:
            changed = node.reload(map_override=node.map_override, ip_override=node.ip_override)
            if changed:
                await bind_network()
        except MosixError as err:
            node.log.error("reload failed; keeping the old configuration", error=str(err))

    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload_on_hup()))
    control = node.control = ControlServer(node, paths.control_socket(node.etc))
    control.on_reconfigure = reconfigure
    control.on_stop = stop.set
    await control.start()
    node.pm.hook.mosix_node_started(node=NodeContext.of(node))
    node.log.info(
        "mosd started",
        ip=str(node.our_ip),
        nodes=len(node.config.cluster),
        udp=node.settings.udp_port,
        tcp=node.settings.tcp_port,
        interval=node.interval,
        dead_after=node.dead_after,
    )
    try:
        await node.run_loops(stop)
    finally:
        node.pm.hook.mosix_node_stopping(node=NodeContext.of(node))
        control.close()
        peer.close()
        if node.transport is not None:
            node.transport.close()
        node.log.info("mosd stopped")


def _log_to_own_file(etc: Path) -> None:
    """When stderr is mosd's log file (as :func:`start_background` starts it), log
    there rotated: anyone on the network can make mosd log, and the file must not grow
    without bound."""
    path = paths.log_file(etc)
    try:
        ours, theirs = os.fstat(2), os.stat(path)
    except OSError:
        return
    if (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino):
        log.configure(log_file=path)


def run_foreground(etc: Path, *, map_override: Path | None = None, ip_override: str | None = None) -> None:
    """Run mosd in this process until SIGTERM/SIGINT (or ``mosd --stop``)."""
    lock = PidLock(paths.pid_file(etc))
    lock.acquire()
    try:
        _log_to_own_file(etc)
        node = Node(etc, map_override=map_override, ip_override=ip_override)
        asyncio.run(_serve(node))
    finally:
        lock.release()


def start_background(
    etc: Path, *, map_override: Path | None = None, ip_override: str | None = None, wait: float = 15.0
) -> int:
    """Start mosd detached (log in ``var/mosd.log``); return its pid once it answers."""
    from mosix_core.daemon.client import Client
    from mosix_core.daemon.protocol import PingRequest

    log_path = paths.log_file(etc)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "mosix_core.cli.mosd", "--etc", str(etc), "--foreground"]
    if map_override:
        argv += ["-m", str(map_override)]
    if ip_override:
        argv += ["-p", ip_override]
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            start_new_session=True,
            env={**os.environ, "MOSIX_ETC": str(etc)},
        )
    deadline = time.monotonic() + wait
    client = Client(etc)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise MosixError("mosd failed to start:\n" + "\n".join(tail))
        try:
            if client.request(PingRequest()).pid == proc.pid:
                return proc.pid
        except DaemonUnavailable:
            pass
        time.sleep(0.05)
    proc.terminate()
    raise MosixError(f"mosd did not answer within {wait:.0f} s (see {log_path})")


def stop(etc: Path, wait: float = 10.0) -> int | None:
    """Stop the mosd of ``etc`` (SIGTERM via its pid file); return its pid, or None if none ran."""
    pid_path = paths.pid_file(etc)
    try:
        pid = int(pid_path.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return pid
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return pid


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent counts as gone)."""
    fields = stat_fields(pid)
    return bool(fields) and fields[0] not in (b"Z", b"X")
