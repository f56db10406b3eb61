"""mostestload(1): every option of the manual page, really taking effect.

Real runs: the command as a subprocess where CPU time, memory or signals are measured,
in-process (typer's CliRunner / run_load) where only the outcome of a short run matters.
"""

from __future__ import annotations

import io
import random
import re
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mosix_core.cli import mostestload as mtl
from mosix_core.cli.loadspec import IOSpec, LoadSpec, SpecError, TimeSpec
from mosix_core.cli.mostestload import rewrite, run_load
from tests.helpers.cluster import tool_argv

pytestmark = pytest.mark.linux

KB = 1024
MB = 1024 * 1024


def cli(*args: str) -> tuple[int, str, str]:
    """The command in-process, argv rewritten exactly as ``main`` does."""
    result = CliRunner().invoke(mtl.app, rewrite(list(args)))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def summary_value(text: str, label: str) -> str:
    match = re.search(rf"^\s*{label}:\s+(.*)$", text, re.M)
    assert match, text
    return match.group(1)


def run_child(*args: str, timeout: float = 30) -> tuple[subprocess.CompletedProcess, float]:
    """Run mostestload as a user would; also return the CPU seconds it used (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(tool_argv("mostestload", *args), capture_output=True, text=True, timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def rss_anon_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon")


# --------------------------------------------------------------------------- option syntax


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--write", "32,640,1", "-f", "x"], ["--write=32,640,1", "-f", "x"]),
        (["--write", "-f", "x"], ["--write=", "-f", "x"]),
        (["--read"], ["--read="]),
        (["--read=4,2"], ["--read=4,2"]),
        (["--noiosyscall", "100,1", "-r"], ["--noiosyscall=100,1", "-r"]),
        (["--noiosyscall"], ["--noiosyscall="]),
        (["-l", "10", "-h", "20"], ["-l", "10", "-h", "20"]),
        (["-h20"], ["-h20"]),
        (["-h"], ["--help"]),
        (["-h", "-t", "5"], ["--help", "-t", "5"]),
        (["--", "--read"], ["--", "--read"]),
    ],
)
def test_rewrite_mosix_spellings(argv, expected):
    assert rewrite(argv) == expected


def test_bare_h_is_help_and_h_with_a_value_is_the_maximum():
    code, out, _ = cli("-h")
    assert code == 0 and "Usage:" in out and "bare -h" in out
    code, _, err = cli("-l", "0.05", "-h0.1", "--cpu=0", "-v")
    assert code == 0 and re.search(r"running for 0\.(0[5-9]|10) CPU seconds", err), err


@pytest.mark.parametrize("argv", [["-t0.2"], ["-t", "0.2"], ["--time=0.2"], ["--time", "0.2"]])
def test_time_glued_separated_and_long(argv):
    code, _, err = cli(*argv, "--cpu=0", "-v")
    assert code == 0 and "running for 0.20 CPU seconds" in err


def test_time_specs():
    assert TimeSpec.parse("20") == TimeSpec(20, 20)
    assert TimeSpec.parse("10,20") == TimeSpec(10, 20)
    assert TimeSpec.parse("0").forever and TimeSpec.parse("0").pick(random.Random()) == 0
    picks = [TimeSpec.parse("1,2").pick(random.Random(seed)) for seed in range(50)]
    assert all(1 <= p <= 2 for p in picks) and len(set(picks)) > 40
    for bad in ("x", "1,2,3", "-1", "3,1", "nan", "inf"):
        with pytest.raises(SpecError):
            TimeSpec.parse(bad)


def test_io_specs_defaults():
    assert IOSpec.parse("", "--read") == IOSpec(KB, 1024, None)
    assert IOSpec.parse("32", "--write") == IOSpec(32 * KB, 1024, None)
    assert IOSpec.parse("32,640,1", "--write") == IOSpec(32 * KB, 640, 1)
    assert IOSpec.parse("32, 640", "--write") == IOSpec(32 * KB, 640, None)
    assert IOSpec.parse("4,,2", "--write") == IOSpec(4 * KB, 1024, 2)
    assert IOSpec.parse("100,1", "--noiosyscall", sized=False) == IOSpec(0, 100, 1)
    assert IOSpec.parse("100,0", "--noiosyscall", sized=False).repeats is None
    for bad in ("x", "0", "1,0", "1,2,3,4", "1.5"):
        with pytest.raises(SpecError):
            IOSpec.parse(bad, "--read")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["-t", "abc"], "'-t'"),
        (["-t", "5,1"], "greater than maximum"),
        (["-t1,2,3"], "MIN,MAX"),
        (["-l", "2", "-h", "1"], "greater than maximum"),
        (["-l", "2"], "go together"),
        (["-h5"], "go together"),
        (["-t5", "-l1", "-h2"], "not both"),
        (["-m", "lots"], "'-m'"),
        (["-m-5"], "must not be negative"),
        (["--cpu=-1"], "must not be negative"),
        (["--read=x"], "'--read'"),
        (["--write", "0"], "at least 1"),
        (["--read", "--write"], "alternatives"),
        (["--noiosyscall=1,2,3"], "expected ncalls,repeats"),
        (["-d", "/tmp", "-f", "/tmp/x"], "not both"),
        (["--maxiosize", "0"], "positive"),
        (["--sleep", "-1"], "must not be negative"),
        (["-x"], "No such option"),
    ],
)
def test_bad_options_exit_2_with_one_clear_line(argv, fragment):
    code, out, err = cli(*argv)
    assert code == 2, (out, err)
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and fragment in errors[0], err
    assert "Traceback" not in err + out


# --------------------------------------------------------------------------- CPU time


def test_t1_runs_one_cpu_second():
    proc, cpu = run_child("-t1", "-r")
    assert proc.returncode == 0, proc.stderr
    assert float(summary_value(proc.stdout, "CPU time").split()[0]) >= 1.0
    assert "ended by time" in proc.stdout
    assert 1.0 <= cpu < 3.5  # plus interpreter start-up, loosely


def test_random_time_between_l_and_h():
    proc, cpu = run_child("-l", "1", "-h", "2", "-v", "-r")
    assert proc.returncode == 0, proc.stderr
    chosen = float(re.search(r"running for ([\d.]+) CPU seconds", proc.stderr).group(1))
    assert 1 <= chosen <= 2
    used = float(summary_value(proc.stdout, "CPU time").split()[0])
    assert chosen <= used < chosen + 0.2
    assert chosen <= cpu < chosen + 2.5


def test_cpu_units_then_exit():
    code, out, _ = cli("--cpu=3", "-r")
    assert code == 0
    assert summary_value(out, "CPU units") == "3" and "ended by cpu" in out
    assert float(summary_value(out, "CPU time").split()[0]) < 1.0


def test_time_limit_stops_system_calls_too():
    spec = LoadSpec.from_options(time_text="0.3", noio="")
    summary = run_load(spec, out=io.StringIO(), err=io.StringIO())
    assert summary.ended_by == "time"
    assert 0.3 <= summary.cpu_seconds < 0.5 and summary.other_calls > 1000


def test_sleep_before_starting_costs_no_cpu():
    spec = LoadSpec.from_options(sleep=0.4, cpu_units=1, verbose=True)
    err = io.StringIO()
    start = time.monotonic()
    summary = run_load(spec, out=io.StringIO(), err=err)
    assert time.monotonic() - start >= 0.4
    assert summary.cpu_seconds < 0.2 and "sleeping 0.4 seconds" in err.getvalue()


# --------------------------------------------------------------------------- memory


def resident_while_running(*args: str) -> tuple[int, int]:
    """RssAnon (kB) of a running mostestload once its memory is ready; stopped by SIGTERM."""
    proc = subprocess.Popen(
        tool_argv("mostestload", "-t0", "-v", "-r", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        while True:  # the progress line comes after the allocation
            line = proc.stderr.readline()
            assert line, proc.stderr.read()
            if "progress:" in line:
                break
        time.sleep(0.2)
        rss = rss_anon_kb(proc.pid)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "ended by SIGTERM" in out
    return rss, proc.returncode


@pytest.fixture(scope="module")
def baseline_rss() -> int:
    rss, code = resident_while_running()
    assert code == 128 + signal.SIGTERM
    return rss


@pytest.mark.parametrize("pattern", [[], ["--random-mem"]])
def test_mem_is_really_resident(baseline_rss, pattern):
    rss, code = resident_while_running("-m20", *pattern)
    assert code == 128 + signal.SIGTERM
    assert rss - baseline_rss >= 19 * 1024, (rss, baseline_rss)


def test_memory_touch_cycles_through_all_pages():
    load = mtl._Load(LoadSpec(mem_mb=1), io.StringIO(), io.StringIO(), lambda: None, 0, random.Random())
    load.allocate()
    assert load.mem is not None and len(load.mem) == MB and set(load.mem[::4096]) == {0xA5}
    load.touch()
    assert load.touch_at == 0 and bytes(load.mem[:16]) == b"\xa5" * 16


# --------------------------------------------------------------------------- I/O


def test_write_to_a_file(tmp_path: Path):
    target = tmp_path / "out"
    proc, _ = run_child("--write", "4,16,1", "-f", str(target), "-r")
    assert proc.returncode == 0, proc.stderr
    assert target.stat().st_size == 64 * KB
    assert summary_value(proc.stdout, "written") == f"{64 * KB} bytes in 16 calls"
    # ... and read it back: 16 reads of 4 KB
    proc, _ = run_child("--read=4,16,1", "--file", str(target), "-r")
    assert proc.returncode == 0, proc.stderr
    assert summary_value(proc.stdout, "read") == f"{64 * KB} bytes in 16 calls"


def test_maxiosize_wraps_to_the_start(tmp_path: Path):
    target = tmp_path / "wrap"
    code, out, _ = cli("-f", str(target), "--write", "64,40,1", "--maxiosize", "1", "-r")
    assert code == 0
    assert target.stat().st_size == MB  # 2.5 MB written, never beyond 1 MB
    assert summary_value(out, "written") == f"{40 * 64 * KB} bytes in 40 calls"


def test_read_wraps_at_end_of_file_and_at_maxiosize(tmp_path: Path):
    target = tmp_path / "data"
    target.write_bytes(b"x" * (10 * KB))
    code, out, _ = cli("-f", str(target), "--read", "4,10,1", "-r")
    assert code == 0  # 4+4+2, 4+4+2, 4+4+2, 4
    assert summary_value(out, "read") == f"{34 * KB} bytes in 10 calls"
    big = tmp_path / "big"
    big.write_bytes(b"y" * (2 * MB))
    spec = LoadSpec.from_options(file=big, read="256,12,1", maxiosize_mb=0.5)
    load = mtl._Load(spec, io.StringIO(), io.StringIO(), lambda: None, 0, random.Random())
    load.open_file()
    offsets = []
    for _ in range(6):
        load.read_call()
        offsets.append(load.offset)
    load.close_file()
    assert offsets == [256 * KB, 512 * KB] * 3  # never past 0.5 MB of the 2 MB file
    assert load.summary.bytes_read == 6 * 256 * KB


def test_read_in_a_temporary_file_in_dir_removed_at_exit(tmp_path: Path):
    code, out, err = cli("-d", str(tmp_path), "--read", "4,8,2", "-r", "-v")
    assert code == 0, err
    assert summary_value(out, "read") == f"{64 * KB} bytes in 16 calls"
    assert re.search(rf"reading {re.escape(str(tmp_path))}/mostestload\.\S+ \(temporary\)", err)
    assert list(tmp_path.iterdir()) == []


def test_cpu_units_between_chunks(tmp_path: Path):
    target = tmp_path / "f"
    code, out, _ = cli("-f", str(target), "--write", "4,8,3", "--cpu=2", "-r")
    assert code == 0
    assert summary_value(out, "CPU units") == "4"  # between three chunks: 2 x 2
    assert summary_value(out, "chunks") == "3" and "ended by repeats" in out
    assert target.stat().st_size == 3 * 8 * 4 * KB


def test_noiosyscall_report():
    code, out, _ = cli("--noiosyscall=100,1", "-r")
    assert code == 0
    assert summary_value(out, "other system calls") == "100"
    assert summary_value(out, "read") == "0 bytes in 0 calls"


def test_sigterm_removes_the_temporary_file_and_reports(tmp_path: Path):
    proc = subprocess.Popen(
        tool_argv("mostestload", "-t0", "-d", str(tmp_path), "--write", "-r", "-v"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while "writing" not in (line := proc.stderr.readline()):
        assert line
    assert len(list(tmp_path.iterdir())) == 1
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "ended by SIGTERM" in out and int(summary_value(out, "written").split()[0]) > 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--write", "1,1,1", "-f", "/nonexistent/dir/x"], "/nonexistent/dir/x: cannot open"),
        (["--read", "-f", "/nonexistent/x"], "/nonexistent/x: cannot open"),
        (["--write", "1,1,1", "-d", "/nonexistent"], "/nonexistent: cannot create a file"),
    ],
)
def test_io_errors_exit_1(argv, fragment):
    code, out, err = cli(*argv)
    assert code == 1 and err.strip() == f"mostestload: {fragment}: No such file or directory", err


def test_reading_an_empty_file_is_an_error(tmp_path: Path):
    (tmp_path / "empty").touch()
    code, _, err = cli("--read", "-f", str(tmp_path / "empty"))
    assert code == 1 and "the file is empty: nothing to read" in err


def test_write_error_is_clear():
    code, _, err = cli("--write", "1,2,1", "-f", "/dev/full")
    assert code == 1 and err.strip() == "mostestload: /dev/full: cannot write: No space left on device"


# --------------------------------------------------------------------------- migrations


def test_report_migrations_from_whereami():
    answers = iter([0, 0, 3, 3, 3232235777, 0])
    out, err = io.StringIO(), io.StringIO()
    spec = LoadSpec.from_options(cpu_units=5, report_migrations=True, verbose=True)
    summary = run_load(spec, out=out, err=err, whereami=lambda: next(answers), poll_interval=0)
    assert out.getvalue().splitlines() == [
        "mostestload: migrated to node 3",
        "mostestload: migrated to 192.168.1.1",
        "mostestload: migrated back home",
    ]
    assert summary.migrations == 3 and "running at home" in err.getvalue()


def test_not_under_mosrun_said_once_in_verbose_mode():
    calls = []

    def whereami():
        calls.append(1)
        return mtl.read_whereami()  # the real interface: no mosrun here

    err = io.StringIO()
    run_load(
        LoadSpec.from_options(cpu_units=5, report_migrations=True, verbose=True),
        out=io.StringIO(),
        err=err,
        whereami=whereami,
        poll_interval=0,
    )
    assert err.getvalue().count("not running under mosrun") == 1 and len(calls) == 1
    quiet = io.StringIO()
    run_load(LoadSpec.from_options(cpu_units=2, report_migrations=True), out=quiet, err=quiet)
    assert quiet.getvalue() == ""


def test_where_text():
    assert mtl.where_text(0) == "home"
    assert mtl.where_text(7) == "node 7"
    assert mtl.where_text(65535) == "node 65535"
    assert mtl.where_text(0x0A000001) == "10.0.0.1"
    assert mtl.where_text(-1062731519) == "192.168.1.1"  # as a C int: 0xC0A80101
    assert mtl.read_whereami() is None  # not under mosrun here


def test_installed_as_a_script():
    import tomllib

    scripts = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["mostestload"] == "mosix_core.cli.mostestload:main"
