"""A process moved into another process — the guest — while its home half, the shell
its memory left, performs its calls: the engine migration is made of, on one machine
and without the network (the deputy answers the guest directly). The program must
print exactly what a native run prints, end at home with its exit status, and keep
its pid and parent."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
from pathlib import Path

from mosix_core.errors import TraceError
from mosix_core.image import stub
from mosix_core.image.stream import ImageReader, ImageWriter
from mosix_core.linux import ptrace
from mosix_core.linux.syscall_names import NUMBERS
from mosix_core.remote.calls import Reply
from mosix_core.remote.deputy import Deputy
from mosix_core.remote.frames import Channel
from mosix_core.remote.guest import Guest
from mosix_core.remote.link import forwarder, serve
from mosix_core.remote.moving import arrive, leave
from tests.helpers.guest import GUEST_OPTIONS, end_link, stop_traced
from tests.helpers.programs import lines, native_output, wait_until

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
        image = io.BytesIO()
        shell, _ = leave(pid, ImageWriter(image), stop_traced(pid), {"pid": pid})  # what stays home
        deputy = Deputy(pid, shell)
        guest_pid = stub.spawn_traced(GUEST_OPTIONS)
        image.seek(0)
        arrive(guest_pid, ImageReader(image, streaming=True))

        def forward(request):
            if request.nr == NUMBERS["exit_group"]:
                try:
                    deputy.call(request)
                except TraceError:
                    pass  # the home process has ended
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
    assert guest.forwarded > 100  # its writes, getpid, getcwd... went home
    away_result = (tmp_path / "result.txt").read_text()  # written at home, by a relative path
    native = subprocess.run(["/usr/bin/python3", str(script), "120"], cwd=tmp_path, capture_output=True, timeout=60)
    assert native.returncode == 3
    assert out.read_bytes() == native.stdout
    assert b"False" not in out.read_bytes()  # the same pid and parent throughout
    assert away_result == (tmp_path / "result.txt").read_text()


def test_awk_moved_into_a_guest(tmp_path):
    program = 'BEGIN { for (i = 0; i < 150; i++) { for (j = 0; j < 20000; j++) s += j % 7; printf "%d %d\\n", i, s; fflush() } }'
    out = tmp_path / "out.txt"
    status, _ = run_away(["awk", program], tmp_path, out, after_lines=10)
    assert status == 0
    assert out.read_bytes() == native_output(["awk", program], tmp_path, dict(os.environ))


def test_the_guest_and_its_home_in_two_processes_over_a_socket(tmp_path):
    """The guest host is another process (as on another node): calls and replies
    cross a socket as frames, a signal sent to the home process reaches the guest."""
    script = tmp_path / "loop.py"
    script.write_text(
        LOOP.replace(
            "import os, select, sys\n",
            "import os, select, signal, sys\nsignal.signal(signal.SIGUSR1, lambda *_: print('usr1', flush=True))\n",
        )
    )
    out = tmp_path / "out.txt"
    with open(out, "wb") as stdout:
        proc = subprocess.Popen(
            ["/usr/bin/python3", str(script), "150"],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.DEVNULL,
        )
    pid = proc.pid
    home_end, guest_end = socket.socketpair()
    host = None
    try:
        ptrace.seize(pid, ptrace.O_TRACESYSGOOD | ptrace.O_EXITKILL)
        wait_until(lambda: lines(out) >= 10, what="10 lines")
        image = io.BytesIO()
        shell, _ = leave(pid, ImageWriter(image), stop_traced(pid), {"pid": pid})
        host = os.fork()
        if host == 0:  # pragma: no cover - the guest host
            code = 1
            try:
                home_end.close()
                channel = Channel(guest_end)
                guest_pid = stub.spawn_traced(GUEST_OPTIONS)
                image.seek(0)
                arrive(guest_pid, ImageReader(image, streaming=True))
                guest = Guest(guest_pid, None)
                guest.forward = forwarder(channel, guest)
                code = 0 if guest.run() == 3 else 2
            finally:
                os._exit(code)
        guest_end.close()
        deputy = Deputy(pid, shell)
        served = []

        def count(request) -> None:
            served.append(request)
            if len(served) == 60:
                os.kill(pid, signal.SIGUSR1)  # to the home process: the guest's handler runs

        serve(deputy, Channel(home_end), before_call=count)
        assert deputy.ended.kind == "exited" and deputy.ended.code == 3
        proc.returncode = 3
        _, status = os.waitpid(host, 0)
        host = None
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        end_link(home_end, proc, host)
    text = out.read_bytes()
    assert text.count(b"usr1\n") == 1
    native = subprocess.run(["/usr/bin/python3", str(script), "150"], cwd=tmp_path, capture_output=True, timeout=60)
    assert text.replace(b"usr1\n", b"") == native.stdout


BIG = """\
import os
data = bytes(range(256)) * (9 << 12)               # 9 MiB: more than one forwarded call carries
fd = os.open("big.bin", os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o644)
print("wrote", os.write(fd, data), flush=True)
os.lseek(fd, 0, 0)
got = b""
while chunk := os.read(fd, 9 << 20):
    got += chunk
print("read back", len(got), got == data, flush=True)
"""


def test_reads_and_writes_larger_than_one_forwarded_call(tmp_path):
    script = tmp_path / "big.py"
    script.write_text(
        "import select\nfor i in range(20):\n    print(i, flush=True)\n    select.select([], [], [], 0.01)\n" + BIG
    )
    out = tmp_path / "out.txt"
    status, guest = run_away(["/usr/bin/python3", str(script)], tmp_path, out, after_lines=5)
    assert status == 0
    assert out.read_bytes().endswith(b"wrote 9437184\nread back 9437184 True\n")
    assert (tmp_path / "big.bin").stat().st_size == 9 << 20
