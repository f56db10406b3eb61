"""mosrun -S{maxjobs} commands-file[,failed-file]: a queue of bash command lines (mosrun(1)).

Every test runs the real ``mosrun`` on real command files; the jobs leave their
traces in files (timestamps, markers) that the test reads afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.programs import PROCSELF_READER, run

pytestmark = pytest.mark.linux


def commands(path: Path, *lines: str, last_newline: bool = True) -> Path:
    path.write_text("\n".join(lines) + ("\n" if last_newline else ""))
    return path


@pytest.fixture
def reader(tmp_path) -> Path:
    path = tmp_path / "procself.py"
    path.write_text(PROCSELF_READER)
    return path


# -- output, order, concurrency --------------------------------------------------------------------------
def test_lines_run_in_order_with_their_output(tmp_path, mosrun_env):
    cmds = commands(tmp_path / "cmds", *(f"echo line {n}" for n in range(1, 8)))
    result = run(["mosrun", "-S1", str(cmds)], mosrun_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"line {n}" for n in range(1, 8)]
    assert result.stderr == ""


def test_at_most_maxjobs_run_at_once(tmp_path, mosrun_env):
    log = tmp_path / "log"
    job = f'echo "start {{n}} $(date +%s.%N)" >> {log}; sleep 0.3; echo "end {{n}} $(date +%s.%N)" >> {log}'
    cmds = commands(tmp_path / "cmds", *(job.format(n=n) for n in range(1, 7)))
    result = run(["mosrun", "-S2", str(cmds)], mosrun_env)
    assert result.returncode == 0, result.stderr

    events = []
    for line in log.read_text().splitlines():
        kind, n, stamp = line.split()
        events.append((float(stamp), kind, int(n)))
    starts = {n: t for t, kind, n in events if kind == "start"}
    ends = {n: t for t, kind, n in events if kind == "end"}
    assert sorted(starts) == sorted(ends) == list(range(1, 7))

    # Lines start in the order of the file: in rounds of two, each after the one before.
    for earlier, later in (((1, 2), (3, 4)), ((3, 4), (5, 6))):
        assert max(starts[n] for n in earlier) < min(starts[n] for n in later)
    # Never more than 2 at once, and really 2 at once (not one after the other).
    running = peak = 0
    for _, kind, _ in sorted(events, key=lambda e: (e[0], e[1] == "start")):  # an end before a start at a tie
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 2
    # Three rounds of 0.3 s: at least 0.9 s, well below six sleeps one after another.
    span = max(ends.values()) - min(starts.values())
    assert 0.85 <= span < 6 * 0.3, span


def test_a_new_line_starts_as_soon_as_one_ends(tmp_path, mosrun_env):
    """-S2 with a long first job: the short ones flow through the other slot."""
    log = tmp_path / "log"
    cmds = commands(
        tmp_path / "cmds", f"sleep 1; echo long >> {log}", *(f"sleep 0.1; echo short{n} >> {log}" for n in range(1, 5))
    )
    result = run(["mosrun", "-S2", str(cmds)], mosrun_env)
    assert result.returncode == 0, result.stderr
    assert log.read_text().split() == ["short1", "short2", "short3", "short4", "long"]


# -- exit status and the failed-commands file -------------------------------------------------------------
def test_exit_status_counts_failed_lines(tmp_path, mosrun_env):
    cmds = commands(tmp_path / "cmds", "true", "exit 3", "echo ok", "false", "kill -9 $$", "exit 0")
    result = run(["mosrun", "-S3", str(cmds)], mosrun_env)
    assert result.returncode == 3, result.stderr  # exit 3, false, killed by a signal
    assert result.stdout == "ok\n"


def test_exit_status_is_255_at_most(tmp_path, mosrun_env):
    cmds = commands(tmp_path / "cmds", *["exit 1"] * 260)
    failed = tmp_path / "failed"
    started = time.monotonic()
    result = run(["mosrun", "-S30", f"{cmds},{failed}"], mosrun_env)
    elapsed = time.monotonic() - started
    assert result.returncode == 255, result.stderr
    assert failed.read_text() == "exit 1\n" * 260
    assert elapsed < 20, f"260 trivial lines took {elapsed:.1f} s"


def test_failed_file_lists_exactly_the_failed_lines_in_completion_order(tmp_path, mosrun_env):
    cmds = commands(
        tmp_path / "cmds", "sleep 0.9; exit 1", "echo fine", "sleep 0.1; exit 2", "sleep 0.5; false", "true"
    )
    failed = tmp_path / "failed"
    failed.write_text("stale content\n")  # created anew, not appended to
    result = run(["mosrun", "-S5", f"{cmds},{failed}"], mosrun_env)
    assert result.returncode == 3, result.stderr
    assert failed.read_text().splitlines() == ["sleep 0.1; exit 2", "sleep 0.5; false", "sleep 0.9; exit 1"]


def test_failed_file_is_empty_when_nothing_fails(tmp_path, mosrun_env):
    cmds = commands(tmp_path / "cmds", "true", "echo x")
    failed = tmp_path / "failed"
    result = run(["mosrun", "-S2", f"{cmds},{failed}"], mosrun_env)
    assert result.returncode == 0, result.stderr
    assert failed.exists() and failed.read_text() == ""


def test_the_failed_file_reruns_only_the_failures(tmp_path, mosrun_env):
    """The manual's point of the failed-file: feed it back to mosrun -S."""
    done = tmp_path / "done"
    done.mkdir()
    lines = [f"touch {done}/{n}; [ -e {tmp_path}/fixed ] || [ $(( {n} % 3 )) -ne 0 ]" for n in range(1, 10)]
    cmds = commands(tmp_path / "cmds", *lines)
    failed, again = tmp_path / "failed", tmp_path / "failed-again"
    first = run(["mosrun", "-S4", f"{cmds},{failed}"], mosrun_env)
    assert first.returncode == 3, first.stderr
    assert sorted(failed.read_text().splitlines()) == sorted(lines[n - 1] for n in (3, 6, 9))
    shutil.rmtree(done)
    done.mkdir()
    (tmp_path / "fixed").touch()
    second = run(["mosrun", "-S4", f"{failed},{again}"], mosrun_env)
    assert second.returncode == 0, second.stderr
    assert sorted(os.listdir(done)) == ["3", "6", "9"]
    assert again.read_text() == ""


