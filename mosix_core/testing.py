"""pytest plugin of mosix-py (registered through the ``pytest11`` entry point).

Fixtures for real tests — no mocks of anything we can run:

* ``mosix_etc``: a private, valid configuration tree for one node on a fresh loopback address.
* ``local_cluster``: a factory starting N real mosd daemons on 127.X.Y.1 … N, each test on
  addresses of its own so tests never collide; everything is stopped at teardown.
* ``run_tool``: run a ``mos*`` command as a subprocess, exactly as a user would.
* ``small_tmpfs``: a real 1 MiB tmpfs, for running out of space (freezing, checkpoints).
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Callable

import pytest

from mosix_core import localcluster
from mosix_core.client import Client
from mosix_core.errors import MosixError
from mosix_core.linux import procfs

TOOLS = {
    "mosd",
    "mossetpe",
    "mosctl",
    "mosmon",
    "mosbestnode",
    "moscluster",
    "mosplugins",
    "mostestload",
    "mosps",
    "moskillall",
    "mostimeof",
    "mosrun",
    "mosmigrate",
}

# Each test gets a /24 of its own in 127.0.0.0/8: second octet from the pytest worker's
# pid, third from a counter, so parallel runs and lingering sockets never collide.
_subnets = itertools.count(1)


def fresh_base_ip() -> IPv4Address:
    second = 10 + os.getpid() % 200
    third = next(_subnets) % 250 + 1
    return IPv4Address(f"127.{second}.{third}.1")


def tool_argv(tool: str, *args: str) -> list[str]:
    """argv running a mos* tool with this interpreter (works without the venv on PATH)."""
    if tool not in TOOLS:
        raise ValueError(f"unknown tool {tool}")
    return [sys.executable, "-m", f"mosix_core.cli.{tool}", *args]


def run_tool(tool: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60,
             input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(tool_argv(tool, *args), env=env, capture_output=True, text=True, timeout=timeout,
                          input=input)


class LocalCluster:
    """A running local cluster, as tests use it."""

    def __init__(self, root: Path, layout: localcluster.ClusterLayout) -> None:
        self.root = root
        self.layout = layout

    @property
    def nodes(self) -> int:
        return self.layout.nodes

    def etc(self, k: int) -> Path:
        return self.layout.etc(k)

    def ip(self, k: int) -> str:
        return str(self.layout.addresses[k - 1])

    def env(self, k: int) -> dict[str, str]:
        return {**os.environ, "MOSIX_ETC": str(self.etc(k))}

    def run(self, k: int, tool: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess:
        return run_tool(tool, *args, env=self.env(k), **kwargs)

    def client(self, k: int) -> Client:
        return Client(self.etc(k))

    def view(self, k: int) -> list[dict]:
        return self.client(k).call("view")["nodes"]

    def node_in_view(self, observer: int, k: int) -> dict:
        return next(n for n in self.view(observer) if n["ip"] == self.ip(k))

    def stop(self, k: int) -> None:
        localcluster.stop_node(self.root, k)

    def start(self, k: int) -> None:
        localcluster.start_node(self.root, k)

    def running(self, k: int) -> bool:
        return localcluster.running_pid(self.etc(k)) is not None

    def wait_until(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
                   poll: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                result = predicate()
                if result:
                    return result
            except (MosixError, StopIteration, KeyError) as err:
                last_error = err
            time.sleep(poll)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                             + (f" (last error: {last_error})" if last_error else ""))

    def alive_seen_by(self, k: int) -> set[str]:
        return {n["ip"] for n in self.view(k) if n["alive"]}

    def converged(self, timeout: float = 15.0) -> None:
        """Wait until every running node sees every running node alive."""
        def done() -> bool:
            up = {self.ip(k) for k in range(1, self.nodes + 1) if self.running(k)}
            return all(self.alive_seen_by(k) >= up for k in range(1, self.nodes + 1) if self.running(k))
        self.wait_until(done, timeout, "every node to see every other alive")

    def kill(self, k: int, pid: int, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to ``pid`` as node k numbers it (here: the machine's pids)."""
        os.kill(pid, sig)

    def set_proximate(self, proximate: bool) -> None:
        """Rewrite every node's mosix.map with (raw images) or without (lz4) the 'p'
        field, and have each daemon reload it, as ``mossetpe`` does."""
        first, count = self.layout.base_ip, self.layout.nodes
        for k in range(1, count + 1):
            (self.etc(k) / "mosix.map").write_text(
                f"# rewritten: {'proximate (raw images)' if proximate else 'not proximate (lz4 images)'}\n"
                f"{first} {count}{' p' if proximate else ''}\n")
            self.client(k).call("setpe")
        for k in range(1, count + 1):
            ranges = self.client(k).call("listpe")["ranges"]
            if any(bool(r["proximate"]) != proximate for r in ranges):
                raise MosixError(f"node {k} did not take the new mosix.map: {ranges}")

    def logs(self) -> dict[int, Path]:
        return {k: self.etc(k) / "var" / "mosd.log" for k in range(1, self.nodes + 1)}

    def down(self) -> None:
        try:
            localcluster.down(self.root)
        except MosixError:
            pass


@pytest.fixture
def local_cluster(tmp_path_factory: pytest.TempPathFactory):
    """Factory: ``local_cluster(nodes=4, speeds=None, interval=0.2, **kw)`` → LocalCluster."""
    clusters: list[LocalCluster] = []

    def make(nodes: int = 4, speeds: list[int] | None = None, interval: float = 0.2, **kwargs: Any) -> LocalCluster:
        root = tmp_path_factory.mktemp("cluster")
        layout = localcluster.up(root, nodes=nodes, speeds=speeds, base_ip=str(fresh_base_ip()),
                                 interval=interval, **kwargs)
        cluster = LocalCluster(root, layout)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.down()


@pytest.fixture
def spawn():
    """Factory: ``spawn(*argv, **popen_kwargs)`` starts a real process (``sleep 30``
    without argv); every one still running is killed at teardown."""
    started: list[subprocess.Popen] = []

    def start(*argv: str, **kwargs: Any) -> subprocess.Popen:
        proc = subprocess.Popen(list(argv) or ["sleep", "30"], **kwargs)
        started.append(proc)
        # Popen (vfork) returns while execve may still be building the new image, whose
        # /proc/PID/cmdline reads empty until then: return a process that is its program
        deadline = time.monotonic() + 10
        while not procfs.command_line(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def mosix_etc(tmp_path: Path) -> Path:
    """A valid one-node configuration tree (no daemon running)."""
    layout = localcluster.ClusterLayout(root=tmp_path, nodes=1, base_ip=fresh_base_ip(), speeds=(10000,), cpus=1,
                                        memory_mb=1024, interval=0.2, udp_port=localcluster.default_ports()[0],
                                        tcp_port=localcluster.default_ports()[1])
    localcluster.write_layout(layout)
    return layout.etc(1)


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A real 1 MiB tmpfs (a directory that can be full), unmounted afterwards."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
