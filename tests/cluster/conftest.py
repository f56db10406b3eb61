"""What the migration tests share: a 3-node cluster of real mosd daemons on 127.x
addresses, and ``mosrun`` started on node 1 (the home) in the test's directory, with
the default ``C.UTF-8`` locale and stderr collected in ``stderr.txt``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.programs import BIN


@pytest.fixture
def cluster(local_cluster):
    return local_cluster(nodes=3, interval=0.2)


@pytest.fixture
def mosrun(cluster, tmp_path, spawn):
    env = {**cluster.env(1), "LANG": "C.UTF-8", "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    env.pop("LC_ALL", None)

    def start(*argv: str, out: Path) -> subprocess.Popen:
        with open(out, "wb") as stdout, open(tmp_path / "stderr.txt", "ab") as stderr:
            return spawn("mosrun", *argv, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)

    start.env = env
    return start
