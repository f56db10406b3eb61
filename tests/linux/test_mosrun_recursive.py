"""RECURSIVE MOSRUN, mosnative and mosenv (mosrun(1)), with real nested invocations.

The programs report their MOSIX parameters through the mosix(7) programming
interface (``open("/proc/self/{special}", 0)``), which only a MOSIX process has:
anywhere else the open fails with ENOENT.

The nested ``mosrun``/``mosnative`` commands are Python programs themselves and use
calls MOSIX refuses (epoll); the supervisor lets those fail quietly for them until
they exec the real program (test_recursive_mosrun_without_e).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers.programs import PROCSELF_READER, run

pytestmark = pytest.mark.linux


AFFINITY = "import os; print('cpus', os.sched_setaffinity(0, {0}) is None)"
AFFINITY_CAUGHT = (
    "import os\ntry:\n    os.sched_setaffinity(0, {0})\n    print('allowed')\n"
    "except OSError as err:\n    print('failed', err.strerror)"
)
KILLED = (-9, 137)
PARAMETERS = "unsupportok needmem lock freezable cpujob decayrate"


def reports(result: subprocess.CompletedProcess) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


@pytest.fixture
def reader(tmp_path) -> str:
    path = tmp_path / "procself.py"
    path.write_text(PROCSELF_READER)
    return f"python3 {path}"


# -- what a recursive mosrun inherits ------------------------------------------------------------------
def test_inner_mosrun_inherits_the_inheritable_options(mosrun_env, reader):
    result = run(
        ["mosrun", "-e", "-m100", "-L", "-g", "-c", "-d5000", "sh", "-c", f"mosrun {reader} {PARAMETERS}"], mosrun_env
    )
    assert reports(result) == [
        {"unsupportok": 1, "needmem": 100, "lock": 1, "freezable": 0, "cpujob": 1, "decayrate": 5000}
    ]


def test_inner_mosrun_inherits_w(mosrun_env, reader):
    result = run(["mosrun", "-w", "sh", "-c", f"mosrun {reader} unsupportok"], mosrun_env)
    assert reports(result) == [{"unsupportok": 2}]


def test_inner_explicit_options_override_the_inherited_ones(mosrun_env, reader):
    result = run(
        [
            "mosrun",
            "-e",
            "-m100",
            "-L",
            "-g",
            "-c",
            "-d5000",
            "sh",
            "-c",
            f"mosrun -u -m7 -l -G -n -d100 {reader} {PARAMETERS}; mosrun -m8 {reader} {PARAMETERS}",
        ],
        mosrun_env,
    )
    assert reports(result) == [
        {"unsupportok": 0, "needmem": 7, "lock": 0, "freezable": 1, "cpujob": 0, "decayrate": 100},
        {"unsupportok": 1, "needmem": 8, "lock": 1, "freezable": 0, "cpujob": 1, "decayrate": 5000},
    ]


def test_inner_u_makes_unsupported_calls_kill_again(mosrun_env):
    result = run(
        [
            "mosrun",
            "-e",
            "sh",
            "-c",
            f'mosrun -u python3 -c "{AFFINITY}"; echo "inner status $?"; python3 -c "{AFFINITY_CAUGHT}"',
        ],
        mosrun_env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["inner status 137", "failed Function not implemented"]
    assert "MOSRUN: system-call 'sched_setaffinity' not supported under MOSIX" in result.stderr


def test_checkpoint_options_belong_to_one_process(mosrun_env, reader):
    """-C, -N and -A are not inherited: not by a recursive mosrun, not by forked children;
    an exec is still the same process."""
    names = "checkpointlimit checkpointinterval"
    alone = run(["mosrun", "-N5", "-A3", *reader.split(), *names.split()], mosrun_env)
    assert reports(alone) == [{"checkpointlimit": 5, "checkpointinterval": 3}]
    exec_ = run(["mosrun", "-e", "-N5", "-A3", "sh", "-c", f"exec {reader} {names}"], mosrun_env)
    assert reports(exec_) == [{"checkpointlimit": 5, "checkpointinterval": 3}]
    nested = run(
        [
            "mosrun",
            "-e",
            "-N5",
            "-A3",
            "-m20",
            "sh",
            "-c",
            f"{reader} {names} needmem; mosrun {reader} {names} needmem; mosrun -N2 {reader} {names} needmem",
        ],
        mosrun_env,
    )
    assert reports(nested) == [
        {"checkpointlimit": 0, "checkpointinterval": 0, "needmem": 20},  # a forked child
        {"checkpointlimit": 0, "checkpointinterval": 0, "needmem": 20},  # a recursive mosrun
        {"checkpointlimit": 2, "checkpointinterval": 0, "needmem": 20},  # its own -N
    ]


def test_children_of_a_mosix_process_are_mosix_processes(mosrun_env, reader):
    # "true;" makes sh fork for the second command instead of exec-ing it.
    result = run(
        [
            "mosrun",
            "-m40",
            "-L",
            "-w",
            "sh",
            "-c",
            f"true; {reader} needmem lock unsupportok; sh -c 'true; {reader} needmem'",
        ],
        mosrun_env,
    )
    assert reports(result) == [{"needmem": 40, "lock": 1, "unsupportok": 2}, {"needmem": 40}]


def test_recursive_mosrun_runs_in_place(mosrun_env):
    """The inner program keeps the inner mosrun's pid and status, with no second supervisor's notices."""
    result = run(
        [
            "mosrun",
            "-e",
            "sh",
            "-c",
            'mosrun sh -c "echo inner \\$\\$; exit 7" & echo started $!; wait $!; echo status $?',
        ],
        mosrun_env,
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split() for line in result.stdout.splitlines())
    assert lines["inner"] == lines["started"] and lines["status"] == "7"
    assert result.stderr == ""


def test_recursive_queue_jobs_inherit(tmp_path, mosrun_env, reader):
    cmds = tmp_path / "cmds"
    cmds.write_text(f"{reader} needmem lock unsupportok\nexit 4\n{reader} needmem lock unsupportok\n")
    failed = tmp_path / "failed"
    result = run(
        ["mosrun", "-e", "-m50", "sh", "-c", f'mosrun -S2 -L {cmds},{failed}; echo "queue status $?"'], mosrun_env
    )
    assert reports(result) == [{"needmem": 50, "lock": 1, "unsupportok": 1}] * 2
    assert result.stdout.splitlines()[-1] == "queue status 1"
    assert failed.read_text() == "exit 4\n"


def test_recursive_mosrun_without_e(mosrun_env, reader):
    result = run(
        ["mosrun", "-m30", "sh", "-c", f"mosrun {reader} needmem unsupportok; mosnative {reader} needmem"], mosrun_env
    )
    assert reports(result) == [{"needmem": 30, "unsupportok": 0}, {"needmem": "ENOENT"}]


# -- mosnative ------------------------------------------------------------------------------------------
def test_mosnative_child_is_not_a_mosix_process(mosrun_env, reader):
    result = run(
        [
            "mosrun",
            "-e",
            "-m100",
            "-L",
            "sh",
            "-c",
            f"mosnative {reader} needmem unsupportok lock; "
            f"mosnative sh -c 'true; {reader} needmem'; "  # nor are its own children
            f"{reader} needmem",
        ],
        mosrun_env,
    )
    assert reports(result) == [
        {"needmem": "ENOENT", "unsupportok": "ENOENT", "lock": "ENOENT"},
        {"needmem": "ENOENT"},
        {"needmem": 100},
    ]


def test_mosnative_child_may_use_what_mosix_refuses(mosrun_env):
    killed = run(["mosrun", "python3", "-c", AFFINITY], mosrun_env)
    assert killed.returncode in KILLED
    assert killed.stderr.strip() == "MOSRUN: system-call 'sched_setaffinity' not supported under MOSIX"
    assert killed.stdout == ""

    result = run(
        ["mosrun", "-e", "sh", "-c", f'mosnative python3 -c "{AFFINITY}"; python3 -c "{AFFINITY_CAUGHT}"'], mosrun_env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["cpus True", "failed Function not implemented"]
    assert "MOSRUN" not in result.stderr


def test_mosnative_outside_mosrun_just_runs(mosrun_env, reader):
    assert (run(["mosnative", "echo", "x"], mosrun_env).stdout, 0) == ("x\n", 0)
    assert run(["mosnative", "sh", "-c", "exit 3"], mosrun_env).returncode == 3
    assert reports(run(["mosnative", *reader.split(), "needmem"], mosrun_env)) == [{"needmem": "ENOENT"}]
    missing = run(["mosnative", "no-such-program-here"], mosrun_env)
    assert missing.returncode == 127 and "no-such-program-here" in missing.stderr


@pytest.mark.xfail(
    strict=True,
    reason="a mosnative program stays traced by the outer supervisor, so a mosrun "
    "it starts cannot seize itself ('Kernel too secure to run MOSIX')",
)
def test_a_mosnative_program_can_start_a_new_mosrun(mosrun_env, reader):
    result = run(
        ["mosrun", "-e", "-m5", "sh", "-c", f"mosnative sh -c 'mosrun -m9 {reader} needmem unsupportok'"], mosrun_env
    )
    # A new MOSIX program of its own: nothing inherited from the outer mosrun.
    assert reports(result) == [{"needmem": 9, "unsupportok": 0}]


# -- mosenv ---------------------------------------------------------------------------------------------
def loader_variables(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr
    return sorted(
        line for line in result.stdout.splitlines() if line.startswith(("LD_LIBRARY_PATH=", "MALLOC_CHECK_="))
    )


def test_mosenv_keeps_loader_variables_that_mosrun_drops(mosrun_env, reader):
    env = {**mosrun_env, "LD_LIBRARY_PATH": "/opt/mosix-test/lib", "MALLOC_CHECK_": "3"}
    kept = ["LD_LIBRARY_PATH=/opt/mosix-test/lib", "MALLOC_CHECK_=3"]
    assert loader_variables(run(["env"], env)) == kept
    assert loader_variables(run(["mosrun", "env"], env)) == []
    assert loader_variables(run(["mosenv", "env"], env)) == kept
    # Recursively too: each level decides for the program it starts.
    assert loader_variables(run(["mosenv", "-e", "sh", "-c", "mosrun env"], env)) == []
    assert loader_variables(run(["mosenv", "-e", "sh", "-c", "mosenv env"], env)) == kept
    # mosenv's program is a MOSIX process like mosrun's.
    assert reports(run(["mosenv", "-m5", *reader.split(), "needmem"], env)) == [{"needmem": 5}]
