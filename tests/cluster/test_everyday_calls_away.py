"""Issue 18: the calls of the manual's list that are answered with their one-machine
meaning keep that meaning at home, on a node, on another node and home again: the
affinity mask of one CPU, the scheduling policy, the limits set on itself by pid and
read back, the process's name, absolute sleeps on both clocks, memory hints. And a
read-only MAP_SHARED mapped privately stays unwritable wherever the process is:
mprotect adding PROT_WRITE is refused with the manual's message (ENOSYS under -e),
whether the mapping was made at home or away."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.cluster

CALLS = """\
import ctypes, mmap, os, resource, select, sys, time
libc = ctypes.CDLL(None, use_errno=True)

class timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]

def until(clock, seconds_from_now):
    now = time.clock_gettime(clock)
    deadline = now + seconds_from_now
    ts = timespec(int(deadline), int(deadline % 1 * 1e9))
    result = libc.clock_nanosleep(clock, 1, ctypes.byref(ts))      # TIMER_ABSTIME
    after = time.clock_gettime(clock)
    return result == 0 and deadline <= after < deadline + 5

def where():
    return libc.open(b"/proc/self/whereami", 0)

def go(node):
    libc.open(b"/proc/self/migrate", 1 | os.O_CREAT, node)
    while (where() != 0) != (node != 0) or (node and where() != node):
        select.select([], [], [], 0.01)

def report(k):
    me = os.getpid()
    resource.prlimit(me, resource.RLIMIT_CPU, (100000 + k, resource.RLIM_INFINITY))
    name = ctypes.create_string_buffer(16)
    libc.prctl(15, b"everyday-%d" % k, 0, 0, 0)                     # PR_SET_NAME
    libc.prctl(16, name, 0, 0, 0)                                   # PR_GET_NAME
    memory = mmap.mmap(-1, 1 << 20, flags=mmap.MAP_PRIVATE)
    memory[:5] = b"still"
    for advice in (mmap.MADV_WILLNEED, mmap.MADV_SEQUENTIAL, mmap.MADV_RANDOM, mmap.MADV_HUGEPAGE,
                   mmap.MADV_DONTDUMP, mmap.MADV_NORMAL):
        memory.madvise(advice)
    start = time.monotonic()
    time.sleep(0.05)                                                # Python: an absolute CLOCK_MONOTONIC sleep
    print(k, where() != 0,
          "affinity", len(os.sched_getaffinity(0)), len(os.sched_getaffinity(me)),
          "sched", os.sched_getscheduler(0), os.sched_getparam(me).sched_priority,
          os.sched_get_priority_max(os.SCHED_FIFO), os.sched_get_priority_min(os.SCHED_FIFO),
          "limit", resource.prlimit(me, resource.RLIMIT_CPU)[0] - 100000, resource.getrlimit(resource.RLIMIT_CPU)[0] - 100000,
          "name", name.value.decode(), open("/proc/self/comm").read().strip(),
          "sleeps", time.monotonic() - start >= 0.05, until(time.CLOCK_MONOTONIC, 0.1), until(time.CLOCK_REALTIME, 0.1),
          "memory", memory[:5], flush=True)

for k, node in enumerate((0, 2, 3, 0)):
    go(node)
    report(k)
"""


def test_newly_answered_calls_mean_the_same_at_home_and_away(cluster, mosrun, tmp_path):
    (tmp_path / "calls.py").write_text(CALLS)
    out = tmp_path / "out.txt"
    proc = mosrun("/usr/bin/python3", "calls.py", out=out)
    assert proc.wait(timeout=120) == 0, (tmp_path / "stderr.txt").read_text()
    assert (tmp_path / "stderr.txt").read_text() == ""
    expected = [
        f"{k} {k in (1, 2)} affinity 1 1 sched 0 0 99 1 limit {k} {k} name everyday-{k} everyday-{k} "
        "sleeps True True True memory b'still'"
        for k in range(4)
    ]
    assert out.read_text().splitlines() == expected


PROTECT = """\
import ctypes, os, select, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PROT_READ, PROT_WRITE, MAP_SHARED, MAP_PRIVATE = 1, 2, 1, 2
fd = os.open("data.bin", os.O_RDWR)

def mapped(flags):
    address = libc.mmap(None, 4096, PROT_READ, flags, fd, 0)
    return address, ctypes.string_at(address, 5)

at_home = mapped(MAP_SHARED)
libc.open(b"/proc/self/migrate", 1 | os.O_CREAT, 2)
while not libc.open(b"/proc/self/whereami", 0):
    select.select([], [], [], 0.01)
private = mapped(MAP_PRIVATE)
away = mapped(MAP_SHARED)
print("mapped", at_home[1], private[1], away[1], flush=True)
print("private", libc.mprotect(private[0], 4096, PROT_READ | PROT_WRITE), flush=True)
for name, (address, _) in (("away", away), ("home", at_home)):
    result = libc.mprotect(address, 4096, PROT_READ | PROT_WRITE)
    print(name, result, ctypes.get_errno() if result else 0, flush=True)
"""


@pytest.mark.parametrize("option", ["-e", None])
def test_write_access_to_a_read_only_shared_mapping_is_refused_away(cluster, mosrun, tmp_path, option):
    (tmp_path / "protect.py").write_text(PROTECT)
    (tmp_path / "data.bin").write_bytes(b"hello" * 1000)
    out = tmp_path / "out.txt"
    proc = mosrun(*([option] if option else []), "/usr/bin/python3", "protect.py", out=out)
    status = proc.wait(timeout=60)
    stderr = (tmp_path / "stderr.txt").read_text()
    mapped = "mapped b'hello' b'hello' b'hello'\nprivate 0\n"
    if option == "-e":
        assert (status, out.read_text(), stderr) == (0, mapped + "away -1 38\nhome -1 38\n", "")
    else:
        assert (status, out.read_text()) == (-9, mapped)
        assert stderr == "MOSRUN: Shared memory (MAP_SHARED) not supported under MOSIX\n"
