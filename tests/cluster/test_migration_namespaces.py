"""Migration between nodes that share nothing but the filesystem: each node in PID,
mount, network, UTS and IPC namespaces of its own, joined by a bridge
(tests.helpers.nscluster). The core scenarios of test_migration.py run again there —
mosrun on node 1, mosmigrate on node 1, signals sent on node 1 — and a last test
checks that the nodes really are apart: the guest host on node 2 is not among node
1's processes, node 2 cannot reach a listener on node 1's loopback, node 1's
control socket and /tmp are not node 2's."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import nscluster
from tests.helpers.migration import (
    AWK,
    awk_moves_out_on_and_home,
    guests,
    migrate,
    row,
    signals_sent_home_reach_the_process_away,
    where_is,
)
from tests.helpers.programs import BIN, wait_until

pytestmark = pytest.mark.cluster


@functools.cache
def unavailable() -> str | None:
    return nscluster.unavailable()


@pytest.fixture
def cluster(tmp_path_factory):
    reason = unavailable()
    if reason:
        pytest.skip(f"no namespaced cluster on this machine: {reason}")
    netns_before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    # the whole pytest temporary tree stays shared: it is the nodes' "home directories"
    cluster = nscluster.up(
        tmp_path_factory.mktemp("nscluster"), nodes=3, interval=0.2, shared=[tmp_path_factory.getbasetemp()]
    )
    try:
        cluster.converged()
        yield cluster
    finally:
        cluster.down()  # raises if a process outlived it
    assert not cluster.leftovers()
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout == netns_before


@pytest.fixture
def mosrun(cluster, tmp_path):
    env = {**cluster.env(1), "LANG": "C.UTF-8", "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    env.pop("LC_ALL", None)

    def start(*argv: str, out: Path, cwd: str | Path = tmp_path) -> subprocess.Popen:
        with open(out, "wb") as stdout, open(tmp_path / "stderr.txt", "ab") as stderr:
            return cluster.spawn(
                1, ["mosrun", *argv], env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
            )

    start.env = env
    return start


def test_awk_moves_out_on_and_home_with_identical_output(cluster, mosrun, tmp_path):
    awk_moves_out_on_and_home(cluster, mosrun, tmp_path)


MOVES_ITSELF = """\
import ctypes, os, select, sys
libc = ctypes.CDLL(None)
me, parent, where = os.getpid(), os.getppid(), os.getcwd()
print("home", libc.open(b"/proc/self/whereami", 0), me, where, flush=True)
libc.open(b"/proc/self/migrate", 1 | os.O_CREAT, 2)
for _ in range(500):
    if libc.open(b"/proc/self/whereami", 0):
        break
    select.select([], [], [], 0.01)
x = 0
for i in range(100):
    x = (x * 31 + i * i) % 1000003
print("away", libc.open(b"/proc/self/whereami", 0), libc.open(b"/proc/self/nmigs", 0),
      os.getpid() == me, os.getppid() == parent, os.getcwd() == where, flush=True)
with open("result.txt", "w") as f:                 # where it is: home's /tmp, private to node 1
    f.write(str(x))
print("wrote", open("result.txt").read(), flush=True)
"""


def test_a_python_program_moves_itself_and_keeps_its_pid_parent_cwd_and_home_files(cluster, mosrun, tmp_path):
    work = cluster.node_path(1, "/tmp/work")  # exists only in node 1's private /tmp
    work.mkdir()
    (work / "moves.py").write_text(MOVES_ITSELF)
    out = tmp_path / "out.txt"
    proc = mosrun("/usr/bin/python3", "moves.py", out=out, cwd="/tmp/work")
    assert proc.wait(timeout=60) == 0, (tmp_path / "stderr.txt").read_text()
    home, away, wrote = out.read_text().splitlines()
    assert home.startswith("home 0 ") and home.endswith(" /tmp/work")
    x = 0
    for i in range(100):
        x = (x * 31 + i * i) % 1000003
    assert (away, wrote) == ("away 2 1 True True True", f"wrote {x}")
    assert (work / "result.txt").read_text() == str(x)
    assert not cluster.node_path(2, "/tmp/work").exists()
    assert (tmp_path / "stderr.txt").read_bytes() == b""


def test_signals_sent_at_home_reach_the_process_away(cluster, mosrun, tmp_path):
    signals_sent_home_reach_the_process_away(cluster, mosrun, tmp_path)


CONNECT = """\
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
    print("connected")
except OSError as err:
    print(type(err).__name__)
"""
LISTEN = """\
import socket
server = socket.create_server(("127.0.0.1", 7777))
print("listening", flush=True)
while True:
    server.accept()[0].close()
