"""Checkpoint and recovery of real, unmodified programs (mosrun(1) CHECKPOINTS).

Each program is checkpointed mid-run, the process dies, and it is recovered with
``mosrun -R`` — several times in a row on the same process — and its output must
be exactly what an uninterrupted native run prints. Programs write to regular
files: a process with an open pipe cannot be checkpointed (the manual's rule,
tested too).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

from tests.helpers.programs import lines, native_output, run, start, wait_until

LOOP = """\
import os, select, sys
steps = int(sys.argv[1])
me = os.getpid()
x = 0
for i in range(steps):
    x = (x * 31 + i * i) % 1000003
    print(i, x, os.getpid() == me, flush=True)
    select.select([], [], [], 0.02)
print("done", x, flush=True)
"""

PROGRAM_CHECKPOINT = """\
import ctypes, os, select, sys
libc = ctypes.CDLL(None, use_errno=True)
for i in range(int(sys.argv[1])):
    if i == 5:
        print("version", libc.open(b"/proc/self/checkpoint", 0), flush=True)
        print("checkpoint", libc.open(b"/proc/self/checkpoint", 2 | os.O_CREAT, 1), flush=True)
    print(i, flush=True)
    select.select([], [], [], 0.02)
print("done", flush=True)
"""


def checkpoint_and_exit(proc: subprocess.Popen, env, cwd: Path, before: set[str]) -> Path:
    """mosmigrate PID chkexit; the new checkpoint file."""
    done = run(["mosmigrate", str(proc.pid), "chkexit"], env)
    assert done.returncode == 0, done.stderr
    assert proc.wait(timeout=30) == 0
    new = sorted(set(os.listdir(cwd)) - before - {"stderr.txt"}, key=lambda n: (cwd / n).stat().st_mtime)
    new = [n for n in new if n.startswith("ckpt.")]
    assert new, f"no checkpoint file appeared in {os.listdir(cwd)}"
    return cwd / new[-1]


def run_with_recoveries(argv, env, cwd: Path, out: Path, rounds: int, progress: int) -> None:
    """Start ``argv``; ``rounds`` times: let it print ``progress`` more lines, checkpoint
    it, let it die, recover it; then let it finish."""
    proc = start(argv, env, cwd, out)
    for round_ in range(rounds):
        target = lines(out) + progress
        wait_until(lambda: lines(out) >= target or proc.poll() is not None, what=f"{target} lines")
        assert proc.poll() is None, f"the program ended before round {round_}: {out.read_text()[-300:]}"
        image = checkpoint_and_exit(proc, env, cwd, set(os.listdir(cwd)))
        assert stat.S_IMODE(image.stat().st_mode) == 0o400
        with open(cwd / "stderr.txt", "ab") as stderr:
            proc = subprocess.Popen(
                ["mosrun", f"-R{image}"],
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
    assert proc.wait(timeout=120) == 0, (cwd / "stderr.txt").read_text()


def test_python_loop_survives_three_checkpoint_kill_recover_rounds(tmp_path, mosrun_env):
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    out = tmp_path / "out.txt"
    run_with_recoveries(["mosrun", "python3", str(script), "400"], mosrun_env, tmp_path, out, rounds=3, progress=15)
    expected = native_output(["python3", str(script), "400"], tmp_path, mosrun_env)
    assert out.read_bytes() == expected
    assert b"False" not in out.read_bytes()  # getpid() kept its value throughout


def test_awk_loop_is_recovered_exactly(tmp_path, mosrun_env):
    program = 'BEGIN { for (i = 0; i < 300; i++) { for (j = 0; j < 100000; j++) s += j % 7; printf "%d %d\\n", i, s; fflush() } }'
    out = tmp_path / "out.txt"
    run_with_recoveries(["mosrun", "awk", program], mosrun_env, tmp_path, out, rounds=2, progress=30)
    assert out.read_bytes() == native_output(["awk", program], tmp_path, mosrun_env)


def test_fpu_state_and_signal_handler_survive(tmp_path, mosrun_env, programs):
    argv = [str(programs / "ckpt_fpu"), "250", "15"]
    out = tmp_path / "out.txt"
    run_with_recoveries(["mosrun", *argv], mosrun_env, tmp_path, out, rounds=3, progress=15)
    assert out.read_bytes() == native_output(argv, tmp_path, mosrun_env)


def test_appended_and_read_files_keep_their_offsets(tmp_path, mosrun_env, programs):
    source = tmp_path / "input.txt"
    source.write_bytes(bytes(range(32, 127)) * 20)
    argv = [str(programs / "ckpt_append"), "100", "15", str(tmp_path / "appended.log"), str(source)]
    out = tmp_path / "out.txt"
    run_with_recoveries(["mosrun", *argv], mosrun_env, tmp_path, out, rounds=2, progress=20)
    recovered_log = (tmp_path / "appended.log").read_bytes()
    native_dir = tmp_path / "native"
    native_dir.mkdir()
    native_argv = [argv[0], "100", "15", str(native_dir / "appended.log"), str(source)]
    expected = native_output(native_argv, native_dir, mosrun_env)
    assert out.read_bytes() == expected
    # the appended log: every line once, in order, even though lines written between a
    # checkpoint and the kill were appended again by the recovered process
    native_log = (native_dir / "appended.log").read_bytes()
    assert recovered_log.endswith(native_log.splitlines(keepends=True)[-1])
    assert set(recovered_log.splitlines()) == set(native_log.splitlines())


def test_unlinked_temporary_file_travels_with_the_process(tmp_path, mosrun_env, programs):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    argv = [str(programs / "ckpt_tmpfile"), "250", "15", str(scratch)]
    out = tmp_path / "out.txt"
    run_with_recoveries(["mosrun", *argv], mosrun_env, tmp_path, out, rounds=3, progress=12)
    assert out.read_bytes() == native_output(argv, tmp_path, mosrun_env)
    assert b"BAD" not in out.read_bytes() and b"SHORT" not in out.read_bytes()


def test_the_program_checkpoints_itself_through_proc_self(tmp_path, mosrun_env):
    script = tmp_path / "self.py"
    script.write_text(PROGRAM_CHECKPOINT)
    out = tmp_path / "out.txt"
    proc = start(["mosrun", "python3", str(script), "60"], mosrun_env, tmp_path, out)
    wait_until(lambda: lines(out) >= 20, what="20 lines")
    image = tmp_path / f"ckpt.{proc.pid}.1"
    assert image.exists() and stat.S_IMODE(image.stat().st_mode) == 0o400
    proc.kill()
    proc.wait()
    recovered = subprocess.run(
        ["mosrun", f"-R{image}"],
        env=mosrun_env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert recovered.returncode == 0, recovered.stderr
    text = out.read_text()
    assert text.startswith("0\n1\n2\n3\n4\nversion 1\ncheckpoint 1\n5\n")
    assert text.endswith("58\n59\ndone\n")
    assert text.count("checkpoint 1") == 1  # the recovered process saw the same return


def test_pipes_make_a_checkpoint_hold_only_the_reason(tmp_path, mosrun_env):
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    proc = subprocess.Popen(
        ["mosrun", "python3", str(script), "400"],
        env=mosrun_env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        proc.stdout.readline()
        assert run(["mosmigrate", str(proc.pid), "checkpoint"], mosrun_env).returncode == 0
        image = tmp_path / f"ckpt.{proc.pid}.1"
        wait_until(lambda: image.exists() and stat.S_IMODE(image.stat().st_mode) == 0o400, what="the file")
        assert proc.poll() is None  # the process goes on
    finally:
        proc.kill()
        proc.communicate()
    inspected = run(["mosrun", f"-I{image}"], mosrun_env)
    assert "pipe" in inspected.stdout and "cannot be checkpointed" in inspected.stdout
    recovered = run(["mosrun", f"-R{image}"], mosrun_env, cwd=tmp_path)
    assert recovered.returncode != 0
    assert "Restoration failed: file-descriptor #1 is a pipe" in recovered.stderr


def test_checkpoint_names_recycle_as_minus_n_says(tmp_path, mosrun_env):
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    out = tmp_path / "out.txt"
    proc = start(["mosrun", "-Csave.4", "-N2", "python3", str(script), "400"], mosrun_env, tmp_path, out)
    try:
        wait_until(lambda: lines(out) >= 2, what="start")
        seen = []
        for expected in ("save.4", "save.5", "save.4"):
            before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("save.*")}
            assert run(["mosmigrate", str(proc.pid), "checkpoint"], mosrun_env).returncode == 0
            path = tmp_path / expected
            wait_until(
                lambda: (
                    path.exists()
                    and path.stat().st_mtime_ns != before.get(expected)
                    and stat.S_IMODE(path.stat().st_mode) == 0o400
                ),
                what=expected,
            )
            seen.append(expected)
        assert sorted(p.name for p in tmp_path.glob("save.*")) == ["save.4", "save.5"]
    finally:
        proc.kill()
        proc.wait()


def test_chkstop_leaves_the_process_stopped_until_sigcont(tmp_path, mosrun_env):
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    out = tmp_path / "out.txt"
    proc = start(["mosrun", "python3", str(script), "400"], mosrun_env, tmp_path, out)
    try:
        wait_until(lambda: lines(out) >= 3, what="start")
        assert run(["mosmigrate", str(proc.pid), "chkstop"], mosrun_env).returncode == 0
        image = tmp_path / f"ckpt.{proc.pid}.1"
        wait_until(lambda: image.exists() and stat.S_IMODE(image.stat().st_mode) == 0o400, what="the file")
        wait_until(
            lambda: Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "tT",
            what="the process to stop",
        )
        stopped_at = lines(out)
        time.sleep(0.3)
        assert lines(out) == stopped_at
        os.kill(proc.pid, signal.SIGCONT)
        wait_until(lambda: lines(out) > stopped_at + 3, what="the process to go on")
    finally:
        proc.kill()
        proc.wait()


def test_mosmigrate_refuses_what_is_not_a_mosix_process(mosrun_env):
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        done = run(["mosmigrate", str(sleeper.pid), "checkpoint"], mosrun_env)
        assert done.returncode == 1
        assert f"{sleeper.pid}: not a MOSIX process" in done.stderr
    finally:
        sleeper.kill()
        sleeper.wait()
    assert "not a process-ID" in run(["mosmigrate", "abc", "checkpoint"], mosrun_env).stderr


def test_automatic_checkpoints_every_minute(tmp_path, mosrun_env):
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    out = tmp_path / "out.txt"
    proc = start(["mosrun", "-A1", "python3", str(script), "4000"], mosrun_env, tmp_path, out)
    try:
        image = tmp_path / f"ckpt.{proc.pid}.1"
        time.sleep(50)
        assert not image.exists()
        wait_until(
            lambda: image.exists() and stat.S_IMODE(image.stat().st_mode) == 0o400,
            timeout=30,
            what="the automatic checkpoint",
        )
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_a_checkpoint_that_fills_its_disk_leaves_no_file_and_the_process_runs_on(tmp_path, mosrun_env, small_tmpfs):
    script = tmp_path / "big.py"
    script.write_text(
        "import random, select, sys\nballast = random.Random(1).randbytes(32 << 20)\n"
        "for i in range(int(sys.argv[1])):\n    print(i, ballast[i], flush=True)\n"
        "    select.select([], [], [], 0.02)\n"
    )
    out = tmp_path / "out.txt"
    proc = start(["mosrun", f"-C{small_tmpfs}/big", "python3", str(script), "150"], mosrun_env, tmp_path, out)
    wait_until(lambda: lines(out) >= 5, what="start")
    assert run(["mosmigrate", str(proc.pid), "checkpoint"], mosrun_env).returncode == 0
    assert proc.wait(timeout=60) == 0
    assert "checkpoint failed" in (tmp_path / "stderr.txt").read_text()
    assert os.listdir(small_tmpfs) == []  # the partial image went with the error
    assert out.read_bytes() == native_output(["python3", str(script), "150"], tmp_path, mosrun_env)


READ_ONLY_SHARED = """\
import ctypes, errno, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
with open(sys.argv[1], "rb") as f:
    address = libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
