"""What a new user meets first (issue 18, "the rest of a first contact"), on real
daemons and real programs: ``moscluster status`` after ``down``; ``mosps -V`` on the
node that hosts a guest (the guest's own command, home, home pid and owner, to whom
it concerns); the one rule for tools without a running mosd; ``/proc/self/*`` read
as if it were a file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mosix_core.cluster import localcluster
from mosix_core.linux import procfs
from mosix_core.users import user_name
from tests.helpers.cluster import fresh_base_ip, run_tool
from tests.helpers.programs import BIN

pytestmark = pytest.mark.cluster

# long enough to be looked at on the node it moved to (killed at teardown)
LOOP = 'BEGIN { for (i = 0; ; i++) { for (j = 0; j < 200000; j++) s += j % 7; printf "%d\\n", i; fflush() } }'


# -- moscluster ------------------------------------------------------------------------------------
def test_moscluster_status_after_down_lists_no_nodes(tmp_path):
    root = tmp_path / "cluster"
    args = ("--dir", str(root))
    up = run_tool("moscluster", "up", "--nodes", "2", "--base-ip", str(fresh_base_ip()), "--interval", "0.2", *args)
    try:
        assert up.returncode == 0, up.stderr
        assert run_tool("moscluster", "status", *args).stdout.count(" up (pid ") == 2
        (root / "mine.txt").write_text("the user's own file")
    finally:
        down = run_tool("moscluster", "down", *args)
    assert down.returncode == 0 and "stopped 2 nodes" in down.stdout, down.stderr
    status = run_tool("moscluster", "status", *args)
    assert status.returncode == 1
    assert status.stdout == ""
    assert f"no local cluster at {root} (moscluster up first)" in status.stderr
    assert (root / "node1" / "var" / "mosd.log").exists()  # the logs stay until the next up
    assert run_tool("moscluster", "start", "1", *args).returncode == 1
    again = run_tool("moscluster", "up", "--nodes", "1", "--base-ip", str(fresh_base_ip()), "--interval", "0.2", *args)
    try:
        assert again.returncode == 0, again.stderr
        assert not (root / "node2").exists()  # the earlier cluster's trees went
        assert (root / "mine.txt").read_text() == "the user's own file"
        assert run_tool("moscluster", "status", *args).stdout.count(" up (pid ") == 1
    finally:
        run_tool("moscluster", "down", *args)


# -- mosps -V on the node that hosts a guest ------------------------------------------------------------
@pytest.fixture
def guest(local_cluster, tmp_path, spawn):
    """An awk loop started on node 1 with ``mosrun -2``: a guest of node 2."""
    cluster = local_cluster(nodes=2, interval=0.2)
    env = {**cluster.env(1), "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    proc = spawn(
        "mosrun",
        "-2",
        "awk",
        LOOP,
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "stderr.txt", "wb"),
    )
    # ready once node 2's guest host has its guest: the row comes before the traced process does
    deadline = time.monotonic() + 30
    while not [
        r
        for r in cluster.client(2).call("processes")["processes"]
        if r.get("home") and procfs.traced_child(r["pid"]) is not None
    ]:
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.txt").read_text()
        time.sleep(0.05)
    return cluster, proc


def mosps(cluster, k: int, *args: str) -> list[dict[str, str]]:
    out = cluster.run(k, "mosps", *args)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = lines[0].split()
    return [dict(zip(header, line.split(None, len(header) - 1))) for line in lines[1:]]


def traced_by(host: int) -> int:
    program = procfs.traced_child(host)
    assert program is not None, f"nothing traced by {host}"
    return program


def test_mosps_V_shows_the_guest_as_its_owner_knows_it(guest):
    cluster, proc = guest
    host = next(r for r in cluster.client(2).call("processes")["processes"] if r.get("home"))["pid"]
    program = traced_by(host)
    rows = mosps(cluster, 2, "-V")  # no -A needed: -V lists guests (mosps(1), note 1)
    assert rows == [{"PID": str(program), "ORIGPID": str(proc.pid), "FROM": "1", "TTY": "?", "CMD": "awk"}]
    (full,) = mosps(cluster, 2, "-V", "u")
    assert (full["USER"], full["PID"], full["COMMAND"]) == (user_name(os.geteuid()), str(program), f"awk {LOOP}")
    (numeric,) = mosps(cluster, 2, "-V", "-l")
    assert numeric["UID"] == str(os.geteuid())  # the owner's uid at home, not the guest uid it runs as
    everyone = {r["PID"]: r for r in mosps(cluster, 2, "-A")}
    assert str(host) not in everyone and everyone[str(program)]["CMD"] == "awk"
    # and home still lists it as its own, away on node 2
    assert [(r["PID"], r["WHERE"]) for r in mosps(cluster, 1)] == [(str(proc.pid), "2")]


def test_a_guests_cpu_is_the_load_of_the_virtual_node_it_runs_on(guest):
    # mosmon and placement must see a job where it runs: on a virtual node the guest's
    # CPU is its guest process's, not its guest host's (idle while the guest computes)
    cluster, proc = guest
    host = next(r for r in cluster.client(2).call("processes")["processes"] if r.get("home"))["pid"]
    program, clock = traced_by(host), os.sysconf("SC_CLK_TCK")

    def ticks() -> int:
        fields = Path(f"/proc/{program}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    before, t0 = ticks(), time.monotonic()
    time.sleep(3)
    share = (ticks() - before) / clock / (time.monotonic() - t0)  # what it really gets, busy machine or not
    assert share > 0.05, f"the guest got {share:.2f} of a CPU: too busy a machine to see a load"
    # one virtual CPU of standard speed: a load of 100 is one CPU's worth
    cluster.wait_until(
        lambda: cluster.node_in_view(2, 2)["load"] / 100 >= share / 2,
        15,
        f"node 2's load to show its guest's {share:.2f} CPU",
    )
    cluster.wait_until(
        lambda: cluster.node_in_view(1, 2)["load"] / 100 >= share / 2, 15, "node 1 to learn node 2's load by gossip"
    )


AS_NOBODY = """\
import json, os, sys
from pathlib import Path
from mosix_core.cli import mosps
os.chdir(sys.argv[1])
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
for options in ([], ["-A"]):
    rows = mosps.listing(Path("."), [mosps.PsOption(o[1:], True) for o in options],
                         filters=mosps.Filters(guests_only=True))
    print(json.dumps([(r["origpid"], r["user"]) for r in rows]))
