"""Migration between real mosd nodes on 127.0.0.x: a process started with mosrun on
node 1 is moved to other nodes and back home while it runs (mosmigrate,
/proc/self/migrate), its calls forwarded home, and it must behave exactly as a
native run: the same output, byte for byte, the same exit status. A refused move
leaves it running at home with the manual's message."""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mosix_core.linux import procfs
from tests.helpers.migration import (
    AWK,
    awk_moves_out_on_and_home,
    guests,
    migrate,
    migrate_fails,
    row,
    signals_sent_home_reach_the_process_away,
    where_is,
)
from tests.helpers.programs import BIN, lines, wait_until

pytestmark = pytest.mark.cluster

PYTHON = """\
import os, select, sys
me, parent, where = os.getpid(), os.getppid(), os.getcwd()
x = 0
for i in range(int(sys.argv[1])):
    x = (x * 31 + i * i) % 1000003
    print(i, x, os.getpid() == me, os.getppid() == parent, os.getcwd() == where, flush=True)
    select.select([], [], [], 0.01)
with open("result.txt", "w") as f:
    f.write(str(x))
"""


def test_awk_moves_out_on_and_home_with_identical_output(cluster, mosrun, tmp_path):
    awk_moves_out_on_and_home(cluster, mosrun, tmp_path)


def test_between_nodes_not_proximate_the_images_travel_compressed_both_ways(cluster, mosrun, tmp_path):
    cluster.set_proximate(False)
    program = AWK % 250
    out = tmp_path / "out.txt"
    proc = mosrun("awk", program, out=out)
    pid = wait_until(lambda: row(cluster), what="the process row")["pid"]
    wait_until(lambda: lines(out) >= 10, what="10 lines")
    hosts = []
    for where, expected in (("3", cluster.ip(3)), ("home", "here")):
        before = lines(out)
        migrate(cluster, pid, where)
        where_is(cluster, expected)
        if where == "3":
            arrivals = [line for line in cluster.logs()[3].read_text().splitlines() if "guest arrived" in line]
            hosts.append("compress=True" in arrivals[-1] or '"compress": true' in arrivals[-1])
        wait_until(lambda: lines(out) >= before + 20, what="progress after the move")
    assert proc.wait(timeout=120) == 3
    native = subprocess.run(["awk", program], capture_output=True, env=mosrun.env, timeout=120)
    assert out.read_bytes() == native.stdout
    assert (tmp_path / "stderr.txt").read_bytes() == b""
    assert hosts == [True]  # lz4 both ways: node 3's guest host was told to compress too


def test_python_away_keeps_pid_parent_cwd_and_writes_files_at_home(cluster, mosrun, tmp_path):
    (tmp_path / "loop.py").write_text(PYTHON)
    out = tmp_path / "out.txt"
    proc = mosrun("/usr/bin/python3", "loop.py", "150", out=out)
    pid = wait_until(lambda: row(cluster), what="the process row")["pid"]
    wait_until(lambda: lines(out) >= 10, what="10 lines")
    migrate(cluster, pid, cluster.ip(2))
    where_is(cluster, cluster.ip(2))
    assert proc.wait(timeout=120) == 0  # it ended away: its exit came home
    native = subprocess.run(["/usr/bin/python3", "loop.py", "150"], cwd=tmp_path, capture_output=True, timeout=60)
    assert out.read_bytes() == native.stdout
    assert b"False" not in out.read_bytes()
    assert (tmp_path / "result.txt").exists()


def test_a_refused_migration_leaves_the_process_running_at_home(cluster, mosrun, tmp_path):
    assert cluster.run(2, "mosctl", "block").returncode == 0
    program = AWK % 150
    out = tmp_path / "out.txt"
    proc = mosrun("awk", program, out=out)
    pid = wait_until(lambda: row(cluster), what="the process row")["pid"]
    wait_until(lambda: lines(out) >= 5, what="5 lines")
    message = f"failed migrating to {cluster.ip(2)}: other node refused"
    migrate_fails(cluster, pid, "2", message)
    wait_until(lambda: message.encode() in (tmp_path / "stderr.txt").read_bytes(), what="the refusal")
    assert row(cluster)["where"] == "here"
    assert proc.wait(timeout=120) == 3
    native = subprocess.run(["awk", program], capture_output=True, env=mosrun.env, timeout=120)
    assert out.read_bytes() == native.stdout


def test_signals_sent_home_reach_the_process_away(cluster, mosrun, tmp_path):
    signals_sent_home_reach_the_process_away(cluster, mosrun, tmp_path)


PROGRAM_MOVES = """\
import ctypes, os, select
libc = ctypes.CDLL(None)
print("home", libc.open(b"/proc/self/whereami", 0), libc.open(b"/proc/self/nmigs", 0), flush=True)
libc.open(b"/proc/self/migrate", 1 | os.O_CREAT, 3)
for _ in range(500):
    if libc.open(b"/proc/self/whereami", 0):
        break
    select.select([], [], [], 0.01)
print("away", libc.open(b"/proc/self/whereami", 0), libc.open(b"/proc/self/nmigs", 0), flush=True)
libc.open(b"/proc/self/migrate", 1 | os.O_CREAT, 0)
for _ in range(500):
    if not libc.open(b"/proc/self/whereami", 0):
        break
    select.select([], [], [], 0.01)
print("back", libc.open(b"/proc/self/whereami", 0), libc.open(b"/proc/self/nmigs", 0), flush=True)
"""