print("mapped", ctypes.string_at(address, 5), flush=True)
print("checkpoint", libc.open(b"/proc/self/checkpoint", 2 | os.O_CREAT, 1), flush=True)
if not os.path.exists("recovered"):
    sys.exit(0)
result = libc.mprotect(ctypes.c_void_p(address), 4096, mmap.PROT_READ | mmap.PROT_WRITE)
print("mprotect", result, errno.errorcode.get(ctypes.get_errno(), "-") if result else "-", flush=True)
"""


def test_a_read_only_shared_mapping_stays_unwritable_after_recovery(tmp_path, mosrun_env):
    """Issue 18: a read-only MAP_SHARED mapped privately may not become writable; the
    checkpoint keeps which ranges those are, so the recovered process is judged alike."""
    (tmp_path / "data").write_bytes(b"hello" * 1000)
    script = tmp_path / "shared.py"
    script.write_text(READ_ONLY_SHARED)
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"

    def mosrun(*argv: str) -> int:
        # output to a file: a process with an open pipe cannot be checkpointed
        # (neither truncated nor O_APPEND: the recovered process's offset is the one that counts)
        stdout, stderr = (os.open(path, os.O_WRONLY | os.O_CREAT, 0o644) for path in (out, err))
        try:
            return subprocess.run(
                ["mosrun", *argv],
                env=mosrun_env,
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                timeout=60,
            ).returncode
        finally:
            os.close(stdout)
            os.close(stderr)

    assert mosrun("-e", "python3", str(script), str(tmp_path / "data")) == 0
    assert (out.read_text(), err.read_text()) == ("mapped b'hello'\ncheckpoint 1\n", "")
    images = sorted(tmp_path.glob("ckpt.*.1"))
    assert len(images) == 1
    (tmp_path / "recovered").touch()
    assert mosrun(f"-R{images[0]}") == 0
    # the recovered process writes on from its offset at the checkpoint; -e came back with
    # the image: the call fails with ENOSYS, as it would have before
    assert (out.read_text(), err.read_text()) == ("mapped b'hello'\ncheckpoint 1\nmprotect -1 ENOSYS\n", "")
