"""The peer op ``relocate``: the node where home's process runs asks home to move it on (its
balancer decided). Only that node may ask, only for a node in home's map — a member of the
cluster that does not host the process cannot have it moved to itself or anywhere else."""

from __future__ import annotations

import asyncio
import os
import subprocess
import types
from ipaddress import IPv4Address

import pytest

from mosix_core.daemon import protocol
from mosix_core.daemon.peer import call
from mosix_core.errors import Refused
from mosix_core.net import wire
from tests.helpers.programs import BIN, wait_until

pytestmark = pytest.mark.cluster

INTERVAL = 0.2
LOOP = 'BEGIN { while ((getline line < "%s") <= 0) { for (j = 0; j < 200000; j++) s += j %% 7; close("%s") } }'


def as_node(cluster, k: int):
    """What :func:`call` needs of a node: node k's key, address and the peers' port."""
    key = wire.derive_key((cluster.etc(k) / "secret").read_text().strip().encode())
    port = cluster.client(k).call("localstatus")["daemon"]["tcp_port"]
    return types.SimpleNamespace(
        key=key, our_ip=IPv4Address(cluster.ip(k)), settings=types.SimpleNamespace(tcp_port=port)
    )


def relocate(cluster, asking: int, pid: int, to: str) -> dict:
    return protocol.outcome(
        asyncio.run(
            call(as_node(cluster, asking), IPv4Address(cluster.ip(1)), {"op": "relocate", "pid": pid, "to": to})
        )
    )


def where(cluster, pid: int) -> str | None:
    return next((r["where"] for r in cluster.client(1).call("processes")["processes"] if r["pid"] == pid), None)


def test_only_the_node_a_process_runs_on_may_have_it_moved_on(local_cluster, tmp_path):
    cluster = local_cluster(nodes=3, interval=INTERVAL)
    cluster.converged()
    stop = tmp_path / "stop"
    env = {**cluster.env(1), "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    job = subprocess.Popen(
        ["mosrun", "-2", "awk", LOOP % (stop, stop)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: where(cluster, job.pid) == cluster.ip(2), what="the job to run on node 2")
        # node 3 is a member with the cluster's key, but the job does not run there
        with pytest.raises(Refused, match="not a process of ours running on"):
            relocate(cluster, 3, job.pid, cluster.ip(3))
        # node 2 hosts it, but may only send it to a node of home's map
        with pytest.raises(Refused, match="not in map"):
            relocate(cluster, 2, job.pid, "127.254.254.254")
        # and not a process that is not home's (a pid nobody registered)
        with pytest.raises(Refused, match="not a process of ours"):
            relocate(cluster, 2, 1, cluster.ip(3))
        assert where(cluster, job.pid) == cluster.ip(2)
        # what node 2 may do: have it moved on to node 3
        relocate(cluster, 2, job.pid, cluster.ip(3))
        wait_until(lambda: where(cluster, job.pid) == cluster.ip(3), what="the job to move on to node 3")
        stop.write_text("stop\n")
        assert job.wait(timeout=60) == 0
    finally:
        job.kill()
        job.wait()