"""


def test_mosps_V_lists_another_users_guests_only_when_asked_for_everyone(guest, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root, to be another user too")
    cluster, proc = guest
    done = subprocess.run(
        [sys.executable, "-c", AS_NOBODY, str(cluster.etc(2))], capture_output=True, text=True, timeout=60
    )
    if "Permission denied" in done.stderr:
        pytest.skip(f"an ordinary user cannot reach mosd here: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr
    own, everyone = done.stdout.splitlines()
    assert own == "[]"  # not nobody's: its owner is root at home
    assert everyone == f'[[{proc.pid}, "{user_name(os.geteuid())}"]]'


# -- without a running mosd -------------------------------------------------------------------------------
@pytest.fixture
def no_daemon(tmp_path) -> dict[str, str]:
    """A configured 2-node cluster whose node 1 runs no mosd: its tools' environment."""
    layout = localcluster.ClusterLayout(
        root=tmp_path / "etc",
        nodes=2,
        base_ip=fresh_base_ip(),
        speeds=(10000,) * 2,
        cpus=1,
        memory_mb=1024,
        interval=0.2,
        udp_port=10253,
        tcp_port=10253,
    )
    localcluster.write_layout(layout)
    return {**os.environ, "MOSIX_ETC": str(layout.etc(1)), "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}


def mosrun(env, tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, bool]:
    """Run ``mosrun ARGS touch ran``: (the run, whether the program ran)."""
    marker = tmp_path / "ran"
    marker.unlink(missing_ok=True)
    done = subprocess.run(
        ["mosrun", *args, "touch", str(marker)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    return done, marker.exists()


def test_mosrun_to_an_unknown_node_fails_at_once_without_mosd(no_daemon, tmp_path):
    for where in ("-rnosuchhost.invalid", "-9", "-127.1.2.3"):
        done, ran = mosrun(no_daemon, tmp_path, where)
        name = where[2:] if where.startswith("-r") else where[1:]
        assert (done.returncode, ran) == (1, False), (where, done.stderr)
        assert done.stderr == f"MOSRUN: failed migrating to {name}: not in map\n"


def test_without_mosd_a_known_node_needs_F_and_cluster_reports_refuse(no_daemon, tmp_path):
    done, ran = mosrun(no_daemon, tmp_path, "-2")
    assert (done.returncode, ran) == (1, False)
    assert done.stderr == "MOSRUN: failed migrating to 2: MOSIX is not running on this node\n"
    done, ran = mosrun(no_daemon, tmp_path, "-F", "-2")  # -F: run even if the node is unavailable
    assert (done.returncode, ran) == (0, True)
    assert done.stderr == "MOSRUN: failed migrating to 2: MOSIX is not running on this node\n"
    done, ran = mosrun(no_daemon, tmp_path, "-b")  # the best node this node knows: itself
    assert (done.returncode, ran) == (0, True)
    assert done.stderr == "mosrun: note: -b needs MOSIX running on this node (mosd); starting at home\n"
    done, ran = mosrun(no_daemon, tmp_path)
    assert (done.returncode, ran, done.stderr) == (0, True, "")
    # the same rule for every tool: what needs only this node's configuration works, what
    # reports the cluster (or this node's MOSIX processes) says MOSIX is not running
    for argv in (["mosps"], ["mosps", "-V"], ["mosctl", "status"], ["mosbestnode"], ["moskillall"], ["mostimeof", "1"]):
        done = subprocess.run(argv, env=no_daemon, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert done.stderr.startswith(f"{argv[0]}: MOSIX is not running on this node"), done.stderr
    done = subprocess.run(["mosctl", "whois", "2"], env=no_daemon, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# -- /proc/self/* read as a file ----------------------------------------------------------------------------
def test_cat_of_a_proc_self_file_is_told_what_the_interface_is(tmp_path):
    note = (
        "MOSRUN: /proc/self/{} is not a file: its answer is the return value of open() (here {}), "
        "not something to read - see mosix(7), INTERFACE FOR PROGRAMS\n"
    )
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "MOSIX_ETC": str(tmp_path)}
    done = subprocess.run(
        ["mosrun", "cat", "/proc/self/whereami"], env=env, input="stdin\n", capture_output=True, text=True, timeout=60
    )
    # cat took 0 for a descriptor and read its standard input: what the note explains
    assert (done.returncode, done.stdout, done.stderr) == (0, "stdin\n", note.format("whereami", 0))
    done = subprocess.run(
        ["mosrun", "head", "-c", "10", "/proc/self/sigmig"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stderr.startswith(note.format("sigmig", 0))
    # a program using the interface is told nothing, and gets its value
    c = tmp_path / "where.c"
    c.write_text(
        "#include <fcntl.h>\n#include <stdio.h>\n"
        'int main(void) { printf("%d\\n", open("/proc/self/whereami", 0)); return 0; }\n'
    )
    subprocess.run(["gcc", "-o", str(tmp_path / "where"), str(c)], check=True)
    done = subprocess.run(["mosrun", str(tmp_path / "where")], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "0\n", "")
    py = 'import ctypes; print(ctypes.CDLL(None).open(b"/proc/self/whereami", 0))'
    done = subprocess.run(["mosrun", "python3", "-c", py], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "0\n", "")


def test_cat_of_a_proc_self_file_away_is_told_too(local_cluster, tmp_path):
    cluster = local_cluster(nodes=2, interval=0.2)
    env = {**cluster.env(1), "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        ["mosrun", "-2", "cat", "/proc/self/whereami"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # away on node 2 the value is 2: cat reads its standard error, open for writing only
    assert done.stderr.splitlines()[0] == (
        "MOSRUN: /proc/self/whereami is not a file: its answer is the return value of open() (here 2), "
        "not something to read - see mosix(7), INTERFACE FOR PROGRAMS"
    )
    assert (done.returncode, done.stdout) == (1, "")
