"""The unsupported-feature rules of mosrun(1), on a real program making real calls."""

from __future__ import annotations

import pytest

from tests.helpers.programs import elf32, run

pytestmark = pytest.mark.linux

SHARED = "MOSRUN: Shared memory (MAP_SHARED) not supported under MOSIX"

# call → (message when refused, what the call returns under -e/-w)
REFUSED = {
    "mmap-shared-rw": (SHARED, "mmap-shared-rw:ENOSYS"),
    "mmap-anon-shared": (SHARED, "mmap-anon-shared:ENOSYS"),
    "mmap-chr": ("MOSRUN: Mapping special character files not supported under MOSIX", "mmap-chr:ENOSYS"),
    "prctl": ("MOSRUN: Prctl option #4 not supported under MOSIX", "prctl:ENOSYS"),
    "ioctl": ("MOSRUN: Ioctl 0x8914 not supported under MOSIX", "ioctl:ENOSYS"),
    "shmat": ("MOSRUN: Attaching SYSV shared-memory not supported under MOSIX", "shmat:ENOSYS"),
    "thread": ("MOSRUN: system-call 'clone' not supported under MOSIX", "thread:ENOSYS"),
    "priority-other": ("MOSRUN: getpriority/setpriority supported under MOSIX only for self", "priority-other:ENOSYS"),
    "sysfs": ("MOSRUN: Sysfs option '7' not supported under MOSIX", "sysfs:ENOSYS"),
    "illegal": ("MOSRUN: illegal system call #600", "illegal:ENOSYS"),
    "futex-shared": ("MOSRUN: system-call 'futex' not supported under MOSIX", "futex-shared:ENOSYS"),
}

ALLOWED = {
    "prctl-deathsig": "prctl-deathsig=0",
    "ioctl-ok": "ioctl-ok=0",
    "fork": "fork=7",
    "vfork": "vfork=9",
    "priority-self": "priority-self=0",
    "futex-private": "futex-private=0",
    "sleep": "sleep=0",
    "getrlimit": "getrlimit=1024/1024",
    "affinity": "affinity=0",  # one CPU (issue 18: docs/system-calls.md)
}


@pytest.mark.parametrize("call", sorted(REFUSED))
def test_unsupported_feature_kills_by_default(call, programs, mosrun_env):
    message, _ = REFUSED[call]
    result = run(["mosrun", str(programs / "unsupported"), call], mosrun_env)
    assert result.returncode == -9 or result.returncode == 137
    assert result.stdout == ""  # killed before it could report
    assert result.stderr.strip() == message


@pytest.mark.parametrize("call", sorted(REFUSED))
def test_e_fails_the_call_silently_and_w_says_so(call, programs, mosrun_env):
    message, outcome = REFUSED[call]
    silent = run(["mosrun", "-e", str(programs / "unsupported"), call], mosrun_env)
    assert silent.returncode == 0
    assert silent.stdout.startswith(outcome)
    assert silent.stderr == ""
    warned = run(["mosrun", "-w", str(programs / "unsupported"), call], mosrun_env)
    assert warned.returncode == 0
    assert warned.stdout.startswith(outcome)
    assert warned.stderr.strip() == message


def test_u_cancels_e(programs, mosrun_env):
    result = run(["mosrun", "-e", "-u", str(programs / "unsupported"), "thread"], mosrun_env)
    assert result.returncode == 137 or result.returncode == -9
    assert "'clone'" in result.stderr


@pytest.mark.parametrize("call", sorted(ALLOWED))
def test_supported_calls_run_as_natively(call, programs, mosrun_env):
    result = run(["mosrun", str(programs / "unsupported"), call], mosrun_env)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, ALLOWED[call], "")


def test_setrlimit_nofile_is_ignored_with_the_warning(programs, mosrun_env):
    result = run(["mosrun", str(programs / "unsupported"), "setrlimit"], mosrun_env)
    assert result.returncode == 0
    assert result.stdout.strip() == "setrlimit=0 nofile=1024"  # the limit stays at 1024
    assert result.stderr.strip() == "MOSRUN: WARNING: setrlimit(RLIMIT_NOFILE) ignored by MOSIX"


def test_sigstop_becomes_sigtstp(programs, mosrun_env):
    native = run([str(programs / "unsupported"), "stop-self"], mosrun_env)
    assert native.stdout.strip() == "stop-self=STOP"
    result = run(["mosrun", str(programs / "unsupported"), "stop-self"], mosrun_env)
    assert result.stdout.strip() == "stop-self=TSTP"


@pytest.mark.parametrize("option", ["-u", "-e", "-w"])
def test_read_only_shared_mapping_becomes_private(option, programs, mosrun_env, tmp_path):
    """MAP_SHARED+PROT_READ of a file is mapped privately, silently, whatever -e/-w/-u
    (issue 18): the program sees the file's data."""
    result = run(["mosrun", option, str(programs / "unsupported"), "mmap-shared-ro"], mosrun_env)
    with open("/etc/hostname") as f:
        first = f.read(1)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (
        0,
        f"mmap-shared-ro=mapped first-byte={first}",
        "",
    )


def test_descriptor_1024_is_refused(mosrun_env, tmp_path):
    import os
    import subprocess

    marker = tmp_path / "ran"
    fd = os.open("/dev/null", os.O_RDONLY)
    high = os.dup2(fd, 1030)
    try:
        result = subprocess.run(
            ["mosrun", "touch", str(marker)],
            env=mosrun_env,
            pass_fds=(high,),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.close(high)
        os.close(fd)
    assert result.returncode != 0
    assert "File-descriptor #1030 is open (only 1024 files supported under MOSIX)" in result.stderr
    assert not marker.exists()


def test_32_bit_program_runs_natively_with_the_message(mosrun_env, tmp_path):
    import subprocess

    program = elf32(tmp_path)
    native = subprocess.run([str(program)], capture_output=True, text=True)
    if native.returncode != 0:
        pytest.skip("this kernel cannot run 32-bit programs (no IA32 emulation)")
    result = run(["mosrun", str(program)], mosrun_env)
    assert (result.returncode, result.stdout) == (0, "hi\n")
    assert result.stderr.strip() == f"MOSRUN: {program} is a 32-bit program - will run in native Linux mode"


def test_32_bit_program_execed_by_a_mosix_process(mosrun_env, tmp_path):
    import subprocess

    program = elf32(tmp_path)
    if subprocess.run([str(program)], capture_output=True).returncode != 0:
        pytest.skip("this kernel cannot run 32-bit programs (no IA32 emulation)")
    result = run(["mosrun", "sh", "-c", f"{program}; echo after"], mosrun_env)
    assert (result.returncode, result.stdout) == (0, "hi\nafter\n")
    assert "is a 32-bit program - will run in native Linux mode" in result.stderr