# -- broken and blank lines ---------------------------------------------------------------------------------
def test_last_line_without_line_feed_is_broken(tmp_path, mosrun_env):
    marker = tmp_path / "marker"
    cmds = commands(tmp_path / "cmds", "echo a", "exit 1", f"touch {marker}", last_newline=False)
    failed = tmp_path / "failed"
    result = run(["mosrun", "-S1", f"{cmds},{failed}"], mosrun_env)
    assert result.returncode == 2
    assert result.stdout == "a\n"
    assert "Line #3 is too long or broken!" in result.stderr.splitlines()
    assert not marker.exists()  # a broken line is not run
    assert failed.read_text().splitlines() == ["exit 1", f"touch {marker}"]


def test_line_over_64k_is_too_long(tmp_path, mosrun_env):
    longest = "echo " + "x" * (64 * 1024 - len("echo ") - 1)  # 64 KiB with its line-feed: fine
    too_long = "echo " + "y" * (64 * 1024 - len("echo "))  # one byte more
    much_too_long = "echo " + "z" * 100_000
    cmds = commands(tmp_path / "cmds", "echo first", longest, too_long, "echo middle", much_too_long, "echo last")
    result = run(["mosrun", "-S1", str(cmds)], mosrun_env)
    assert result.returncode == 2, result.stderr
    out = result.stdout.splitlines()
    assert out == ["first", "x" * (64 * 1024 - 6), "middle", "last"]  # the rest of a long line is skipped
    assert [line for line in result.stderr.splitlines() if line] == [
        "Line #3 is too long or broken!",
        "Line #5 is too long or broken!",
    ]


def test_failed_file_records_an_over_long_line_itself(tmp_path, mosrun_env):
    cmds = commands(tmp_path / "cmds", "echo first", "echo " + "z" * 100_000, "echo last")
    failed = tmp_path / "failed"
    result = run(["mosrun", "-S1", f"{cmds},{failed}"], mosrun_env)
    assert result.returncode == 1, result.stderr
    recorded = failed.read_text().splitlines()
    assert len(recorded) == 1 and recorded[0].startswith("echo zzz")


