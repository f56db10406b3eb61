"""Real clusters for the tests: N mosd daemons on fresh loopback addresses, and the
``mos*`` tools run as a user runs them (the fixtures are in :mod:`tests.helpers.fixtures`)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from mosix_core.cluster import localcluster
from mosix_core.daemon.client import Client
from mosix_core.errors import MosixError

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

#: mosd.conf for the clusters of tests that move processes themselves: the balancer would
#: move them too (a test of automatic migration asks for it: ``balancing=True``)
MANUAL_ONLY = "automatic_migration = no\n"

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


def run_tool(
    tool: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(tool_argv(tool, *args), env=env, capture_output=True, text=True, timeout=timeout, input=input)


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

    def wait_until(
        self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition", poll: float = 0.05
    ) -> Any:
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
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error})" if last_error else "")
        )

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
                f"{first} {count}{' p' if proximate else ''}\n"
            )
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