def test_a_program_migrates_itself_through_proc_self_migrate(cluster, mosrun, tmp_path):
    (tmp_path / "moves.py").write_text(PROGRAM_MOVES)
    out = tmp_path / "out.txt"
    proc = mosrun("/usr/bin/python3", "moves.py", out=out)
    assert proc.wait(timeout=60) == 0
    assert out.read_text() == "home 0 0\naway 3 1\nback 0 2\n"


def test_losing_the_guest_host_ends_the_process_with_the_manuals_message(cluster, mosrun, tmp_path):
    out = tmp_path / "out.txt"
    proc = mosrun("awk", AWK % 100000, out=out)
    pid = wait_until(lambda: row(cluster), what="the process row")["pid"]
    migrate(cluster, pid, "2")
    where_is(cluster, cluster.ip(2))
    host = wait_until(lambda: guests(cluster, 2), what="the guest row")[0]["pid"]
    os.kill(host, 9)
    assert proc.wait(timeout=30) == -9
    assert f"Lost communication with {cluster.ip(2)}".encode() in (tmp_path / "stderr.txt").read_bytes()


@pytest.mark.parametrize("case", ["dead node", "no memory there"])
def test_a_failed_migration_keeps_the_process_at_home(cluster, mosrun, tmp_path, case):
    program = AWK % 120
    out = tmp_path / "out.txt"
    if case == "dead node":
        cluster.stop(2)
        proc = mosrun("awk", program, out=out)
        reason = "no response"
    else:
        proc = mosrun("-m262143", "awk", program, out=out)
        reason = "did not complete (no memory there?)"
    pid = wait_until(lambda: row(cluster), what="the process row")["pid"]
    wait_until(lambda: lines(out) >= 5, what="5 lines")
    message = f"failed migrating to {cluster.ip(2)}: {reason}"
    migrate_fails(cluster, pid, "2", message)
    message = message.encode()
    wait_until(lambda: message in (tmp_path / "stderr.txt").read_bytes(), what=f"'{message.decode()}'")
    assert proc.wait(timeout=120) == 3
    native = subprocess.run(["awk", program], capture_output=True, env=mosrun.env, timeout=120)
    assert out.read_bytes() == native.stdout


@pytest.mark.parametrize("location", ["-2", "-r{ip2}", "-{ip2}"])
def test_mosrun_starts_the_program_on_the_node_it_names(cluster, mosrun, tmp_path, location):
    program = AWK % 200
    out = tmp_path / "out.txt"
    proc = mosrun(location.format(ip2=cluster.ip(2)), "awk", program, out=out)
    where_is(cluster, cluster.ip(2))
    assert lines(out) < 200
    assert proc.wait(timeout=120) == 3
    native = subprocess.run(["awk", program], capture_output=True, env=mosrun.env, timeout=120)
    assert out.read_bytes() == native.stdout
    assert (tmp_path / "stderr.txt").read_bytes() == b""


@pytest.mark.parametrize("force", [False, True])
def test_a_start_node_that_is_down_fails_the_program_unless_forced(cluster, mosrun, tmp_path, force):
    cluster.stop(2)
    out = tmp_path / "out.txt"
    proc = mosrun(*(["-F"] if force else []), "-2", "awk", AWK % 20, out=out)
    assert proc.wait(timeout=120) == (3 if force else 1)
    assert (
        tmp_path / "stderr.txt"
    ).read_bytes() == f"MOSRUN: failed migrating to {cluster.ip(2)}: no response\n".encode()
    # it moves from its exec: it did not run at all when it could not start there
    assert lines(out) == (20 if force else 0)


def test_mosrun_b_starts_on_the_least_loaded_node(cluster, mosrun, tmp_path):
    burners = [mosrun("awk", "BEGIN { for (;;) x++ }", out=tmp_path / f"burn{k}") for k in range(2)]
    wait_until(lambda: cluster.node_in_view(2, 1)["load"] > 50, what="node 1 loaded, as node 2 sees it")
    out = tmp_path / "out.txt"
    proc = mosrun("-b", "awk", AWK % 100, out=out)
    wait_until(
        lambda: any(
            r["where"] in (cluster.ip(2), cluster.ip(3)) for r in cluster.client(1).call("processes")["processes"]
        ),
        what="a process away",
    )
    assert proc.wait(timeout=120) == 3
    for burner in burners:
        burner.kill()


MAPS_FILES = """\
import ctypes, mmap, os, select, sys
libc = ctypes.CDLL(None)
print("home", libc.open(b"/proc/self/whereami", 0), flush=True)
libc.open(b"/proc/self/migrate", 1 | os.O_CREAT, 2)
while not libc.open(b"/proc/self/whereami", 0):
    select.select([], [], [], 0.01)
import decimal, _bz2                     # extension modules: their .so files are mapped now
print("away", libc.open(b"/proc/self/whereami", 0), decimal.Decimal(2).sqrt(), _bz2.__name__, flush=True)
with open("data.bin", "rb") as f:
    private = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    private[0:5] = b"HELLO"              # a private copy: the file keeps its bytes
    print("private", private[0:12], private[-4:], len(private), flush=True)
    shared = mmap.mmap(f.fileno(), 4096, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=4096)
    print("shared", shared[0:4], flush=True)
"""