def test_blank_lines_are_not_commands(tmp_path, mosrun_env):
    cmds = tmp_path / "cmds"
    cmds.write_text("\n\necho a\n   \n\t\necho b\n\n")
    failed = tmp_path / "failed"
    # Every non-interactive bash reads $BASH_ENV first: it counts the jobs started.
    started = tmp_path / "started"
    (tmp_path / "bash_env").write_text(f"echo job >> {started}\n")
    env = {**mosrun_env, "BASH_ENV": str(tmp_path / "bash_env")}
    result = run(["mosrun", "-S2", f"{cmds},{failed}"], env)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == ["a", "b"]
    assert result.stderr == "" and failed.read_text() == ""
    assert started.read_text() == "job\njob\n"


def test_an_empty_commands_file_runs_nothing(tmp_path, mosrun_env):
    cmds = tmp_path / "cmds"
    cmds.write_text("")
    result = run(["mosrun", "-S4", str(cmds)], mosrun_env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


# -- the commands-file changing, and files that cannot be written ------------------------------------------
def test_commands_file_changed_while_running(tmp_path, mosrun_env):
    cmds = tmp_path / "cmds"
    commands(cmds, f"touch -m -d @0 {cmds}; exit 1", "sleep 0.2")
    failed = tmp_path / "failed"
    result = run(["mosrun", "-S1", f"{cmds},{failed}"], mosrun_env)
    assert result.returncode == 1
    assert "Commands-file changed: failed-commands file is incomplete!" in result.stderr
    assert failed.read_text() == f"touch -m -d @0 {cmds}; exit 1\n"


def test_commands_file_changed_without_failed_file_is_no_warning(tmp_path, mosrun_env):
    cmds = tmp_path / "cmds"
    commands(cmds, f"touch -m -d @0 {cmds}", "true")
    result = run(["mosrun", "-S1", str(cmds)], mosrun_env)
    assert result.returncode == 0
    assert "Commands-file changed" not in result.stderr


def test_unchanged_commands_file_is_no_warning(tmp_path, mosrun_env):
    cmds = commands(tmp_path / "cmds", "exit 1", "sleep 0.1")
    result = run(["mosrun", "-S2", f"{cmds},{tmp_path / 'failed'}"], mosrun_env)
    assert result.returncode == 1
    assert "Commands-file changed" not in result.stderr


def test_failed_file_in_a_missing_directory_is_refused_before_anything_runs(tmp_path, mosrun_env):
    marker = tmp_path / "marker"
    cmds = commands(tmp_path / "cmds", f"touch {marker}; exit 1")
    result = run(["mosrun", "-S1", f"{cmds},{tmp_path / 'no-such-dir' / 'failed'}"], mosrun_env)
    assert result.returncode != 0
    assert f"{tmp_path / 'no-such-dir' / 'failed'}: No such file or directory" in result.stderr
    assert not marker.exists()


def test_failed_file_that_cannot_be_written(tmp_path, mosrun_env):
    """/dev/full opens, but every write fails: the jobs still run, with the manual's message."""
    marker = tmp_path / "marker"
    cmds = commands(tmp_path / "cmds", "exit 1", f"touch {marker}", "exit 2")
    result = run(["mosrun", "-S1", f"{cmds},/dev/full"], mosrun_env)
    assert result.returncode == 2
    assert marker.exists()
    assert "Failed writing to failed-commands file!" in result.stderr.splitlines()


def test_missing_commands_file(tmp_path, mosrun_env):
    result = run(["mosrun", "-S2", str(tmp_path / "nothing-here")], mosrun_env)
    assert result.returncode != 0
    assert f"{tmp_path / 'nothing-here'}: No such file or directory" in result.stderr


@pytest.mark.parametrize("maxjobs", ["-S0", "-S30001", "-Sx", "-S-1"])
def test_maxjobs_out_of_range(tmp_path, mosrun_env, maxjobs):
    marker = tmp_path / "marker"
    cmds = commands(tmp_path / "cmds", f"touch {marker}")
    result = run(["mosrun", maxjobs, str(cmds)], mosrun_env)
    assert result.returncode != 0
    assert result.stderr == f"mosrun: -S: maxjobs must be between 1 and 30000, not '{maxjobs[2:]}'\n"
    assert not marker.exists()


def test_maxjobs_limits_are_accepted(tmp_path, mosrun_env):
    cmds = commands(tmp_path / "cmds", "echo one")
    for maxjobs in ("-S1", "-S30000"):
        result = run(["mosrun", maxjobs, str(cmds)], mosrun_env)
        assert (result.returncode, result.stdout) == (0, "one\n"), result.stderr


# -- every job is a MOSIX process with the options given -------------------------------------------------
def test_jobs_are_mosix_processes_with_the_options(tmp_path, mosrun_env, reader):
    names = "unsupportok needmem lock freezable cpujob decayrate"
    cmds = commands(
        tmp_path / "cmds", f"python3 {reader} {names}", f"true; python3 {reader} {names}"
    )  # bash forks: a child of the job
    result = run(["mosrun", "-S2", "-e", "-m77", "-L", "-g", "-c", "-d", "1234", str(cmds)], mosrun_env)
    assert result.returncode == 0, result.stderr
    expected = {"unsupportok": 1, "needmem": 77, "lock": 1, "freezable": 0, "cpujob": 1, "decayrate": 1234}
    assert [json.loads(line) for line in result.stdout.splitlines()] == [expected, expected]


def test_jobs_without_options_have_the_defaults(tmp_path, mosrun_env, reader):
    cmds = commands(tmp_path / "cmds", f"python3 {reader} unsupportok needmem lock")
    result = run(["mosrun", "-S1", str(cmds)], mosrun_env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"unsupportok": 0, "needmem": 0, "lock": 0}


def test_unsupported_call_kills_one_job_and_counts_it_failed(tmp_path, mosrun_env):
    affinity = "python3 -c 'import os; print(os.sched_setaffinity(0, {0}) is None)'"
    cmds = commands(tmp_path / "cmds", affinity, "echo survivor")
    failed = tmp_path / "failed"
    result = run(["mosrun", "-S2", f"{cmds},{failed}"], mosrun_env)
    assert result.returncode == 1
    assert "MOSRUN: system-call 'sched_setaffinity' not supported under MOSIX" in result.stderr
    assert result.stdout == "survivor\n"
    assert failed.read_text() == affinity + "\n"

    allowed = run(["mosrun", "-S2", "-e", str(cmds)], mosrun_env)
    assert allowed.returncode == 1  # -e: the call fails with ENOSYS, python raises
    assert "Function not implemented" in allowed.stderr and "MOSRUN" not in allowed.stderr


# -- mosps -S shows a running queue ---------------------------------------------------------------------------
@pytest.mark.cluster
def test_mosps_shows_the_progress_of_a_running_queue(tmp_path, mosrun_env, local_cluster):
    if shutil.which("mosps", path=mosrun_env["PATH"]) is None:
        pytest.skip("mosps is not installed yet")
    cluster = local_cluster(nodes=1, interval=0.2)
    env = {**mosrun_env, "MOSIX_ETC": str(cluster.etc(1))}
    go = tmp_path / "go"
    cmds = commands(tmp_path / "cmds", "exit 1", "true", "echo third", f"while [ ! -e {go} ]; do sleep 0.05; done")
    queue = subprocess.Popen(
        ["mosrun", "-S1", str(cmds)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:

        def queue_row():
            listing = run(["mosps", "-S"], env)
            assert listing.returncode == 0, listing.stderr
            lines = listing.stdout.splitlines()
            header = lines[0].split()
            assert header[:4] == ["PID", "TOTAL", "DONE", "FAIL"], listing.stdout
            for line in lines[1:]:
                row = dict(zip(header, line.split()))
                if int(row["PID"]) == queue.pid and row["DONE"] == "3":
                    return row
            return None

        row = cluster.wait_until(queue_row, timeout=15, what="mosps -S to show the queue with 3 lines done")
        assert (row["TOTAL"], row["DONE"], row["FAIL"]) == ("4", "3", "1")
    finally:
        go.touch()
        out, err = queue.communicate(timeout=30)
    assert queue.returncode == 1, err
    assert out == "third\n"
    listing = run(["mosps", "-S"], env)
    assert str(queue.pid) not in listing.stdout.split()


# -- any bytes a line can hold (issue 17, item 11) ------------------------------------------------------------
def test_odd_bytes_reach_bash_and_the_failed_file_exactly(tmp_path, mosrun_env):
    """Lines are bytes: not UTF-8, not the locale's, reach bash and the failed-file as they are."""
    out = tmp_path / "out"
    cmds = tmp_path / "cmds"
    lines = [
        b"printf '\xff\xfe\x80' > " + bytes(out) + b"; exit 3",  # invalid UTF-8, the job fails
        b"true \xff",  # true ignores its argument: fine
        b"\xff\xfe",  # not a command: fails
        b": \xc3\xa9 \xed\xa0\x80; exit 4",  # valid UTF-8 and an encoded surrogate
        b"echo ok",
    ]
    cmds.write_bytes(b"\n".join(lines) + b"\n")
    failed = tmp_path / "failed"
    result = subprocess.run(["mosrun", "-S1", f"{cmds},{failed}"], env=mosrun_env, capture_output=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert result.stdout == b"ok\n"
    assert out.read_bytes() == b"\xff\xfe\x80"
    assert failed.read_bytes() == lines[0] + b"\n" + lines[2] + b"\n" + lines[3] + b"\n"


def test_odd_bytes_in_a_nested_queue(tmp_path, mosrun_env):
    """mosrun -S inside a MOSIX process feeds its jobs the same bytes."""
    cmds = tmp_path / "cmds"
    lines = [b"exit 1 # \xff", b"echo \xfe", b"\x80\x81"]
    cmds.write_bytes(b"\n".join(lines) + b"\n")
    failed = tmp_path / "failed"
    result = subprocess.run(
        ["mosrun", "-e", "bash", "-c", f"mosrun -S1 {cmds},{failed}"], env=mosrun_env, capture_output=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == b"\xfe\n"
    assert failed.read_bytes() == lines[0] + b"\n" + lines[2] + b"\n"


def test_a_line_holding_a_nul_is_broken_and_kept_whole(tmp_path, mosrun_env):
    """bash -c cannot be given a NUL: running the line up to it would run another command."""
    marker = tmp_path / "marker"
    cmds = tmp_path / "cmds"
    nul_line = b"touch " + bytes(marker) + b"\0; exit 9"
    cmds.write_bytes(nul_line + b"\necho after\n")
    failed = tmp_path / "failed"
    result = subprocess.run(["mosrun", "-S1", f"{cmds},{failed}"], env=mosrun_env, capture_output=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert b"Line #1 is too long or broken!" in result.stderr.splitlines()
    assert result.stdout == b"after\n"
    assert not marker.exists()
    assert failed.read_bytes() == nul_line + b"\n"


def test_an_over_long_line_is_recorded_whole(tmp_path, mosrun_env):
    """The failed-file holds the lines that failed byte for byte, a 200 KB one too."""
    long_line = b"echo " + b"\xff" * 200_000
    cmds = tmp_path / "cmds"
    cmds.write_bytes(b"exit 2\n" + long_line + b"\necho last\n")
    failed = tmp_path / "failed"
    result = subprocess.run(["mosrun", "-S1", f"{cmds},{failed}"], env=mosrun_env, capture_output=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stdout == b"last\n"
    assert failed.read_bytes() == b"exit 2\n" + long_line + b"\n"


def test_a_thousand_line_queue_with_failing_signalled_and_odd_lines(tmp_path, mosrun_env):
    """The issue's load test: every line runs once, and the failed-file holds exactly the
    failed lines, each whole (completion order, so compared as a multiset)."""
    kinds = [
        (b"exit 3", False),
        (b"kill -TERM $$", False),
        (b"printf '\xff' >/dev/null; true", True),
        (b"true", True),
        (b"sleep 0.01", True),
        (b": \xff\xfe\x80; exit 5", False),
        (b"kill -KILL $$", False),
        (b"true \xc3A", True),
    ]
    lines, expected = [], []
    for n in range(1, 1001):
        body, ok = kinds[n % len(kinds)]
        line = b"printf '%d\\n' " + str(n).encode() + b"; " + body
        lines.append(line)
        if not ok:
            expected.append(line)
    cmds = tmp_path / "cmds"
    cmds.write_bytes(b"\n".join(lines) + b"\n")
    failed = tmp_path / "failed"
    result = subprocess.run(["mosrun", "-S16", f"{cmds},{failed}"], env=mosrun_env, capture_output=True, timeout=240)
    assert result.returncode == 255, result.stderr[-2000:]
    assert sorted(map(int, result.stdout.split())) == list(range(1, 1001))  # each line ran, once
    recorded = failed.read_bytes()
    assert recorded.endswith(b"\n")
    assert sorted(recorded[:-1].split(b"\n")) == sorted(expected)
    assert b"Traceback" not in result.stderr
