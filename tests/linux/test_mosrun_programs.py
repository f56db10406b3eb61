"""Unmodified programs behave under mosrun exactly as they do natively."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.helpers.programs import run

pytestmark = pytest.mark.linux


def same_as_native(argv, env, **kwargs):
    native = run(argv, env, **kwargs)
    supervised = run(["mosrun", *argv], env, **kwargs)
    assert (supervised.returncode, supervised.stdout, supervised.stderr) == (
        native.returncode,
        native.stdout,
        native.stderr,
    )
    return supervised


def test_ls_la_runs_in_a_utf8_locale_without_e(mosrun_env, tmp_path):
    """The tutorial's example: glibc maps its gconv cache MAP_SHARED read-only, which
    is mapped privately (issue 18; a strict site still needs -e: test_mosrun_site_policy)."""
    env = {**mosrun_env, "LC_ALL": "C.UTF-8"}
    (tmp_path / "file").write_text("x")
    native = run(["ls", "-la", str(tmp_path)], env)
    for options in ([], ["-e"]):
        allowed = run(["mosrun", *options, "ls", "-la", str(tmp_path)], env)
        assert (allowed.returncode, allowed.stdout, allowed.stderr) == (0, native.stdout, "")


@pytest.mark.parametrize(
    "argv",
    [
        ["ls", "-la", "/etc"],
        ["cat", "/etc/passwd"],
        ["wc", "-c", "/etc/passwd"],
        ["ls", "/nonexistent"],  # a failure: same message, same status
        ["date", "-d", "@0", "-u"],
        ["sleep", "0.1"],
        ["true"],
        ["false"],
    ],
)
def test_coreutils(argv, mosrun_env):
    same_as_native(argv, mosrun_env)


def test_awk_cpu_loop(mosrun_env):
    result = same_as_native(["awk", "BEGIN { for (i = 0; i < 3000000; i++) s += i % 7; print s }"], mosrun_env)
    assert result.stdout.strip() == "8999994"


def test_python3(mosrun_env):
    script = (
        "import sys, json, hashlib; print(json.dumps({'h': hashlib.sha256(b'x' * 10**6).hexdigest()})); "
        "print('err', file=sys.stderr); sys.exit(5)"
    )
    result = same_as_native(["python3", "-c", script], mosrun_env)
    assert result.returncode == 5


def test_shell_pipeline_with_several_children(mosrun_env):
    script = "cat /etc/passwd | tr a-z A-Z | grep -c ROOT; (echo a; echo b) | wc -l; exit 4"
    result = same_as_native(["sh", "-c", script], mosrun_env)
    assert result.returncode == 4


def test_make_running_the_compiler(mosrun_env, tmp_path):
    (tmp_path / "main.c").write_text('#include <stdio.h>\nint f(void);\nint main(void){printf("%d\\n", f());}\n')
    (tmp_path / "f.c").write_text("int f(void){return 42;}\n")
    (tmp_path / "Makefile").write_text("prog: main.o f.o\n\tcc -o $@ $^\n%.o: %.c\n\tcc -O2 -c $<\n")
    native_dir, mosix_dir = tmp_path / "native", tmp_path / "mosix"
    for d in (native_dir, mosix_dir):
        d.mkdir()
        for name in ("main.c", "f.c", "Makefile"):
            (d / name).write_bytes((tmp_path / name).read_bytes())
    native = run(["make", "-j2"], mosrun_env, cwd=native_dir)
    supervised = run(["mosrun", "make", "-j2"], mosrun_env, cwd=mosix_dir)
    assert native.returncode == 0, native.stderr
    assert (supervised.returncode, supervised.stderr) == (0, "")
    assert sorted(supervised.stdout.splitlines()) == sorted(native.stdout.splitlines())
    assert subprocess.run([str(mosix_dir / "prog")], capture_output=True, text=True).stdout == "42\n"


def test_exit_by_signal_is_the_programs_own(mosrun_env):
    result = run(["mosrun", "sh", "-c", "kill -TERM $$"], mosrun_env)
    assert result.returncode == -signal.SIGTERM


def test_the_program_keeps_mosruns_pid(mosrun_env):
    proc = subprocess.Popen(["mosrun", "sh", "-c", "echo $$"], env=mosrun_env, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    assert int(out) == proc.pid


def test_stdin_and_a_background_child_that_outlives_the_program(mosrun_env, tmp_path):
    marker = tmp_path / "late"
    result = run(
        ["mosrun", "sh", "-c", f"read x; echo got $x; (sleep 0.5; echo done > {marker}) &"], mosrun_env, input="hello\n"
    )
    assert (result.returncode, result.stdout) == (0, "got hello\n")
    # the background child is still a supervised MOSIX process: it is not killed with the program
    for _ in range(50):
        if marker.exists():
            break
        subprocess.run(["sleep", "0.1"])
    assert marker.read_text() == "done\n"


def test_missing_program(mosrun_env):
    result = run(["mosrun", "no-such-program-here"], mosrun_env)
    assert result.returncode == 127
    assert "no-such-program-here" in result.stderr


def test_z_passes_argument_zero(mosrun_env):
    result = run(["mosrun", "-z", "sh", "my-name", "-c", "echo $0"], mosrun_env)
    assert result.stdout == "my-name\n"


def test_loader_environment_is_stripped_by_mosrun_and_kept_by_mosenv(mosrun_env):
    env = {**mosrun_env, "LD_LIBRARY_PATH": "/nowhere", "MALLOC_CHECK_": "1"}
    stripped = run(["mosrun", "sh", "-c", "echo ${LD_LIBRARY_PATH-unset} ${MALLOC_CHECK_-unset}"], env)
    kept = run(["mosenv", "sh", "-c", "echo ${LD_LIBRARY_PATH-unset} ${MALLOC_CHECK_-unset}"], env)
    assert (stripped.stdout, kept.stdout) == ("unset unset\n", "/nowhere 1\n")


def _processes_with(word: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if word.encode() in f.read().split(b"\0"):
                        found.append(pid)
            except OSError:
                continue
    return found


def test_supervisor_exits_with_its_last_tracee(mosrun_env):
    unique = "0.3141"
    unique = "1.3141"
    proc = subprocess.Popen(["mosrun", "sleep", unique], env=mosrun_env)
    for _ in range(100):
        found = _processes_with(unique)
        if len(found) == 2 and open(f"/proc/{proc.pid}/comm").read() == "sleep\n":
            break
        subprocess.run(["sleep", "0.05"])
    assert len(found) == 2  # the program (in mosrun's pid) and its supervisor
    proc.wait(timeout=30)
    for _ in range(50):
        if not _processes_with(unique):
            break
        subprocess.run(["sleep", "0.05"])
    assert _processes_with(unique) == []
