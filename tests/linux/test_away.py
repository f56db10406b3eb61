"""A process moved into another process — the guest — while its home half, the shell
its memory left, performs its calls: the engine migration is made of, on one machine
and without the network (the deputy answers the guest directly). The program must
print exactly what a native run prints, end at home with its exit status, and keep
its pid and parent."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

from conftest import lines, native_output, stop_traced, wait_until
from mosix_core.errors import TraceError
from mosix_core.image import capture, freeze, restore, stub
from mosix_core.image.stream import ImageReader, ImageWriter
from mosix_core.linux import ptrace
from mosix_core.linux.syscall_names import NUMBERS
from mosix_core.remote.calls import Reply
from mosix_core.remote.deputy import Deputy
from mosix_core.remote.guest import Guest, guest_filter

LOOP = """\
import os, select, sys
me, parent = os.getpid(), os.getppid()
x = 0
for i in range(int(sys.argv[1])):
    x = (x * 31 + i * i) % 1000003
    print(i, x, os.getpid() == me, os.getppid() == parent, os.getcwd(), flush=True)
    select.select([], [], [], 0.01)
with open("result.txt", "w") as f:
    f.write(str(x))
sys.exit(3)
"""
GUEST_OPTIONS = ptrace.O_TRACESYSGOOD | ptrace.O_TRACESECCOMP | ptrace.O_EXITKILL


def run_away(argv: list[str], cwd: Path, out: Path, after_lines: int) -> tuple[int, Guest]:
    """Start ``argv`` here, move it into a guest after ``after_lines`` lines of output,
    run it to its end there; (the exit status its parent sees, the guest)."""
    with open(out, "wb") as stdout:
        proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.DEVNULL)
    pid = proc.pid
    guest_pid = None
    try:
        ptrace.seize(pid, ptrace.O_TRACESYSGOOD | ptrace.O_EXITKILL)
        wait_until(lambda: lines(out) >= after_lines, what=f"{after_lines} lines")
        regs = stop_traced(pid)
        image = io.BytesIO()
        writer = ImageWriter(image)
        capture.write_image(pid, writer, identity={"pid": pid}, regs=regs, files=False)
        writer.close()
        shell, _ = freeze.release_memory(pid)         # what stays home
        deputy = Deputy(pid, shell)
        guest_pid = stub.spawn_traced(GUEST_OPTIONS)
        image.seek(0)
        restore.restore(guest_pid, ImageReader(image, streaming=True),
                        restore.RestoreOptions(away=True, filter_program=tuple(guest_filter())))

        def forward(request):
            if request.nr == NUMBERS["exit_group"]:
                try:
                    deputy.call(request)
                except TraceError:
                    pass                               # the home process has ended
                return Reply(0)
            return deputy.call(request)

        guest = Guest(guest_pid, forward)
        status = guest.run()
        # the test is the program's parent and its tracer: the deputy saw (and reaped) its end
        assert deputy.ended is not None and deputy.ended.kind == "exited" and deputy.ended.code == status
        proc.returncode = status
        return status, guest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if guest_pid is not None:
            try:
                os.kill(guest_pid, 9)
                os.waitpid(guest_pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def test_python_moved_into_a_guest_behaves_as_if_it_never_left(tmp_path):
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    out = tmp_path / "out.txt"
    status, guest = run_away(["/usr/bin/python3", str(script), "120"], tmp_path, out, after_lines=20)
    assert status == 3
    assert guest.forwarded > 100                       # its writes, getpid, getcwd... went home
    away_result = (tmp_path / "result.txt").read_text()  # written at home, by a relative path
    native = subprocess.run(["/usr/bin/python3", str(script), "120"], cwd=tmp_path, capture_output=True,
                            timeout=60)
    assert native.returncode == 3
    assert out.read_bytes() == native.stdout
    assert b"False" not in out.read_bytes()            # the same pid and parent throughout
    assert away_result == (tmp_path / "result.txt").read_text()


def test_awk_moved_into_a_guest(tmp_path):
    program = 'BEGIN { for (i = 0; i < 150; i++) { for (j = 0; j < 20000; j++) s += j % 7; printf "%d %d\\n", i, s; fflush() } }'
    out = tmp_path / "out.txt"
    status, _ = run_away(["awk", program], tmp_path, out, after_lines=10)
    assert status == 0
    assert out.read_bytes() == native_output(["awk", program], tmp_path, dict(os.environ))