@pytest.mark.parametrize("option", ["-e", None])
def test_files_mapped_away_are_the_home_nodes_files(cluster, mosrun, tmp_path, option):
    (tmp_path / "maps.py").write_text(MAPS_FILES)
    (tmp_path / "data.bin").write_bytes(b"hello, world" + bytes(range(256)) * 64)
    out = tmp_path / "out.txt"
    proc = mosrun(*([option] if option else []), "/usr/bin/python3", "maps.py", out=out)
    status = proc.wait(timeout=60)
    expected = (
        "home 0\naway 2 1.414213562373095048801688724 _bz2\nprivate b'HELLO, world' b'\\xfc\\xfd\\xfe\\xff' 16396\n"
    )
    stderr = (tmp_path / "stderr.txt").read_text()
    # read-only MAP_SHARED of a file becomes MAP_PRIVATE, with or without -e (issue 18)
    assert (status, out.read_text(), stderr) == (0, expected + "shared b'\\xf4\\xf5\\xf6\\xf7'\n", "")
    assert (tmp_path / "data.bin").read_bytes()[:5] == b"hello"


EXECS = """\
import ctypes, os, select, sys
libc = ctypes.CDLL(None)
libc.open(b"/proc/self/migrate", 1 | os.O_CREAT, 2)
while not libc.open(b"/proc/self/whereami", 0):
    select.select([], [], [], 0.01)
print("away", libc.open(b"/proc/self/whereami", 0), os.getpid(), flush=True)
os.execv("/usr/bin/awk", ["awk", sys.argv[1]])
"""


def test_a_program_execd_away_is_made_at_home_and_runs_where_its_process_was(cluster, mosrun, tmp_path):
    (tmp_path / "execs.py").write_text(EXECS)
    out = tmp_path / "out.txt"
    program = AWK % 150
    proc = mosrun("/usr/bin/python3", "execs.py", program, out=out)
    pid = wait_until(lambda: row(cluster), what="the process row")["pid"]
    wait_until(lambda: lines(out) >= 5, what="awk's output")
    assert row(cluster)["where"] == cluster.ip(2)
    assert row(cluster)["command"].startswith("awk")
    assert row(cluster)["nmigs"] == 3  # out, home for the exec, out again
    assert proc.wait(timeout=120) == 3
    native = subprocess.run(["awk", program], capture_output=True, env=mosrun.env, timeout=120)
    assert out.read_bytes() == f"away 2 {pid}\n".encode() + native.stdout


FORKS = """\
i=0
while [ $i -lt 60 ]; do
  i=$((i+1))
  echo "$i $(expr $i \\* 3)"
  sleep 0.02
done
exit 6
"""


def test_a_shell_forking_away_comes_home_to_fork(cluster, mosrun, tmp_path):
    (tmp_path / "forks.sh").write_text(FORKS)
    out = tmp_path / "out.txt"
    proc = mosrun("sh", "forks.sh", out=out)
    pid = wait_until(lambda: row(cluster), what="the process row")["pid"]
    wait_until(lambda: lines(out) >= 5, what="5 lines")
    migrate(cluster, pid, "2")
    wait_until(lambda: (r := row(cluster)) is not None and r["nmigs"] == 2, what="out and home again")
    assert proc.wait(timeout=120) == 6
    native = subprocess.run(["sh", "forks.sh"], cwd=tmp_path, capture_output=True, timeout=120)
    assert out.read_bytes() == native.stdout
    assert (tmp_path / "stderr.txt").read_bytes() == b""


UNSUPPORTED_AWAY = """\
import ctypes, os, select
libc = ctypes.CDLL(None)
libc.open(b"/proc/self/migrate", 1 | os.O_CREAT, 2)
while not libc.open(b"/proc/self/whereami", 0):
    select.select([], [], [], 0.01)
try:
    os.sched_setaffinity(0, {0})
except OSError as err:
    print("affinity", err.errno, flush=True)
"""


@pytest.mark.parametrize("option", ["-w", None])
def test_an_unsupported_call_away_is_judged_as_at_home(cluster, mosrun, tmp_path, option):
    (tmp_path / "affinity.py").write_text(UNSUPPORTED_AWAY)
    out = tmp_path / "out.txt"
    proc = mosrun(*([option] if option else []), "/usr/bin/python3", "affinity.py", out=out)
    status = proc.wait(timeout=60)
    assert (
        tmp_path / "stderr.txt"
    ).read_text() == "MOSRUN: system-call 'sched_setaffinity' not supported under MOSIX\n"
    assert (status, out.read_text()) == ((0, "affinity 38\n") if option else (-9, ""))


BLOCKED = """\
import ctypes, os, select, signal, sys
libc = ctypes.CDLL(None)
signal.signal(signal.SIGUSR1, lambda *_: print("usr1 while reading", flush=True))
libc.open(b"/proc/self/migrate", 1 | os.O_CREAT, 2)
while not libc.open(b"/proc/self/whereami", 0):
    select.select([], [], [], 0.01)
print("reading", flush=True)
print("read", os.read(0, 100), flush=True)   # blocks at home, in the pipe, until written
os.read(0, 100)                              # again, until SIGTERM
"""


