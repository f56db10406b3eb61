"""Manual freezing of real programs: ``mosmigrate {pid} freeze | continue``.

A frozen process keeps no memory (its image is in a freezing directory), does not
run, reacts only to unfreezing or a fatal signal, and once unfrozen carries on to
exactly the output of an uninterrupted native run. The freezing directory here is
the user's own (``FREEZE_DIR``); the automatic policy, mosps and freeze.conf's
directories are tested with a daemon in tests/cluster/test_auto_freezing.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers.programs import lines, native_output, run, start, wait_until

# deterministic, incompressible ballast: the image is as large as the memory
LOOP = """\
import os, random, select, signal, sys
steps, megabytes = int(sys.argv[1]), int(sys.argv[2])
ballast = bytearray(random.Random(1).randbytes(1 << 20)) * megabytes
signal.signal(signal.SIGUSR1, lambda *_: print("usr1", flush=True))
x = 0
for i in range(steps):
    x = (x * 31 + i * i + ballast[(i * 40961) % len(ballast)]) % 1000003
    print(i, x, flush=True)
    select.select([], [], [], 0.02)
print("done", x, flush=True)
"""

MAPPED = """\
import mmap, select, sys
with open(sys.argv[1], "rb") as f:
    data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
for i in range(int(sys.argv[2])):
    print(i, data[i % len(data)], flush=True)
    select.select([], [], [], 0.02)
