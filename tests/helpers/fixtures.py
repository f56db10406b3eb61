"""The fixtures every test directory gets (``tests/conftest.py`` imports them) — no mocks
of anything we can run:

* ``mosix_etc``: a private, valid configuration tree for one node on a fresh loopback address.
* ``local_cluster``: a factory starting N real mosd daemons on 127.X.Y.1 … N, each test on
  addresses of its own so tests never collide; everything is stopped at teardown.
* ``spawn``: start a real process, killed at teardown.
* ``small_tmpfs``: a real 1 MiB tmpfs, for running out of space (freezing, checkpoints).
* ``checkpoint``, ``checkpoint_image``: one real checkpoint of a real program per test module
  (tests/linux/test_checkpoint_bad_images.py, tests/security/test_bad_images.py damage it).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from mosix_core.cluster import localcluster
from mosix_core.linux import procfs
from tests.helpers.checkpoints import Checkpoint, make_checkpoint
from tests.helpers.cluster import MANUAL_ONLY, LocalCluster, fresh_base_ip


@pytest.fixture
def local_cluster(tmp_path_factory: pytest.TempPathFactory):
    """Factory: ``local_cluster(nodes=4, speeds=None, interval=0.2, balancing=False, **kw)`` →
    LocalCluster. Processes move only when a test moves them unless ``balancing``."""
    clusters: list[LocalCluster] = []

    def make(
        nodes: int = 4,
        speeds: list[int] | None = None,
        interval: float = 0.2,
        balancing: bool = False,
        extra_conf: str = "",
        **kwargs: Any,
    ) -> LocalCluster:
        root = tmp_path_factory.mktemp("cluster")
        layout = localcluster.up(
            root,
            nodes=nodes,
            speeds=speeds,
            base_ip=str(fresh_base_ip()),
            interval=interval,
            extra_conf=extra_conf + ("" if balancing else MANUAL_ONLY),
            **kwargs,
        )
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
    layout = localcluster.ClusterLayout(
        root=tmp_path,
        nodes=1,
        base_ip=fresh_base_ip(),
        speeds=(10000,),
        cpus=1,
        memory_mb=1024,
        interval=0.2,
        udp_port=localcluster.default_ports()[0],
        tcp_port=localcluster.default_ports()[1],
    )
    localcluster.write_layout(layout)
    return layout.etc(1)


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A real 1 MiB tmpfs (a directory that can be full), unmounted afterwards."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    """A real checkpoint of a real program (mosrun, then ``mosmigrate PID chkexit``), made
    once per test module: the tests that damage it never touch the file itself."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def checkpoint_image(checkpoint: Checkpoint) -> bytes:
    """The bytes of the module's ``checkpoint``."""
    return checkpoint.path.read_bytes()