def start_blocked(spawn, mosrun, tmp_path) -> tuple[subprocess.Popen, Path, int]:
    """BLOCKED under mosrun, reading a pipe (whose write end is returned) away."""
    (tmp_path / "blocked.py").write_text(BLOCKED)
    out = tmp_path / "out.txt"
    reader, writer = os.pipe()
    with open(out, "wb") as stdout:
        proc = spawn(
            "mosrun",
            "/usr/bin/python3",
            "blocked.py",
            env=mosrun.env,
            cwd=tmp_path,
            stdin=reader,
            stdout=stdout,
            stderr=subprocess.PIPE,
        )
    os.close(reader)
    wait_until(lambda: b"reading" in out.read_bytes(), what="the blocking read, away")
    return proc, out, writer


def test_a_signal_interrupts_a_call_blocked_at_home(cluster, tmp_path, spawn, mosrun):
    proc, out, writer = start_blocked(spawn, mosrun, tmp_path)
    pid = row(cluster)["pid"]
    assert row(cluster)["where"] == cluster.ip(2)
    time.sleep(0.3)  # well inside the read
    os.kill(pid, 10)  # the handler runs; Python reads again (PEP 475)
    wait_until(lambda: b"usr1 while reading" in out.read_bytes(), timeout=10, what="the handler, mid-read")
    os.write(writer, b"some input")
    wait_until(lambda: b"read b'some input'" in out.read_bytes(), timeout=10, what="the read's data")
    time.sleep(0.3)
    os.kill(pid, 15)  # default action: the process ends, mid-read
    assert proc.wait(timeout=10) == -15
    os.close(writer)
    assert out.read_text() == "reading\nusr1 while reading\nread b'some input'\n"
    wait_until(lambda: not guests(cluster, 2), what="the guest to go")


def test_mostimeof_counts_the_cpu_time_used_away(cluster, mosrun, tmp_path):
    proc = mosrun("awk", "BEGIN { for (;;) x++ }", out=tmp_path / "out.txt")
    pid = wait_until(lambda: row(cluster), what="the process row")["pid"]
    migrate(cluster, pid, "2")
    where_is(cluster, cluster.ip(2))
    here = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11]) / os.sysconf("SC_CLK_TCK")

    def seconds() -> float:
        done = cluster.run(1, "mostimeof", str(pid))
        assert done.returncode == 0, done.stderr
        return float(done.stdout.split(":")[1])

    wait_until(lambda: seconds() >= here + 1.5, timeout=20, what="1.5 s of CPU time away, counted at home")
    migrate(cluster, pid, "home")
    where_is(cluster, "here")
    before = seconds()
    assert before >= here + 1.5  # the stay away stays counted at home
    time.sleep(0.5)
    assert seconds() > before  # and the time here adds to it
    proc.kill()


def test_a_node_that_stops_gossiping_seems_dead_and_the_process_comes_home(cluster, mosrun, tmp_path):
    program = AWK % 400
    out = tmp_path / "out.txt"
    proc = mosrun("awk", program, out=out)
    pid = wait_until(lambda: row(cluster), what="the process row")["pid"]
    wait_until(lambda: lines(out) >= 5, what="5 lines")
    migrate(cluster, pid, "2")
    where_is(cluster, cluster.ip(2))
    host = guests(cluster, 2)[0]["pid"]
    cluster.stop(2)  # its mosd: no heart-beat; the guest host runs on
    message = f"MOSRUN: remote-site ({cluster.ip(2)}) seems to be dead\n".encode()
    wait_until(lambda: message in (tmp_path / "stderr.txt").read_bytes(), timeout=30, what="the manual's message")
    where_is(cluster, "here")  # the link still worked: it came home
    wait_until(lambda: not Path(f"/proc/{host}").exists(), what="the guest host to end")
    assert proc.wait(timeout=120) == 3
    native = subprocess.run(["awk", program], capture_output=True, env=mosrun.env, timeout=120)
    assert out.read_bytes() == native.stdout
    assert (tmp_path / "stderr.txt").read_bytes() == message