print("done", flush=True)
"""


@pytest.fixture
def freeze_env(mosrun_env, tmp_path) -> dict[str, str]:
    directory = tmp_path / "freeze"
    directory.mkdir()
    return {**mosrun_env, "FREEZE_DIR": str(directory)}


def status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            out[name] = value.strip()
    return out


def rss_kb(pid: int) -> int:
    return int(status(pid)["VmRSS"].split()[0])


def freeze_files(pid: int, directory: str) -> list[tuple[str, int]]:
    """The freeze files the supervisor of ``pid`` holds open in ``directory`` (unlinked)."""
    tracer = int(status(pid)["TracerPid"])
    found = []
    for fd in os.listdir(f"/proc/{tracer}/fd"):
        try:
            target = os.readlink(f"/proc/{tracer}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith(directory + "/freeze.") and target.endswith(" (deleted)"):
            found.append((f"/proc/{tracer}/fd/{fd}", os.stat(f"/proc/{tracer}/fd/{fd}").st_size))
    return found


def mosmigrate(pid: int, action: str, env) -> None:
    done = run(["mosmigrate", str(pid), action], env)
    assert done.returncode == 0, done.stderr


def freeze(pid: int, env) -> None:
    mosmigrate(pid, "freeze", env)
    wait_until(lambda: freeze_files(pid, env["FREEZE_DIR"]) and rss_kb(pid) < 1024, what="the freeze")


def still(out: Path, seconds: float = 0.5) -> bool:
    before = lines(out)
    time.sleep(seconds)
    return lines(out) == before


def start_loop(tmp_path: Path, env, steps: int, megabytes: int):
    """LOOP under mosrun, once it has started printing: (the process, its output, the script)."""
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    out = tmp_path / "out.txt"
    proc = start(["mosrun", "python3", str(script), str(steps), str(megabytes)], env, tmp_path, out)
    try:
        wait_until(lambda: lines(out) >= 5, what="the program's start")
    except AssertionError:
        proc.kill()
        raise
    return proc, out, script


def run_with_freezes(argv, env, cwd: Path, out: Path, rounds: int, progress: int) -> None:
    proc = start(argv, env, cwd, out)
    try:
        for round_ in range(rounds):
            target = lines(out) + progress
            wait_until(lambda: lines(out) >= target or proc.poll() is not None, what=f"{target} lines")
            assert proc.poll() is None, f"ended before round {round_}: {(cwd / 'stderr.txt').read_text()}"
            freeze(proc.pid, env)
            assert still(out), "a frozen process ran"
            mosmigrate(proc.pid, "continue", env)
            wait_until(lambda: not freeze_files(proc.pid, env["FREEZE_DIR"]), what="the image to go")
        assert proc.wait(timeout=120) == 0, (cwd / "stderr.txt").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_frozen_python_keeps_no_memory_and_carries_on_exactly(tmp_path, freeze_env):
    proc, out, script = start_loop(tmp_path, freeze_env, 150, 48)
    try:
        assert rss_kb(proc.pid) > 48 * 1024
        for _ in range(3):
            freeze(proc.pid, freeze_env)
            assert still(out)
            assert status(proc.pid)["State"].startswith("S")
            ((image, size),) = freeze_files(proc.pid, freeze_env["FREEZE_DIR"])
            assert 48 << 20 <= size < 56 << 20  # the memory, on disk
            assert os.listdir(freeze_env["FREEZE_DIR"]) == []  # unlinked as soon as created
            mosmigrate(proc.pid, "continue", freeze_env)
            target = lines(out) + 10
            wait_until(lambda: lines(out) >= target, what="progress after unfreezing")
            assert freeze_files(proc.pid, freeze_env["FREEZE_DIR"]) == []
        assert proc.wait(timeout=60) == 0, (tmp_path / "stderr.txt").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.read_bytes() == native_output(["python3", str(script), "150", "48"], tmp_path, freeze_env)


def test_awk_and_fpu_programs_survive_freezing(tmp_path, freeze_env, programs):
    awk = 'BEGIN { for (i = 0; i < 200; i++) { for (j = 0; j < 100000; j++) s += j % 7; printf "%d %d\\n", i, s; fflush() } }'
    out = tmp_path / "awk.txt"
    run_with_freezes(["mosrun", "awk", awk], freeze_env, tmp_path, out, rounds=2, progress=20)
    assert out.read_bytes() == native_output(["awk", awk], tmp_path, freeze_env)
    argv = [str(programs / "ckpt_fpu"), "200", "15"]
    out = tmp_path / "fpu.txt"
    run_with_freezes(["mosrun", *argv], freeze_env, tmp_path, out, rounds=3, progress=15)
    assert out.read_bytes() == native_output(argv, tmp_path, freeze_env)


def test_a_frozen_process_holds_caught_signals_and_dies_of_fatal_ones(tmp_path, freeze_env):
    proc, out, _ = start_loop(tmp_path, freeze_env, 2000, 4)
    try:
        freeze(proc.pid, freeze_env)
        os.kill(proc.pid, signal.SIGUSR1)  # caught: its handler runs once unfrozen
        os.kill(proc.pid, signal.SIGWINCH)  # ignored by default: nothing happens
        assert still(out)
        assert b"usr1" not in out.read_bytes()
        mosmigrate(proc.pid, "continue", freeze_env)
        wait_until(lambda: b"usr1" in out.read_bytes(), what="the held signal")
        freeze(proc.pid, freeze_env)
        os.kill(proc.pid, signal.SIGTERM)  # fatal: it dies, frozen
        assert proc.wait(timeout=20) == -signal.SIGTERM
        assert out.read_bytes().count(b"usr1") == 1
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_checkpoint_asked_for_while_frozen_is_taken_after_unfreezing(tmp_path, freeze_env):
    proc, out, _ = start_loop(tmp_path, freeze_env, 2000, 2)
    image = tmp_path / f"ckpt.{proc.pid}.1"
    try:
        freeze(proc.pid, freeze_env)
        mosmigrate(proc.pid, "checkpoint", freeze_env)
        time.sleep(1)
        assert not image.exists()
        mosmigrate(proc.pid, "continue", freeze_env)
        wait_until(lambda: image.exists() and image.stat().st_mode & 0o777 == 0o400, what="the checkpoint")
    finally:
        proc.kill()
        proc.wait()
    inspected = run(["mosrun", f"-I{image}"], freeze_env)
    assert inspected.returncode == 0 and "out.txt" in inspected.stdout


def test_no_space_to_freeze_leaves_a_manually_frozen_process_running(tmp_path, mosrun_env, small_tmpfs):
    env = {**mosrun_env, "FREEZE_DIR": str(small_tmpfs)}
    proc, out, script = start_loop(tmp_path, env, 100, 8)
    mosmigrate(proc.pid, "freeze", env)
    assert proc.wait(timeout=60) == 0
    assert "No space to freeze" in (tmp_path / "stderr.txt").read_text()
    assert out.read_bytes() == native_output(["python3", str(script), "100", "8"], tmp_path, env)
    assert os.listdir(small_tmpfs) == []


def test_a_damaged_freeze_file_gives_the_manuals_message(tmp_path, freeze_env):
    proc, out, _ = start_loop(tmp_path, freeze_env, 2000, 2)
    try:
        freeze(proc.pid, freeze_env)
        ((image, size),) = freeze_files(proc.pid, freeze_env["FREEZE_DIR"])
        with open(image, "r+b") as f:  # the supervisor's own, unlinked file
            f.seek(size // 2)
            f.write(b"\xff" * 4096)
        mosmigrate(proc.pid, "continue", freeze_env)
        assert proc.wait(timeout=20) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Failed decompressing freeze file" in (tmp_path / "stderr.txt").read_text()


def test_a_failed_unfreeze_freezes_again_and_can_be_retried(tmp_path, freeze_env):
    data = tmp_path / "data.bin"
    data.write_bytes(bytes(range(256)) * 64)
    original = data.stat()
    script = tmp_path / "mapped.py"
    script.write_text(MAPPED)
    out = tmp_path / "out.txt"
    argv = ["python3", str(script), str(data), "120"]
    proc = start(["mosrun", *argv], freeze_env, tmp_path, out)
    try:
        wait_until(lambda: lines(out) >= 10, what="start")
        freeze(proc.pid, freeze_env)
        with open(data, "ab") as f:  # the mapped file changes under it
            f.write(b"more")
        mosmigrate(proc.pid, "continue", freeze_env)
        stderr = tmp_path / "stderr.txt"
        wait_until(lambda: "Re-freezing because un-freeze failed" in stderr.read_text(), what="the message")
        assert freeze_files(proc.pid, freeze_env["FREEZE_DIR"]) and rss_kb(proc.pid) < 1024
        assert still(out)
        os.truncate(data, original.st_size)  # put it back, then try again
        os.utime(data, ns=(original.st_atime_ns, original.st_mtime_ns))
        mosmigrate(proc.pid, "continue", freeze_env)
        assert proc.wait(timeout=60) == 0, stderr.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.read_bytes() == native_output(argv, tmp_path, freeze_env)


def test_only_the_owner_or_root_may_freeze(tmp_path, freeze_env):
    proc, out, _ = start_loop(tmp_path, freeze_env, 2000, 1)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child, as nobody
            os.setgid(65534)
            os.setuid(65534)
            from mosix_core.cli.mosmigrate import mosmigrate as ask

            try:
                ask(str(proc.pid), "freeze")
            except Exception as err:
                os._exit(3 if "not permitted" in str(err) else 4)
            os._exit(0)
        _, code = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(code) == 3
        assert not still(out, 0.3)
    finally:
        proc.kill()
        proc.wait()


def test_freeze_conf_directories_fall_through_when_full_and_u_owns_the_image(tmp_path, mosrun_env, small_tmpfs):
    etc = tmp_path / "etc"
    etc.mkdir()
    # outside pytest's 0700 tree: user 65534 must reach it
    last_resort = Path(tempfile.mkdtemp(prefix="mosix-freeze-"))
    os.chmod(last_resort, 0o1777)
    # the full tmpfs is the only weighted one; weight 0 is used only when all others fail
    (etc / "freeze.conf").write_text(f"{small_tmpfs} 5\n{last_resort} 0\nU 65534\n")
    env = {**mosrun_env, "MOSIX_ETC": str(etc)}
    env.pop("FREEZE_DIR", None)
    proc, out, _ = start_loop(tmp_path, env, 2000, 8)
    try:
        mosmigrate(proc.pid, "freeze", env)
        # until the freeze is over (the file shows as soon as it is being written)
        wait_until(
            lambda: freeze_files(proc.pid, str(last_resort)) and rss_kb(proc.pid) < 1024,
            what="the image in the last resort",
        )
        ((image, size),) = freeze_files(proc.pid, str(last_resort))
        assert os.stat(image).st_uid == 65534  # created with U's privileges
        assert size >= 8 << 20 and os.listdir(small_tmpfs) == []
        mosmigrate(proc.pid, "continue", env)
        target = lines(out) + 5
        wait_until(lambda: lines(out) >= target, what="progress after unfreezing")
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(last_resort)


def test_a_process_frozen_inside_a_blocking_read_of_a_pipe_reads_on_when_unfrozen(tmp_path, freeze_env):
    out = tmp_path / "out.txt"
    with open(out, "wb") as stdout:
        proc = subprocess.Popen(
            ["mosrun", "cat"],
            env=freeze_env,
            cwd=tmp_path,
            stdin=subprocess.PIPE,
            stdout=stdout,
            stderr=subprocess.PIPE,
        )
    try:
        proc.stdin.write(b"before\n")
        proc.stdin.flush()
        wait_until(lambda: out.read_bytes() == b"before\n", what="cat at work")
        freeze(proc.pid, freeze_env)  # inside read(0): pipes stay with it
        proc.stdin.write(b"while frozen\n")
        proc.stdin.flush()
        assert still(out) and out.read_bytes() == b"before\n"
        mosmigrate(proc.pid, "continue", freeze_env)
        wait_until(lambda: out.read_bytes() == b"before\nwhile frozen\n", what="the read to go on")
        proc.stdin.write(b"after\n")
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.read_bytes() == b"before\nwhile frozen\nafter\n"