"""


def test_the_nodes_share_no_processes_network_or_private_files(cluster, mosrun, tmp_path):
    proc = mosrun("awk", AWK % 100000, out=tmp_path / "out.txt")
    pid = wait_until(lambda: row(cluster), what="the process row")["pid"]
    migrate(cluster, pid, "2")
    where_is(cluster, cluster.ip(2))
    guest = wait_until(lambda: guests(cluster, 2), what="the guest row")[0]
    host = guest["pid"]  # node 2's numbering
    assert guest["origpid"] == pid  # node 1's
    # processes: the guest host is node 2's alone
    assert b"mosix_core.remote.host" in cluster.node_path(2, f"/proc/{host}/cmdline").read_bytes()
    on1, on2 = cluster.pid_map(1), cluster.pid_map(2)
    assert host in on2 and on2[host] != host  # numbered apart from the machine's pids
    assert on2[host] not in on1.values()  # node 1 cannot see it, under any number
    assert not set(on1.values()) & set(on2.values())
    assert pid in on1 and on1[pid] not in on2.values()  # nor node 2 the home process
    assert on1[1] != on2[1]  # each has an init of its own
    # node 1 sees no guest host serving a guest (its own mosd's spare waits for one), node 2 no mosrun
    for k, others in ((1, b"mosix_core.remote.host"), (2, b"mosrun")):
        for p in cluster.pids(k):
            try:
                argv = cluster.node_path(k, f"/proc/{p}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            assert others not in argv or b"--spare" in argv.split(b"\0")
    # network: node 1's loopback is its own; the nodes meet on the bridge, not through the machine
    listener = cluster.spawn(1, [sys.executable, "-c", LISTEN], stdout=subprocess.PIPE)
    assert listener.stdout.readline() == b"listening\n"

    def connect(k: int, host: str, port: int) -> str:
        done = cluster.exec(k, [sys.executable, "-c", CONNECT, host, str(port)])
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert connect(1, "127.0.0.1", 7777) == "connected"
    assert connect(2, "127.0.0.1", 7777) == "ConnectionRefusedError"
    assert connect(2, cluster.ip(1), 7777) == "ConnectionRefusedError"  # it listens on node 1's lo only
    assert connect(2, cluster.ip(1), cluster.layout.tcp_port) == "connected"  # mosd of node 1, over the bridge
    assert connect(3, cluster.ip(2), cluster.layout.tcp_port) == "connected"
    # mounts: node 1's control socket lives in node 1's tmpfs; each node's /tmp is its own
    socket_path = cluster.etc(1) / "var" / "mosd.sock"
    assert cluster.node_path(1, socket_path).is_socket()
    assert not socket_path.exists() and not cluster.node_path(2, socket_path).exists()
    cluster.node_path(2, "/tmp/node2-only").write_text("2")
    assert not cluster.node_path(1, "/tmp/node2-only").exists() and not Path("/tmp/node2-only").exists()
    assert cluster.exec(2, ["hostname"]).stdout == "mosix-node2\n"
    # and the process away still runs, then ends by a signal sent at home
    assert row(cluster)["where"] == cluster.ip(2)
    cluster.kill(1, pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == -15
    wait_until(lambda: not guests(cluster, 2), what="the guest to go")


CLOCKS = """\
import ctypes, os, select, time
libc = ctypes.CDLL(None)
def go(node):
    libc.open(b"/proc/self/migrate", 1 | os.O_CREAT, node)
    for _ in range(1000):
        if bool(libc.open(b"/proc/self/whereami", 0)) == bool(node):
            return
        select.select([], [], [], 0.01)
def read(tag):
    print(tag, libc.open(b"/proc/self/whereami", 0), time.monotonic(), time.clock_gettime(time.CLOCK_BOOTTIME),
          time.clock_gettime(time.CLOCK_MONOTONIC_RAW), flush=True)
read("home")
go(3)
read("away")
deadline = time.monotonic() + 0.3                   # a deadline from home's clock, kept away
while time.monotonic() < deadline:
    pass
read("waited")
go(0)
read("back")
"""


@pytest.mark.parametrize("option", ["-T", "-t"])
def test_a_process_away_reads_its_homes_monotonic_clocks_unless_t(cluster, mosrun, tmp_path, option):
    """Node 3's monotonic and boot-time clocks are 200,000 s ahead of node 1's. By
    default a process moving 1 -> 3 -> 1 sees them run on smoothly (home's clocks);
    with -t it reads node 3's own while there."""
    step = 2 * nscluster.CLOCK_STEP
    (tmp_path / "clocks.py").write_text(CLOCKS)
    out = tmp_path / "out.txt"
    proc = mosrun(option, "/usr/bin/python3", "clocks.py", out=out)
    assert proc.wait(timeout=60) == 0, (tmp_path / "stderr.txt").read_text()
    readings = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in out.read_text().splitlines()}
    assert [readings[tag][0] for tag in ("home", "away", "waited", "back")] == [0, 3, 3, 0]
    for clock in (1, 2, 3):
        home, away, waited, back = (readings[tag][clock] for tag in ("home", "away", "waited", "back"))
        ahead = step if option == "-t" else 0
        assert 0 < away - home - ahead < 30  # the move's time, and the node's offset with -t
        assert 0.3 <= waited - away < 30
        assert 0 < back - (waited - ahead) < 30
    assert (tmp_path / "stderr.txt").read_bytes() == b""