class Terminal:
    """An interactive bash on a pty of its own: what a user at a terminal types and sees."""

    def __init__(self, env: dict, cwd: Path) -> None:
        import pty

        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.chdir(cwd)
            os.execvpe("bash", ["bash", "--norc", "--noprofile", "-i"], {**env, "PS1": "$ "})
        self.seen = b""

    def type(self, text: bytes) -> None:
        os.write(self.fd, text)

    def read(self, seconds: float) -> None:
        import select

        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self.fd], [], [], left)[0]:
                try:
                    self.seen += os.read(self.fd, 65536)
                except OSError:
                    return

    def expect(self, text: bytes, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            assert time.monotonic() < deadline, f"no {text!r} on the terminal: ...{self.seen[-300:]!r}"
            self.read(0.05)

    def close(self) -> None:
        try:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


def test_job_control_of_a_process_away(cluster, mosrun, tmp_path):
    terminal = Terminal(mosrun.env, tmp_path)
    try:
        terminal.read(0.5)
        program = (AWK % 300).replace('printf "', 'printf "line ')
        terminal.type(f"mosrun awk '{program}'\n".encode())
        terminal.expect(b"line 5 ")
        pid = row(cluster)["pid"]
        migrate(cluster, pid, "2")
        where_is(cluster, cluster.ip(2))
        terminal.expect(b"line 30 ")
        terminal.type(b"\x1a")  # ^Z
        terminal.expect(b"Stopped")  # bash saw its job stop
        terminal.read(0.5)
        printed = terminal.seen.count(b"line ")
        terminal.read(1.0)
        assert terminal.seen.count(b"line ") == printed  # it does not run away either
        assert row(cluster)["where"] == cluster.ip(2)
        terminal.type(b"fg\n")
        terminal.expect(b"line 299 ", timeout=120)
        terminal.type(b"echo status=$?\n")  # fg's status: the job's
        terminal.expect(b"status=3")
        native = subprocess.run(["awk", program], capture_output=True, env=mosrun.env, timeout=120)
        printed = re.findall(rb"line \d+ \d+\n", terminal.seen.replace(b"\r\n", b"\n"))
        assert b"".join(printed) == native.stdout  # every line, once, in order
    finally:
        terminal.close()


def test_a_process_blocked_in_a_call_at_home_comes_home_when_asked(cluster, tmp_path, spawn, mosrun):
    proc, out, writer = start_blocked(spawn, mosrun, tmp_path)
    pid = row(cluster)["pid"]
    time.sleep(0.3)  # well inside the read, made at home
    migrate(cluster, pid, "home")
    where_is(cluster, "here")  # without waiting for the read to end
    os.write(writer, b"typed at last")
    wait_until(lambda: b"read b'typed at last'" in out.read_bytes(), timeout=10, what="the read, made again at home")
    assert (row(cluster)["where"], row(cluster)["nmigs"]) == ("here", 2)
    os.kill(pid, 15)
    assert proc.wait(timeout=10) == -15
    os.close(writer)


def test_mosrun_b_with_m_waits_for_a_node_with_the_memory(cluster, mosrun, tmp_path):
    out = tmp_path / "out.txt"
    proc = mosrun("-b", "-m262143", "awk", AWK % 5, out=out)  # more than any node has
    time.sleep(2.0)
    assert proc.poll() is None and lines(out) == 0 and row(cluster) is None  # not begun anywhere
    proc.kill()
    assert mosrun("-b", "-m10", "awk", AWK % 5, out=out).wait(timeout=60) == 3  # one has 10 MB


REGULAR_FILES = """\
import ctypes, os, random, select
libc = ctypes.CDLL(None)
fd = os.open("data.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o640)
os.write(fd, b"written at home first\\n")
libc.open(b"/proc/self/migrate", 1 | os.O_CREAT, 2)
while not libc.open(b"/proc/self/whereami", 0):
    select.select([], [], [], 0.01)
print("away", libc.open(b"/proc/self/whereami", 0), os.lseek(fd, 0, os.SEEK_CUR), flush=True)
print("write", os.write(fd, b"x" * 5000000), os.lseek(fd, 0, os.SEEK_CUR), flush=True)
print("pwrite", os.pwrite(fd, b"PATCH", 10), os.lseek(fd, 0, os.SEEK_CUR), flush=True)
big = random.Random(3).randbytes(3 << 20)                 # written at home as it comes
print("big write", os.write(fd, big), os.lseek(fd, 0, os.SEEK_CUR), flush=True)
print("big pwrite", os.pwrite(fd, big[:2 << 20], 12345), os.lseek(fd, 0, os.SEEK_CUR), flush=True)
log = os.open("log.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
print("appended", os.write(log, big), os.write(log, big[:100000]), flush=True)
os.close(log)
print("seek", os.lseek(fd, 0, os.SEEK_SET), os.read(fd, 30), os.lseek(fd, 0, os.SEEK_CUR), flush=True)
print("pread", os.pread(fd, 12, 5), os.lseek(fd, 0, os.SEEK_CUR), flush=True)
st = os.fstat(fd)
print("fstat", st.st_size, oct(st.st_mode), st.st_nlink, flush=True)
print("end", os.lseek(fd, -3, os.SEEK_END), os.read(fd, 10), os.read(fd, 10), flush=True)
ro = os.open("data.bin", os.O_RDONLY)
try:
    os.write(ro, b"no")
except OSError as err:
    print("write to read-only", err.errno, flush=True)
os.close(ro)
os.close(fd)
try:
    os.read(fd, 1)
except OSError as err:
    print("read closed", err.errno, flush=True)
"""


def test_calls_on_regular_files_away_behave_as_at_home(cluster, mosrun, tmp_path):
    (tmp_path / "files.py").write_text(REGULAR_FILES)
    native_dir = tmp_path / "native"
    native_dir.mkdir()
    (native_dir / "files.py").write_text(REGULAR_FILES.replace('libc.open(b"/proc/self/whereami", 0)', "2"))
    native = subprocess.run(["/usr/bin/python3", "files.py"], cwd=native_dir, capture_output=True, timeout=60)
    out = tmp_path / "out.txt"
    assert mosrun("/usr/bin/python3", "files.py", out=out).wait(timeout=60) == 0
    assert out.read_bytes() == native.stdout
    for name in ("data.bin", "log.bin"):
        assert (tmp_path / name).read_bytes() == (native_dir / name).read_bytes()
    assert (tmp_path / "stderr.txt").read_bytes() == b""


PIPES = """\
import ctypes, os, random, select, signal, sys
signal.signal(signal.SIGPIPE, signal.SIG_DFL)    # as a C program has it
libc = ctypes.CDLL(None, use_errno=True)
libc.open(b"/proc/self/migrate", 1 | os.O_CREAT, 2)
while not libc.open(b"/proc/self/whereami", 0):
    select.select([], [], [], 0.01)
if sys.argv[1] == "socket":                      # recv/send (recvfrom/sendto) on sockets, as C calls them
    # (not Python's socket module: importing it tries epoll, which MOSIX does not support)
    def read(size):
        buf = ctypes.create_string_buffer(size)
        got = libc.recv(0, buf, ctypes.c_size_t(size), 0)
        if got < 0:
            raise OSError(ctypes.get_errno(), "recv")
        return buf.raw[:got]

    def write(data):
        done = libc.send(1, bytes(data), ctypes.c_size_t(len(data)), 0)
        if done < 0:
            raise OSError(ctypes.get_errno(), "send")
        return done
else:                                            # read/write on pipes
    read, write = (lambda size: os.read(0, size)), (lambda data: os.write(1, data))
sizes, total = random.Random(7), 0
while True:
    data = read(sizes.choice([1, 100, 4096, 5000, 70000, 1 << 20]))
    if not data:
        break
    total += len(data)
    view = memoryview(data)
    while view:                                  # cut short only by a signal
        view = view[write(view):]
print("echoed", total, "where", libc.open(b"/proc/self/whereami", 0), file=sys.stderr, flush=True)
write(b"x" * 100000)                             # its reader is gone by now: SIGPIPE
print("not reached", file=sys.stderr)
"""


@pytest.mark.parametrize("kind", ["pipe", "socket"])
def test_pipes_and_sockets_away_carry_every_byte_and_sigpipe(cluster, mosrun, spawn, tmp_path, kind):
    """Reads and writes on pipes (recv and send on sockets) away, made at home without
    the deputy when they need not wait: bursts with pauses (reads find nothing and
    wait), a reader that lags (writes wait, or are written in part and finished by the
    deputy), the end of the input; then a write with no reader left dies of SIGPIPE,
    as natively."""
    (tmp_path / "pipes.py").write_text(PIPES)
    chunks = [bytes([k % 251]) * (k * 7919 % 300000 + 1) for k in range(60)]
    sent = b"".join(chunks)

    def run(argv: list[str], **kw) -> tuple[int, bytes, bytes]:
        if kind == "pipe":
            proc = spawn(
                *argv, kind, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, **kw
            )
            send, receive, end_input, end_output = (
                proc.stdin.write,
                proc.stdout.read1,
                proc.stdin.close,
                proc.stdout.close,
            )
        else:
            feed_end, its_input = socket.socketpair()
            read_end, its_output = socket.socketpair()
            proc = spawn(*argv, kind, stdin=its_input, stdout=its_output, stderr=subprocess.PIPE, cwd=tmp_path, **kw)
            its_input.close()
            its_output.close()
            send, receive = feed_end.sendall, read_end.recv
            end_input, end_output = (lambda: feed_end.shutdown(socket.SHUT_WR)), read_end.close

        def feed() -> None:
            for k, chunk in enumerate(chunks):
                send(chunk)
                if k % 10 == 9:
                    time.sleep(0.05)  # nothing there for a while
            end_input()

        feeder = threading.Thread(target=feed)
        feeder.start()
        got = bytearray()
        while len(got) < len(sent):
            piece = receive(1 << 16)
            if not piece:
                break
            got += piece
            if len(got) % 7 == 0:
                time.sleep(0.01)  # the reader lags: the pipe fills
        end_output()  # no reader: its next write gets SIGPIPE
        feeder.join(60)
        err = proc.stderr.read()
        return proc.wait(timeout=60), bytes(got), err

    native = run(["/usr/bin/python3", "pipes.py"])
    assert native[0] == -signal.SIGPIPE and native[1] == sent, native[2]
    away = run(["mosrun", "/usr/bin/python3", "pipes.py"], env=mosrun.env)
    assert away[1] == sent, away[2]
    assert native[2] == b"echoed %d where -1\n" % len(sent)  # (no /proc/self/whereami natively)
    assert away[2] == b"echoed %d where 2\n" % len(sent)
    assert away[0] in (-signal.SIGPIPE, 128 + signal.SIGPIPE)  # mosrun dies of it, or says so


BIG = """\
import select, sys
big = bytearray(b"7" * (400 << 20))           # 400 MB to move: the move takes a while
x = 0
for i in range(int(sys.argv[1])):
    x = (x * 31 + i * i + big[i * 4096 % len(big)]) % 1000003
    print(i, x, flush=True)
    select.select([], [], [], 0.01)
"""


def test_a_target_killed_during_the_move_leaves_the_process_running_at_home(cluster, mosrun, tmp_path):
    (tmp_path / "big.py").write_text(BIG)
    out = tmp_path / "out.txt"
    proc = mosrun("/usr/bin/python3", "big.py", "400", out=out)
    pid = wait_until(lambda: row(cluster), what="the process row")["pid"]
    wait_until(lambda: lines(out) >= 5, what="5 lines")
    mover = subprocess.Popen([str(BIN / "mosmigrate"), str(pid), "2"], env=cluster.env(1))
    host = wait_until(lambda: guests(cluster, 2), timeout=30, what="the guest host, receiving")[0]["pid"]
    os.kill(host, 9)  # the target dies in the middle of the move
    assert mover.wait(timeout=60) == 1  # mosmigrate reports the failed move
    message = f"failed migrating to {cluster.ip(2)}: did not complete (no memory there?)".encode()
    wait_until(lambda: message in (tmp_path / "stderr.txt").read_bytes(), what="the manual's message")
    assert row(cluster)["where"] == "here"
    assert proc.wait(timeout=120) == 0  # it ran on at home, to its end
    native = subprocess.run(["/usr/bin/python3", "big.py", "400"], cwd=tmp_path, capture_output=True, timeout=120)
    assert out.read_bytes() == native.stdout


def test_mosrun_L_does_not_stop_a_manual_migration(cluster, mosrun, tmp_path):
    """-L: no *automatic* migration; the user (or the program) may still move it."""
    program = AWK % 120
    out = tmp_path / "out.txt"
    proc = mosrun("-L", "awk", program, out=out)
    pid = wait_until(lambda: row(cluster), what="the process row")["pid"]
    assert "L" in row(cluster)["options"].split() or "-L" in row(cluster)["options"]
    wait_until(lambda: lines(out) >= 5, what="5 lines")
    migrate(cluster, pid, "2")
    where_is(cluster, cluster.ip(2))
    assert proc.wait(timeout=120) == 3
    native = subprocess.run(["awk", program], capture_output=True, env=mosrun.env, timeout=120)
    assert out.read_bytes() == native.stdout
    assert (tmp_path / "stderr.txt").read_bytes() == b""


def peak_memory_kb(pid: int) -> int:
    return int(procfs.status_fields(pid)["VmHWM"].split()[0])


def big_started_on_node_2(cluster, mosrun, tmp_path, count: int):
    """BIG (400 MB) started on node 2 (``mosrun -2``), running: (mosrun, pid, its output)."""
    (tmp_path / "big.py").write_text(BIG)
    out = tmp_path / "out.txt"
    proc = mosrun("-2", "/usr/bin/python3", "big.py", str(count), out=out)
    pid = wait_until(lambda: row(cluster), what="the process row")["pid"]
    where_is(cluster, cluster.ip(2))
    wait_until(lambda: lines(out) >= 5, what="5 lines")
    return proc, pid, out


def test_a_process_moves_from_node_to_node_without_coming_home(cluster, mosrun, tmp_path):
    """Started on node 2 (its 400 MB made there), moved 2 -> 3 -> 2 -> home: the
    image passes through home on its way, never restored there — home's process never
    held the memory until it came home — and the output is a native run's."""
    proc, pid, out = big_started_on_node_2(cluster, mosrun, tmp_path, 500)
    for where in ("3", "2"):
        before = lines(out)
        migrate(cluster, pid, where)
        where_is(cluster, cluster.ip(int(where)))
        assert [g["origpid"] for g in guests(cluster, int(where))] == [pid]
        wait_until(lambda: not guests(cluster, 5 - int(where)), what="the guest it was to go")
        wait_until(lambda: lines(out) >= before + 20, what="progress after the move")
    assert peak_memory_kb(pid) < 100 << 10  # the 400 MB never came home
    assert row(cluster)["nmigs"] == 3
    migrate(cluster, pid, "home")
    where_is(cluster, "here")
    assert peak_memory_kb(pid) > 400 << 10
    assert proc.wait(timeout=120) == 0
    native = subprocess.run(["/usr/bin/python3", "big.py", "500"], cwd=tmp_path, capture_output=True, timeout=120)
    assert out.read_bytes() == native.stdout
    assert (tmp_path / "stderr.txt").read_bytes() == b""


@pytest.mark.parametrize("case", ["refused", "killed"])
def test_a_failed_move_on_leaves_the_process_where_it_was(cluster, mosrun, tmp_path, case):
    """Away on node 2 and sent on to node 3, which refuses (blocked) or dies while
    the image passes home: the process runs on at node 2, to its native output."""
    proc, pid, out = big_started_on_node_2(cluster, mosrun, tmp_path, 400)
    if case == "refused":
        assert cluster.run(3, "mosctl", "block").returncode == 0
        reason = "other node refused"
        migrate_fails(cluster, pid, "3", f"failed migrating to {cluster.ip(3)}: {reason}")
    else:
        mover = subprocess.Popen([str(BIN / "mosmigrate"), str(pid), "3"], env=cluster.env(1))
        host = wait_until(lambda: guests(cluster, 3), timeout=30, what="the guest host, receiving")[0]["pid"]
        os.kill(host, 9)  # the next node dies in the middle of the move
        assert mover.wait(timeout=60) == 1  # mosmigrate reports the failed move
        reason = "did not complete (no memory there?)"
    message = f"failed migrating to {cluster.ip(3)}: {reason}".encode()
    wait_until(lambda: message in (tmp_path / "stderr.txt").read_bytes(), what="the manual's message")
    before = lines(out)
    wait_until(lambda: lines(out) >= before + 20, what="progress where it was")
    assert row(cluster)["where"] == cluster.ip(2)
    assert proc.wait(timeout=120) == 0
    native = subprocess.run(["/usr/bin/python3", "big.py", "400"], cwd=tmp_path, capture_output=True, timeout=120)
    assert out.read_bytes() == native.stdout


def spare_guest_hosts() -> set[int]:
    """The guest hosts waiting for a process, on every node of the machine."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"mosix_core.remote.host" in argv and b"--spare" in argv:
                found.add(int(entry))
    return found


def test_a_spare_guest_host_takes_the_process_and_a_dead_one_is_replaced(cluster, mosrun, tmp_path):
    """Each mosd keeps a guest host ready (Python loaded); one that died is not waited
    for: the move starts a guest host as before, and a new spare is made after it."""
    out = tmp_path / "out.txt"
    proc = mosrun("awk", AWK % 100000, out=out)
    pid = wait_until(lambda: row(cluster), what="the process row")["pid"]
    spares = wait_until(
        lambda: found if len(found := spare_guest_hosts()) >= 3 else None, what="a spare guest host on each node"
    )
    for spare in spares:
        os.kill(spare, signal.SIGKILL)
    wait_until(lambda: not spare_guest_hosts() & spares, what="the spares gone")
    migrate(cluster, pid, "2")
    where_is(cluster, cluster.ip(2))
    assert guests(cluster, 2)[0]["pid"] not in spares
    ready = wait_until(lambda: spare_guest_hosts(), what="a new spare after the arrival")
    migrate(cluster, pid, "home")
    where_is(cluster, "here")
    migrate(cluster, pid, "2")
    where_is(cluster, cluster.ip(2))
    assert guests(cluster, 2)[0]["pid"] in ready  # the spare took it
    before = lines(out)
    wait_until(lambda: lines(out) > before, what="progress after the moves")
    proc.kill()
    assert (tmp_path / "stderr.txt").read_bytes() == b""


@pytest.mark.parametrize("where", ["9", "nosuchhost.invalid", "10.9.9.9"])
def test_mosmigrate_to_an_unknown_node_fails_at_once(cluster, mosrun, tmp_path, where):
    """The target is resolved before anything is sent: the manual's "not in map", from
    mosmigrate itself, with a failing exit status; the process is not disturbed."""
    out = tmp_path / "out.txt"
    proc = mosrun("awk", AWK % 100000, out=out)
    pid = wait_until(lambda: row(cluster), what="the process row")["pid"]
    done = cluster.run(1, "mosmigrate", str(pid), where)
    assert done.returncode == 1
    assert done.stderr.endswith(f": failed migrating to {where}: not in map\n")  # "mosmigrate: ..."
    assert row(cluster)["where"] == "here"
    assert (tmp_path / "stderr.txt").read_bytes() == b""
    proc.kill()


def test_mosrun_to_an_unknown_node_fails_at_once_with_mosd(cluster, mosrun, tmp_path):
    proc = mosrun("-9", "touch", "ran", out=tmp_path / "out.txt")
    assert proc.wait(timeout=60) == 1
    assert (tmp_path / "stderr.txt").read_bytes() == b"MOSRUN: failed migrating to 9: not in map\n"
    assert not (tmp_path / "ran").exists()


@pytest.fixture
def migrate_self(tmp_path) -> Path:
    """tests/cluster/programs/migrate_self.c, built."""
    program = tmp_path / "migrate_self"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(program), str(Path(__file__).parent / "programs" / "migrate_self.c")],
        check=True,
    )
    return program


def test_proc_self_migrate_returns_when_the_move_is_over(cluster, mosrun, tmp_path, migrate_self):
    """mosix(7): writing /proc/self/migrate returns 0 once the move happened, so an
    immediate read of whereami sees the new node: home -> 2 -> home -> 2 -> 3 -> home."""
    out = tmp_path / "out.txt"
    proc = mosrun(str(migrate_self), "2", "0", "2", "3", "0", out=out)
    assert proc.wait(timeout=120) == 0, (tmp_path / "stderr.txt").read_text()
    assert out.read_text() == "2 0 2 0\n0 0 0 0\n2 0 2 0\n3 0 3 0\n0 0 0 0\n"
    assert (tmp_path / "stderr.txt").read_bytes() == b""


def test_proc_self_migrate_returns_minus_one_when_the_move_fails(cluster, mosrun, tmp_path, migrate_self):
    """A refused move (node 3 blocked) returns -1, at home and away (on from node 2),
    with the manual's message; a node not in the map too, at once (EINVAL)."""
    assert cluster.run(3, "mosctl", "block").returncode == 0
    out = tmp_path / "out.txt"
    proc = mosrun(str(migrate_self), "3", "9", "2", "3", "9", out=out)
    assert proc.wait(timeout=120) == 0, (tmp_path / "stderr.txt").read_text()
    eagain, einval = errno.EAGAIN, errno.EINVAL
    assert out.read_text() == f"3 -1 0 {eagain}\n9 -1 0 {einval}\n2 0 2 0\n3 -1 2 {eagain}\n9 -1 2 {einval}\n"
    refused = f"MOSRUN: failed migrating to {cluster.ip(3)}: other node refused\n"
    unknown = "MOSRUN: failed migrating to 9: not in map\n"
    assert (tmp_path / "stderr.txt").read_text() == refused + unknown + refused + unknown


def test_mosmigrate_reports_the_outcome_of_the_move(cluster, mosrun, tmp_path):
    """mosmigrate waits for the move: exit 0 once the process is there (the table says
    so at once), 1 with the manual's message when the target refuses."""
    assert cluster.run(3, "mosctl", "block").returncode == 0
    out = tmp_path / "out.txt"
    proc = mosrun("awk", AWK % 100000, out=out)
    pid = wait_until(lambda: row(cluster), what="the process row")["pid"]
    refused = cluster.run(1, "mosmigrate", str(pid), "3")
    assert refused.returncode == 1
    assert refused.stderr.endswith(f"failed migrating to {cluster.ip(3)}: other node refused\n")
    assert row(cluster)["where"] == "here"
    for where, expected in (("2", cluster.ip(2)), ("home", "here")):
        migrate(cluster, pid, where)
        where_is(cluster, expected)
    proc.kill()
