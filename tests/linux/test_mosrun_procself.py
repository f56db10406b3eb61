"""mosix(7) INTERFACE FOR PROGRAMS: open("/proc/self/{special}") from a C program."""

from __future__ import annotations

import ipaddress

import pytest

from tests.helpers.programs import run

pytestmark = pytest.mark.linux


def procself(programs, env, *commands, options=()):
    result = run(["mosrun", *options, str(programs / "procself"), *commands], env)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_outside_mosrun_the_files_do_not_exist(programs, mosrun_env):
    result = run([str(programs / "procself"), "get", "lock", "set", "needmem", "5", "get", "whereami"], mosrun_env)
    assert result.stdout.split() == ["lock:ENOENT", "needmem:ENOENT", "whereami:ENOENT"]


def test_options_are_visible_to_the_program(programs, mosrun_env):
    got = procself(
        programs,
        mosrun_env,
        "get",
        "needmem",
        "get",
        "lock",
        "get",
        "freezable",
        "get",
        "unsupportok",
        "get",
        "cpujob",
        "get",
        "decayrate",
        "get",
        "checkpointlimit",
        "get",
        "checkpointinterval",
        options=("-m300", "-L", "-g", "-w", "-c", "-d", "500", "-N7", "-A3"),
    )
    assert got == [
        "needmem=300",
        "lock=1",
        "freezable=0",
        "unsupportok=2",
        "cpujob=1",
        "decayrate=500",
        "checkpointlimit=7",
        "checkpointinterval=3",
    ]


def test_defaults(programs, mosrun_env):
    got = procself(
        programs,
        mosrun_env,
        "get",
        "needmem",
        "get",
        "lock",
        "get",
        "freezable",
        "get",
        "unsupportok",
        "get",
        "cpujob",
        "get",
        "decayrate",
        "get",
        "whereami",
        "get",
        "nmigs",
        "get",
        "sigmig",
        "get",
        "checkpoint",
    )
    assert got == [
        "needmem=0",
        "lock=0",
        "freezable=1",
        "unsupportok=0",
        "cpujob=0",
        "decayrate=9976",
        "whereami=0",
        "nmigs=0",
        "sigmig=0",
        "checkpoint=1",
    ]


@pytest.mark.parametrize(
    "name, good, bad",
    [
        ("lock", 1, 2),
        ("freezable", 0, 2),
        ("sigmig", 64, 65),
        ("needmem", 262143, 262144),
        ("unsupportok", 2, 3),
        ("cpujob", 1, 2),
        ("decayrate", 10000, 10001),
        ("checkpointlimit", 10000000, 10000001),
        ("checkpointinterval", 10000000, 10000001),
    ],
)
def test_write_read_and_ranges(programs, mosrun_env, name, good, bad):
    got = procself(
        programs,
        mosrun_env,
        "set",
        name,
        str(good),
        "get",
        name,
        "set",
        name,
        str(bad),
        "get",
        name,
        "set",
        name,
        "-1",
        "swap",
        name,
        "0",
        "get",
        name,
    )
    assert got == [
        f"{name}=0",
        f"{name}={good}",
        f"{name}:EINVAL",
        f"{name}={good}",
        f"{name}:EINVAL",
        f"{name}={good}",
        f"{name}=0",
    ]


def test_read_only_and_write_only_files(programs, mosrun_env):
    got = procself(
        programs,
        mosrun_env,
        "set",
        "whereami",
        "1",
        "set",
        "nmigs",
        "3",
        "get",
        "clear",
        "set",
        "clear",
        "1",
        "get",
        "migrate",
        "get",
        "checkpointfile",
    )
    assert got == [
        "whereami:EINVAL",
        "nmigs:EINVAL",
        "clear:EINVAL",
        "clear=0",
        "migrate:EINVAL",
        "checkpointfile:EINVAL",
    ]


def test_migrate_home_succeeds_at_home(programs, mosrun_env):
    assert procself(programs, mosrun_env, "set", "migrate", "0") == ["migrate=0"]


def test_checkpointfile_takes_a_string(programs, mosrun_env):
    assert procself(programs, mosrun_env, "file", "checkpointfile", "/tmp/mysave") == ["checkpointfile=0"]


def test_unsupportok_changes_the_rules_at_run_time(programs, mosrun_env):
    """A program that sets unsupportok=1 itself survives an unsupported call."""
    script = (
        "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
        "print(libc.open(b'/proc/self/unsupportok', 0x41, 1)); "
        "print(os.sched_setaffinity(0, {0}) if False else 'x'); "
        "import errno\n"
        "try:\n os.sched_setaffinity(0, {0})\nexcept OSError as e: print(errno.errorcode[e.errno])"
    )
    result = run(["mosrun", "python3", "-c", script], mosrun_env)
    assert (result.returncode, result.stdout.split(), result.stderr) == (0, ["0", "x", "ENOSYS"], "")


def test_in_cluster_without_configuration(programs, mosrun_env):
    assert procself(programs, mosrun_env, "incluster", "1") == ["in_cluster=0"]


@pytest.mark.cluster
def test_in_cluster_with_a_cluster(programs, mosrun_env, local_cluster):
    cluster = local_cluster(nodes=2)
    env = {**mosrun_env, "MOSIX_ETC": str(cluster.etc(1))}
    ip2 = int(ipaddress.IPv4Address(cluster.ip(2)))
    got = procself(
        programs,
        env,
        "incluster",
        "2",
        "incluster",
        str(ip2),
        "incluster",
        "9",
        "incluster",
        str(int.from_bytes(bytes([10, 9, 9, 9]), "big")),
    )
    assert got == ["in_cluster=1", "in_cluster=1", "in_cluster=0", "in_cluster=0"]
