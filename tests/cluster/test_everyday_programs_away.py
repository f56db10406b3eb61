"""Issue 18: the long-running members of the everyday corpus (tests/helpers/everyday.py),
in the default UTF-8 locale, moved node 2 -> node 3 -> home while they run on a local
cluster: stdout, stderr and exit status byte-identical to a native run."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import everyday
from tests.helpers.migration import migrate, row
from tests.helpers.programs import BIN, wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("everyday-away")
    everyday.write_inputs(root / "data", loop=800_000)
    root.chmod(0o755)
    return root


def feed(pipe, data: bytes, moved: threading.Event) -> None:
    """``data`` into ``pipe`` a piece at a time, the last piece only once the process
    has made its moves (so they are made mid-run, whatever the machine's speed)."""
    with pipe:
        pieces = [data[at : at + 65536] for at in range(0, len(data), 65536)]
        for piece in pieces[:-1]:
            pipe.write(piece)
            pipe.flush()
            time.sleep(0.01)
        moved.wait(120)
        pipe.write(pieces[-1])


@pytest.mark.parametrize("name", sorted(everyday.LONG))
def test_a_long_everyday_program_moved_twice_gives_its_native_result(cluster, spawn, data, name):
    argv = everyday.LONG[name]
    stdin = (data / "data" / "big.txt").read_bytes() * 3
    native_dir = everyday.fresh(data / f"native-{name}")
    native = subprocess.run(
        argv, cwd=native_dir, env=everyday.environment(native_dir), input=stdin, capture_output=True, timeout=300
    )
    where = everyday.fresh(data / f"mosrun-{name}")
    env = {**cluster.env(1), **everyday.environment(where)}
    out, err = where / "stdout", where / "stderr"
    moved = threading.Event()
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = spawn(
            str(BIN / "mosrun"), *argv, cwd=where, env=env, stdin=subprocess.PIPE, stdout=stdout, stderr=stderr
        )
    feeder = threading.Thread(target=feed, args=(proc.stdin, stdin, moved), daemon=True)
    feeder.start()
    try:
        pid = wait_until(lambda: row(cluster), what="the process row")["pid"]
        nmigs = 0
        for node, expected in (("2", cluster.ip(2)), ("3", cluster.ip(3)), ("home", "here")):
            migrate(cluster, pid, node)
            nmigs += 1
            wait_until(
                lambda: (r := row(cluster)) is not None and r["where"] == expected and r["nmigs"] == nmigs,
                timeout=60,
                what=f"{name} at {expected}",
            )
            assert proc.poll() is None, f"{name} ended before its moves: make it longer"
    finally:
        moved.set()
    assert proc.wait(timeout=300) == native.returncode
    feeder.join(10)
    assert err.read_bytes().decode(errors="replace") == native.stderr.decode(errors="replace")
    assert out.read_bytes() == native.stdout
    assert os.path.getsize(out) > 0
