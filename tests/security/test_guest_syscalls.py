"""Issue 17, items 1 and 3: every call of a supervised process is judged by MOSIX's
rules, whatever its ABI, and a guest's local calls touch only itself.

A 64-bit program can make i386 system calls (``int $0x80``, or ``syscall`` from a 32-bit
code segment). The filter used to let every call of another architecture run untouched:
a guest then ran ``open``/``socket``/``kill`` on its host, as the host's guest user. Now
such a call always stops and is refused with the manual's message (killed; ENOSYS under
``-e``), at home and away. ``prlimit64`` on another process used to run locally in a
guest (a guest could set another guest host's RLIMIT_CPU to 0).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from mosix_core.linux import seccomp
from mosix_core.linux.syscall_names import NAMES, NUMBERS
from mosix_core.mosrun import rules
from mosix_core.remote import guest
from tests.helpers import nscluster
from tests.helpers.programs import BIN, elf32

SOURCE = Path(__file__).parent / "programs" / "guest_attacks.c"
I386_GETUID32, I386_OPEN, I386_KILL, I386_SOCKETCALL = 199, 5, 37, 102
#: what the program prints after its attack, when the call fails with ENOSYS
AFTER_ENOSYS = [f"result={-errno.ENOSYS}", *(f"after {i}" for i in range(200)), "end"]
#: calls whose first argument names another process (or process group)
PID_FIRST = (
    "kill",
    "tkill",
    "tgkill",
    "prlimit64",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "sched_setaffinity",
    "sched_getaffinity",
    "sched_setparam",
    "sched_getparam",
    "sched_setscheduler",
    "sched_getscheduler",
    "sched_setattr",
    "sched_getattr",
    "sched_rr_get_interval",
    "setpgid",
    "getpgid",
    "getsid",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "get_robust_list",
    "kcmp",
    "move_pages",
    "migrate_pages",
    "pidfd_open",
    "capget",
    "capset",
    "wait4",
    "waitid",
    "process_madvise",
    "pidfd_send_signal",
    "pidfd_getfd",
    "process_mrelease",
    "ioprio_set",
    "ioprio_get",
)


@pytest.fixture(scope="module")
def attacks(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the test programs (scripts/install.sh installs it)")
    out = tmp_path_factory.mktemp("attacks")
    program = out / "guest_attacks"
    subprocess.run(["gcc", "-O2", "-Wall", "-no-pie", "-o", str(program), str(SOURCE)], check=True)
    out.chmod(0o755)
    return program


def test_i386_calls_stop_in_every_filter():
    """Home's filter and a guest's (with and without home's wall clock) trace every
    i386 call, with any number and arguments; another architecture is killed."""
    filters = {
        "home": rules.build_filter(),
        "home, restored": rules.build_filter(virtual_pids=True),
        "guest": guest.guest_filter(),
        "guest, home's wall clock": guest.guest_filter(wall_clock=True),
    }
    for name, program in filters.items():
        for nr in (0, 1, 3, 4, 5, 37, 102, 199, 240, 383, 0xFFFF, 0x7FFFFFFF):
            for args in ((), (0, 0, 0, 0, 0, 0), (1 << 32, 2, 3)):
                got = seccomp.evaluate(program, nr, args, arch=seccomp.AUDIT_ARCH_I386)
                assert got == seccomp.RET_TRACE, (name, nr, args)
        assert seccomp.evaluate(program, 39, (), arch=0x40000028) == seccomp.RET_KILL_PROCESS, name  # ARM


def test_a_guests_local_calls_never_name_another_process():
    """Every call a guest runs where it is, untraced, with another pid (or -1, a
    process group) in its first argument: none may be left."""
    program = guest.guest_filter()
    for name in PID_FIRST:
        if name not in NUMBERS:
            continue
        for other in (1, 4242, (1 << 64) - 1, 1 << 32):
            got = seccomp.evaluate(program, NUMBERS[name], (other, 0, 0, 0, 0, 0))
            assert got == seccomp.RET_TRACE, (name, other)
    # ...while the process's own limits stay a local matter
    assert seccomp.evaluate(program, NUMBERS["prlimit64"], (0, 0, 0, 0)) == seccomp.RET_ALLOW


def test_a_foreign_call_reported_by_a_guest_is_the_unsupported_case():
    context = rules.CallContext(os.getpid(), lambda fd: None)
    for nr in (I386_GETUID32, I386_OPEN, 0):
        verdict = rules.home_verdict(rules.FOREIGN_ABI_CALL + nr, (), context)
        assert verdict == rules.Unsupported(f"system-call '32-bit #{nr}' not supported under MOSIX")
    assert max(NAMES) < rules.FOREIGN_ABI_CALL


def _run(argv, env, cwd, timeout=60):
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def home_env(tmp_path):
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "MOSIX_ETC": str(tmp_path / "no-etc"),
    }
    return env


@pytest.mark.linux
@pytest.mark.parametrize("mode", ["uid", "open", "socket"])
def test_i386_calls_at_home_are_refused_with_the_manuals_message(attacks, home_env, tmp_path, mode):
    target = tmp_path / "created-by-int80"
    argv = [str(attacks), "0", mode] + ([str(target)] if mode == "open" else [])
    native = _run(argv, home_env, tmp_path)
    assert native.returncode == 0 and "end" in native.stdout, "the attack itself works natively"
    target.unlink(missing_ok=True)
    nr = {"uid": I386_GETUID32, "open": I386_OPEN, "socket": I386_SOCKETCALL}[mode]
    killed = _run(["mosrun", *argv], home_env, tmp_path)
    assert killed.returncode == -9, killed
    assert f"system-call '32-bit #{nr}' not supported under MOSIX" in killed.stderr
    assert killed.stdout == "" and not target.exists()
    failed = _run(["mosrun", "-e", *argv], home_env, tmp_path)
    assert (failed.returncode, failed.stdout.splitlines()) == (0, AFTER_ENOSYS), failed
    assert not target.exists()


@pytest.mark.linux
def test_a_32_bit_program_still_runs_natively(home_env, tmp_path):
    """Its i386 calls now stop too (the filter it inherits traces them): the
    supervisor lets a native process's calls run."""
    program = elf32(tmp_path)
    if subprocess.run([str(program)], capture_output=True).returncode != 0:
        pytest.skip("this kernel cannot run 32-bit programs (no IA32 emulation)")
    done = _run(["mosrun", "sh", "-c", f"{program}; {program}; echo after"], home_env, tmp_path)
    assert (done.returncode, done.stdout) == (0, "hi\nhi\nafter\n"), done


# -- away: a guest on another node -------------------------------------------------------------------
@pytest.fixture
def cluster(local_cluster):
    return local_cluster(nodes=2, interval=0.2)


def _guests(cluster, k: int) -> list[dict]:
    return [p for p in cluster.client(k).call("processes")["processes"] if p.get("home")]


@pytest.mark.cluster
@pytest.mark.parametrize("option", ["", "-e"])
def test_i386_calls_away_are_refused_and_never_reach_the_host(cluster, attacks, tmp_path, option):
    # /tmp, where anybody may create a file: the guest's own open would succeed there
    target = Path("/tmp") / f"mosix-int80-{os.getpid()}{option}"
    target.unlink(missing_ok=True)
    env = {**cluster.env(1), "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    done = _run(["mosrun", *([option] if option else []), str(attacks), "2", "open", str(target)], env, tmp_path)
    created = target.exists()
    target.unlink(missing_ok=True)
    assert "away=2" in done.stdout, done
    assert not created, "the guest created a file on its host"
    message = f"system-call '32-bit #{I386_OPEN}' not supported under MOSIX"
    if option:
        assert (done.returncode, done.stdout.splitlines()[1:]) == (0, AFTER_ENOSYS), done
        assert message not in done.stderr
    else:
        # item 10: killed at the refused call; none of the 202 writes after it happened
        assert (done.returncode, done.stdout, message in done.stderr) == (-9, "away=2\n", True), done


@pytest.mark.cluster
@pytest.mark.parametrize("option", ["", "-e"])
def test_prlimit64_on_another_process_away_is_judged_at_home(cluster, attacks, tmp_path, option):
    """The nearest other process a guest knows of is its own guest host: a local
    prlimit64 on it set RLIMIT_CPU to 0 and killed it."""
    env = {**cluster.env(1), "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    pid_file = tmp_path / "victim.pid"
    proc = subprocess.Popen(
        ["mosrun", *([option] if option else []), str(attacks), "2", "prlimit", str(pid_file)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (hosts := _guests(cluster, 2)):
            assert time.monotonic() < deadline, "the process never arrived at node 2"
            time.sleep(0.05)
        host = hosts[0]["pid"]
        limits_before = Path(f"/proc/{host}/limits").read_text()
        pid_file.write_text(str(host))
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    message = "system-call 'prlimit64' not supported under MOSIX"
    if option:
        assert (proc.returncode, out.splitlines()[1:]) == (0, AFTER_ENOSYS), (out, err)
    else:
        assert (proc.returncode, out, message in err) == (-9, "away=2\n", True), (out, err)
    if Path(f"/proc/{host}").exists():
        assert Path(f"/proc/{host}/limits").read_text() == limits_before


# -- nodes that share nothing: the attack cannot reach the machine's other processes ----------------
@pytest.fixture
def ns_cluster(tmp_path_factory):
    reason = nscluster.unavailable()
    if reason:
        pytest.skip(f"no namespaced cluster on this machine: {reason}")
    cluster = nscluster.up(
        tmp_path_factory.mktemp("nscluster"), nodes=2, interval=0.2, shared=[tmp_path_factory.getbasetemp()]
    )
    try:
        cluster.converged()
        yield cluster
    finally:
        cluster.down()


AWK_SLOW = "BEGIN { for (i = 0; i < 120; i++) { for (j = 0; j < 100000; j++) s += j % 7; print i, s; fflush() } }"


@pytest.mark.cluster
def test_an_i386_kill_of_everything_away_is_refused_and_other_guests_live(ns_cluster, attacks, tmp_path):
    """Each node in network, PID and mount namespaces of its own. A bystander moved to
    node 2 first; then a guest there calls kill(-1, SIGKILL) through int $0x80, which as
    the shared guest user used to end every guest of the node."""
    cluster = ns_cluster
    env = {**cluster.env(1), "LANG": "C.UTF-8", "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    out = tmp_path / "bystander.txt"
    with open(out, "wb") as stdout:
        bystander = cluster.spawn(
            1,
            ["mosrun", "awk", AWK_SLOW],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
        )
    deadline = time.monotonic() + 30
    while not (rows := [p for p in cluster.client(1).call("processes")["processes"] if not p.get("home")]):
        assert time.monotonic() < deadline, "the bystander never started"
        time.sleep(0.05)
    moved = cluster.run(1, "mosmigrate", str(rows[0]["pid"]), "2")
    assert moved.returncode == 0, moved.stderr
    while not _guests(cluster, 2):
        assert time.monotonic() < deadline + 30, "the bystander never arrived at node 2"
        time.sleep(0.05)
    attack = cluster.spawn(
        1,
        ["mosrun", str(attacks), "2", "killall"],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = attack.communicate(timeout=60)
    assert attack.returncode == -9 and stdout == b"away=2\n", (stdout, stderr)
    assert b"system-call '32-bit #37' not supported under MOSIX" in stderr
    assert bystander.wait(timeout=120) == 0, bystander.stderr.read()
    native = subprocess.run(["awk", AWK_SLOW], capture_output=True, env=env, timeout=120).stdout
    assert out.read_bytes() == native
