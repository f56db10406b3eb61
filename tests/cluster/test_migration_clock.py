"""The wall clock of a process away, between real daemons: with
``wall_clock_tolerance_ms = 0`` the nodes' clocks always count as different, so a
process away reads home's wall clock — its vDSO's clock functions enter the kernel,
where the guest host answers them — unless it runs with ``mosrun -t``. (The nodes of
one machine share one wall clock; a home clock that really differs is tested in
tests/linux/test_away_calls.py, and the monotonic clocks in namespaces in
test_migration_namespaces.py.)"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mosix_core.linux import procfs, vdso
from tests.helpers.migration import guests
from tests.helpers.programs import lines, wait_until

pytestmark = pytest.mark.cluster

READS_THE_TIME = """\
import ctypes, os, select, time
libc = ctypes.CDLL(None)
libc.time.restype = ctypes.c_long
libc.open(b"/proc/self/migrate", 1 | os.O_CREAT, 2)
while not libc.open(b"/proc/self/whereami", 0):
    select.select([], [], [], 0.01)
print("away", flush=True)
while not os.path.exists("done"):
    now = time.time()
    select.select([], [], [], 0.01)
print(int(time.time()), time.clock_gettime_ns(time.CLOCK_REALTIME) // 10**9, libc.time(None), flush=True)
"""


@pytest.fixture
def cluster(local_cluster):
    return local_cluster(nodes=2, interval=0.2, extra_conf="wall_clock_tolerance_ms = 0\n")


def vdso_clock_code(pid: int) -> list[bytes]:
    """The first bytes of process ``pid``'s vDSO clock functions, and what each would
    be if made to enter the kernel."""
    mapping = next(m for m in procfs.read_maps(pid) if m.path == "[vdso]")
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as memory:
        memory.seek(mapping.start)
        image = memory.read(mapping.size)
    entries = vdso.clock_entry_points(image)
    return [image[at : at + 8] == vdso.syscall_stub(nr) for at, nr in sorted(entries.items())]


@pytest.mark.parametrize("option", ["-T", "-t"])
def test_a_process_away_reads_homes_wall_clock_unless_t(cluster, mosrun, tmp_path, option):
    (tmp_path / "prog.py").write_text(READS_THE_TIME)
    out = tmp_path / "out.txt"
    proc = mosrun(option, "/usr/bin/python3", "prog.py", out=out)
    wait_until(lambda: lines(out) >= 1, what="the process away")
    host = wait_until(lambda: guests(cluster, 2), what="the guest row")[0]["pid"]
    guest = int(Path(f"/proc/{host}/task/{host}/children").read_text().split()[0])
    assert vdso_clock_code(guest) == [option == "-T"] * 3  # clock_gettime, gettimeofday, time
    assert vdso_clock_code(os.getpid()) == [False] * 3  # nobody else's vDSO changed
    before = time.time()
    (tmp_path / "done").touch()
    assert proc.wait(timeout=30) == 0, (tmp_path / "stderr.txt").read_text()
    for value in map(int, out.read_text().splitlines()[1].split()):
        assert before - 1 <= value <= time.time()
    assert (tmp_path / "stderr.txt").read_bytes() == b""
