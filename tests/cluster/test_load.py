"""Issue 17, load: a hundred migrations in flight at once on a 4-node cluster — every one
completes, and every process ends with its native output."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.programs import BIN

pytestmark = pytest.mark.cluster

SOURCE = Path(__file__).parent / "programs" / "ticker.c"
PROCESSES = 100
TICKS = 100


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return result


@pytest.fixture
def ticker(tmp_path) -> Path:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the test programs (scripts/install.sh installs it)")
    program = tmp_path / "ticker"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(program), str(SOURCE)], check=True)
    return program


def test_a_hundred_migrations_at_once_all_complete(local_cluster, ticker, tmp_path, spawn):
    cluster = local_cluster(nodes=4, interval=0.5)
    env = {**cluster.env(1), "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    (tmp_path / "native").mkdir()
    (tmp_path / "native" / "go").touch()
    native = subprocess.run([str(ticker), str(TICKS)], capture_output=True, check=True, cwd=tmp_path / "native").stdout
    outs = [tmp_path / f"out{i}.txt" for i in range(PROCESSES)]
    procs = []
    for out in outs:
        with open(out, "wb") as stdout:
            procs.append(
                spawn(
                    "mosrun",
                    str(ticker),
                    str(TICKS),
                    env=env,
                    cwd=tmp_path,
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=subprocess.PIPE,
                )
            )

    def rows() -> dict[int, dict]:
        return {p["pid"]: p for p in cluster.client(1).call("processes")["processes"] if not p.get("home")}

    # they wait for "go" (each looks for it every 200 ms, at home): all of them run on
    # while they move, however long the hundred starts took
    wait_until(lambda: len(rows()) == PROCESSES, 180, "every process running")
    pids = sorted(rows())
    target = {pid: 2 + i % 3 for i, pid in enumerate(pids)}
    movers = [
        subprocess.Popen(
            [str(BIN / "mosmigrate"), str(pid), str(node)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for pid, node in target.items()
    ]
    for mover in movers:
        out, err = mover.communicate(timeout=120)
        assert mover.returncode == 0, err
    # every move completes: each row says it is on the node it was sent to ("leaving" is
    # still on the way)
    wait_until(
        lambda: all(r["where"] == cluster.ip(target[pid]) for pid, r in rows().items()),
        120,
        "every process on its node",
    )
    assert all(r["nmigs"] == 1 for r in rows().values())
    (tmp_path / "go").touch()
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
        assert proc.stderr.read() == b""
    for out in outs:
        assert out.read_bytes() == native
