"""Unmodified programs moved mid-run between real mosd nodes — out, home, out again — must
behave exactly as natively: perl, gzip, bzip2, sort, a shell pipeline (its CPU-bound
middle stage moved), a C program with live SSE/AVX/x87 state and a signal handler, and
python3 reading lines on a terminal (and dying of its ^C). Each program runs three times
with the same input: natively, under mosrun left at home, and under mosrun moved at least
twice while it runs; stdout, stderr, exit status and any file it writes must be
byte-identical in all three. Every move waits for fresh progress first and checks the
process is still running, so each move lands mid-run."""

from __future__ import annotations

import os
import pty
import random
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers.migration import AWK, guests
from tests.helpers.programs import BIN, lines, wait_until

pytestmark = pytest.mark.cluster

PROGRAMS = Path(__file__).parent.parent / "linux" / "programs"


def rows(nodes) -> list[dict]:
    """Node 1's own processes (not guests)."""
    return [p for p in nodes.client(1).call("processes")["processes"] if not p.get("home")]


def row_of(nodes, pid: int) -> dict | None:
    return next((p for p in rows(nodes) if p["pid"] == pid), None)


def alive(pid: int) -> bool:
    """Running (not ended, not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def read_position(pid: int, name: str) -> int:
    """The offset of ``pid``'s descriptor open on a file called ``name`` (0 if none): a
    process away reads through its descriptors at home, so this shows its progress."""
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if os.readlink(f"/proc/{pid}/fd/{fd}").endswith("/" + name):
                return int(Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def random_text(seed: int, count: int, alphabet: bytes) -> bytes:
    """``count`` pseudo-random bytes drawn from ``alphabet`` (repeat a byte to weigh it)."""
    table = bytes(alphabet[i % len(alphabet)] for i in range(256))
    return random.Random(seed).randbytes(count).translate(table)


class Runs:
    """One program run natively and under mosrun, each in a directory of its own, on node 1
    of a 3-node cluster; every run's stdout and stderr kept in files."""

    def __init__(self, nodes, spawn, tmp_path: Path) -> None:
        self.cluster, self.spawn, self.tmp = nodes, spawn, tmp_path
        self.env = {**nodes.env(1), "LANG": "C.UTF-8", "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        self.env.pop("LC_ALL", None)

    def dir(self, name: str, files: dict[str, Path] | None = None) -> Path:
        """A directory for run ``name``, with copies of ``files`` (content, mode and times)."""
        path = self.tmp / name
        path.mkdir(exist_ok=True)
        for target, source in (files or {}).items():
            shutil.copy2(source, path / target)
        return path

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        mosix: bool = True,
        stdin=subprocess.DEVNULL,
        files: dict[str, Path] | None = None,
    ) -> subprocess.Popen:
        where = self.dir(name, files)
        with open(where / "stdout", "wb") as out, open(where / "stderr", "wb") as err:
            proc = self.spawn(
                *(["mosrun"] if mosix else []), *argv, env=self.env, cwd=where, stdin=stdin, stdout=out, stderr=err
            )
        proc.dir = where
        return proc

    @staticmethod
    def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, bytes, bytes]:
        status = proc.wait(timeout=timeout)
        return status, (proc.dir / "stdout").read_bytes(), (proc.dir / "stderr").read_bytes()

    def run(
        self,
        name: str,
        argv: list[str],
        *,
        mosix: bool = True,
        stdin=subprocess.DEVNULL,
        files: dict[str, Path] | None = None,
    ) -> tuple[int, bytes, bytes]:
        return self.finish(self.start(name, argv, mosix=mosix, stdin=stdin, files=files))

    def pid_of(self, command: str) -> int:
        """The pid of the MOSIX process (a row of node 1's table) whose command starts with ``command``."""
        return wait_until(
            lambda: next((r["pid"] for r in rows(self.cluster) if r["command"].startswith(command)), None),
            timeout=20,
            what=f"the row of {command!r}",
        )

    def registered(self, proc: subprocess.Popen) -> int:
        """mosrun becomes the program (same pid; its supervisor is not its child): its row."""
        wait_until(lambda: row_of(self.cluster, proc.pid), timeout=20, what=f"the row of {proc.pid}")
        return proc.pid

    def where(self, to: str) -> str:
        return "here" if to == "home" else self.cluster.ip(int(to))

    def request(self, pid: int, to: str) -> None:
        """``mosmigrate pid to``, to a process that is still running (mosmigrate waits
        for the move's outcome)."""
        assert alive(pid), f"{pid} ended before its move to {to}"
        done = self.cluster.run(1, "mosmigrate", str(pid), to)
        assert done.returncode == 0, done.stderr

    def request_meanwhile(self, pid: int, to: str) -> subprocess.Popen:
        """:meth:`request`, running while the caller watches the move."""
        assert alive(pid), f"{pid} ended before its move to {to}"
        return subprocess.Popen(
            [str(BIN / "mosmigrate"), str(pid), to], env=self.cluster.env(1), stderr=subprocess.PIPE
        )

    def arrived(self, pid: int, to: str) -> None:
        expected = self.where(to)
        wait_until(
            lambda: (r := row_of(self.cluster, pid)) is not None and r["where"] == expected,
            timeout=20,
            what=f"{pid}: WHERE = {expected}",
        )
        if to != "home":
            assert [g["origpid"] for g in guests(self.cluster, int(to))] == [pid]

    def tour(self, pid: int, progress, steps=("2", "home", "3")) -> dict:
        """Move ``pid`` along ``steps``, each move once ``progress()`` grew since the last."""
        for to in steps:
            before = progress()
            wait_until(lambda: progress() > before, timeout=20, what=f"progress before the move to {to}")
            self.request(pid, to)
            self.arrived(pid, to)
        after = progress()
        wait_until(lambda: progress() > after, timeout=20, what="progress after the last move")
        assert alive(pid), "the program ended before the last move was over"
        return row_of(self.cluster, pid)


@pytest.fixture
def runs(local_cluster, spawn, tmp_path):
    return Runs(local_cluster(nodes=3, interval=0.2), spawn, tmp_path)


# --- 1. perl -----------------------------------------------------------------------------------

PERL = r"""
$| = 1;
my ($x, $s, %seen) = (7, "", ());
for my $i (1 .. $ARGV[0]) {
    for my $j (1 .. 60000) { $x = ($x * 1103515245 + 12345 + $j) % 2147483648; }
    $s = substr($s . chr(97 + ($x >> 16) % 26), -40);
    $seen{$x % 97}++;
    printf "%d %d %s %d %.9f\n", $i, $x, $s, scalar(keys %seen), sqrt($x) / ($i + 1);
}
print STDERR "done ", length($s), "\n";
exit 5;
"""


def test_perl_cpu_loop_printing_progressively(runs):
    argv = ["perl", "-e", PERL, "1000"]
    native = runs.run("native", argv, mosix=False)
    assert native[0] == 5 and native[1].count(b"\n") == 1000 and native[2] == b"done 40\n"
    assert runs.run("plain", argv) == native
    proc = runs.start("moved", argv)
    pid = runs.registered(proc)
    assert runs.tour(pid, lambda: lines(proc.dir / "stdout"))["nmigs"] == 3
    assert runs.finish(proc) == native


# --- 2. gzip -9 and bzip2 ----------------------------------------------------------------------

COMPRESSORS = {
    # gzip -9 is slow on a small alphabet (long hash chains); it names the file and its
    # mtime in its header, hence copies with the same times. bzip2 -k writes in.txt.bz2
    # beside its input and gives it the input's mode and times.
    "gzip": (["gzip", "-9", "-c", "in.txt"], b"abcd" * 4 + b"\n", 3_000_000, "stdout"),
    "bzip2": (["bzip2", "-9", "-k", "in.txt"], b"etaoinshrdlu \n", 24_000_000, "in.txt.bz2"),
}


@pytest.mark.parametrize("tool", COMPRESSORS)
def test_compressor_output_is_the_native_one(runs, tool):
    argv, alphabet, count, output = COMPRESSORS[tool]
    data = runs.tmp / "in.txt"
    data.write_bytes(random_text(11, count, alphabet))
    os.utime(data, (1_700_000_000, 1_700_000_000))
    results = {}
    for name, mosix in (("native", False), ("plain", True)):
        results[name] = runs.run(name, argv, mosix=mosix, files={"in.txt": data})
    proc = runs.start("moved", argv, files={"in.txt": data})
    pid = runs.registered(proc)
    assert runs.tour(pid, lambda: read_position(pid, "in.txt") + size(proc.dir / output))["nmigs"] == 3
    results["moved"] = runs.finish(proc)
    native = results["native"]
    assert native[0] == 0 and native[2] == b""
    compressed = {name: (runs.tmp / name / output).read_bytes() for name in results}
    assert len(compressed["native"]) < count // 2
    assert results["plain"] == native and compressed["plain"] == compressed["native"]
    assert results["moved"] == native and compressed["moved"] == compressed["native"]
    if output != "stdout":
        made = [(runs.tmp / name / output).stat() for name in results]
        assert {(s.st_mode, s.st_mtime_ns) for s in made} == {(made[0].st_mode, 1_700_000_000 * 10**9)}


# --- 3. sort --parallel=1 ----------------------------------------------------------------------


def test_sort_of_tens_of_megabytes(runs):
    """sort reads a 24 MB file, then 12 MB more from its stdin, a pipe the test fills in
    pieces: each move is asked for while sort holds part of the data (and is reading or
    blocked reading the pipe at home; a blocked call ends before the move), and the next
    piece lets it go. It sorts and writes everything away, after the third move."""
    text = random_text(5, 36_000_000, b"etaoinshrdlucmfwypvbgkjqxz" * 2 + b"    \n")
    (runs.tmp / "big.txt").write_bytes(text[:24_000_000])
    (runs.tmp / "rest.txt").write_bytes(text[24_000_000:])
    argv = ["sort", "--parallel=1", "-S", "1G", "../big.txt", "-"]
    results = {}
    for name, mosix in (("native", False), ("plain", True)):
        with open(runs.tmp / "rest.txt", "rb") as rest:
            results[name] = runs.run(name, argv, mosix=mosix, stdin=rest)
    reader, writer = os.pipe()
    try:
        proc = runs.start("moved", argv, stdin=reader)
        os.close(reader)
        pid = runs.registered(proc)
        rest = text[24_000_000:]
        pieces = [rest[k * 1_500_000 : (k + 1) * 1_500_000] for k in range(8)]
        moves = {2: "2", 4: "home", 6: "3"}
        for k, piece in enumerate(pieces):
            if k in moves:
                runs.request(pid, moves[k])
            os.write(writer, piece)
            if k in moves:
                runs.arrived(pid, moves[k])
                assert size(proc.dir / "stdout") == 0  # it has not even started writing
    finally:
        os.close(writer)
    assert row_of(runs.cluster, pid)["nmigs"] == 3
    results["moved"] = runs.finish(proc)
    native = results["native"]
    assert native[0] == 0 and native[2] == b"" and len(text) <= len(native[1]) <= len(text) + 2
    assert results["plain"] == native
    assert results["moved"] == native


# --- 4. a shell pipeline -----------------------------------------------------------------------

PIPELINE = (
    "seq 1 400 | awk '{ for (j = 0; j < 150000; j++) s += j % 7; "
    'printf "%d %d %x\\n", $1, s, s * $1; fflush() } END { print NR, s > "/dev/stderr" }\' '
    '| cat; echo "pipeline $?"; exit 4'
)


def test_the_middle_stage_of_a_shell_pipeline_moves(runs):
    argv = ["sh", "-c", PIPELINE]
    native = runs.run("native", argv, mosix=False)
    assert native[0] == 4 and native[1].count(b"\n") == 401 and native[2].startswith(b"400 ")
    assert runs.run("plain", argv) == native
    proc = runs.start("moved", argv)
    runs.registered(proc)
    awk = runs.pid_of("awk")
    runs.pid_of("cat")  # every stage is a MOSIX process (cat may register after awk)
    assert {r["command"].split()[0] for r in rows(runs.cluster)} >= {"sh", "awk", "cat"}
    assert runs.tour(awk, lambda: lines(proc.dir / "stdout"))["nmigs"] == 3
    assert {r["where"] for r in rows(runs.cluster) if r["pid"] != awk} == {"here"}  # sh and cat stayed
    assert runs.finish(proc) == native


# --- 5. C: SSE/AVX and x87 state, a signal handler ---------------------------------------------


@pytest.fixture(scope="session")
def ckpt_fpu() -> Path:
    """tests/linux/programs/ckpt_fpu.c, built as the `programs` fixture of tests/linux does
    (which tests/cluster cannot reach) — but in a directory of /tmp that anyone may search,
    not under pytest's private basetemp: see test_a_program_in_a_private_directory_moves."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the test programs (scripts/install.sh installs it)")
    out = Path(tempfile.mkdtemp(prefix="mosix-programs-"))
    os.chmod(out, 0o755)
    try:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out / "ckpt_fpu"), str(PROGRAMS / "ckpt_fpu.c")], check=True)
        yield out / "ckpt_fpu"
    finally:
        shutil.rmtree(out)


def pending(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    masks = [int(line.split()[1], 16) for line in status if line.startswith(("SigPnd:", "ShdPnd:"))]
    return masks[0] | masks[1]


def test_c_program_with_fp_registers_and_a_signal_handler(runs, ckpt_fpu):
    """ckpt_fpu keeps vectors (ymm with AVX) and an x87 long double in registers across each
    nanosleep, rounds toward zero (MXCSR) and upward (x87), and every 3rd step sends itself
    SIGUSR1 — a kill made at home that must reach its handler wherever it runs. SIGUSR2,
    blocked, sent by the test at home while it is away, must stay pending through the
    moves, as natively."""
    argv = [str(ckpt_fpu), "160", "15"]
    native = runs.run("native", argv, mosix=False)
    assert native[0] == 0 and native[1].count(b"\n") == 161 and b"handled=53" in native[1]
    assert b"mxcsr=0x7f80" in native[1] and b"usr2-blocked=yes" in native[1]
    assert runs.run("plain", argv) == native
    proc = runs.start("moved", argv)
    pid = runs.registered(proc)
    progress = lambda: lines(proc.dir / "stdout")  # noqa: E731
    runs.tour(pid, progress, steps=("2",))
    os.kill(pid, signal.SIGUSR2)
    runs.tour(pid, progress, steps=("home",))
    assert pending(pid) & (1 << (signal.SIGUSR2 - 1)), "the blocked SIGUSR2 is no longer pending at home"
    assert runs.tour(pid, progress, steps=("3",))["nmigs"] == 3
    assert runs.finish(proc) == native


# --- 5b. an interval timer ----------------------------------------------------------------------

TIMER = r"""
use Time::HiRes qw(setitimer ITIMER_REAL);
$| = 1;
my ($ticks, $x) = (0, 1);
$SIG{ALRM} = sub { $ticks++ };
my $go = <STDIN>;                                  # the timer starts once a line comes
setitimer(ITIMER_REAL, 0.05, 0.05);
for my $k (1 .. $ARGV[0]) {
    select(undef, undef, undef, 1) while $ticks < $k;
    for (1 .. 20000) { $x = ($x * 69069 + 1) % 4294967296 }
    print "tick $k $x\n";
}
setitimer(ITIMER_REAL, 0);
$SIG{ALRM} = 'DEFAULT';                            # a tick now would kill it
select(undef, undef, undef, 0.5);
print "done\n";
"""


@pytest.mark.parametrize("started", ["away", "at home"])
def test_an_interval_timer_moves_with_the_process(runs, started):
    """perl ticks on a 50 ms ITIMER_REAL (started once a line comes on its stdin), then
    stops it and restores SIGALRM's default action for its last half second."""
    argv = ["perl", "-e", TIMER, "60"]
    with open(runs.tmp / "go", "wb") as go:
        go.write(b"go\n")
    with open(runs.tmp / "go", "rb") as go:
        native = runs.run("native", argv, mosix=False, stdin=go)
    assert native[0] == 0 and native[1].count(b"\n") == 61 and native[1].endswith(b"done\n")
    reader, writer = os.pipe()
    try:
        proc = runs.start("moved", argv, stdin=reader)
        os.close(reader)
        pid = runs.registered(proc)
        progress = lambda: lines(proc.dir / "stdout")  # noqa: E731
        if started == "away":
            runs.request(pid, "2")
        os.write(writer, b"go\n")
        if started == "away":
            runs.arrived(pid, "2")
            steps = ("home", "3")
        else:
            steps = ("2",)
        for to in steps:
            before = progress()
            wait_until(lambda: progress() > before + 2, timeout=5, what=f"ticks before the move to {to}")
            runs.request(pid, to)
            runs.arrived(pid, to)
        after = progress()
        wait_until(lambda: progress() > after or not alive(pid), timeout=5, what="ticks after the last move")
    finally:
        os.close(writer)
    assert runs.finish(proc, timeout=10) == native


# --- 6. an interactive program on a terminal ---------------------------------------------------

INTERACTIVE = """\
import math
total = 0
try:
    while True:
        line = input("> ")
        n = int(line)
        total += sum(i * i for i in range(n * 1000))
        print(n, total % 1000003, f"{math.sqrt(total):.6f}", line[::-1], flush=True)
except KeyboardInterrupt:
    print("interrupted at", total % 97, flush=True)
    raise
"""


def reading_stdin(pid: int) -> bool:
    """In read(0, ...) — natively, or (away) its home shell, in the read made for it."""
    try:
        return Path(f"/proc/{pid}/syscall").read_text().startswith("0 0x0 ")
    except (FileNotFoundError, ProcessLookupError):
        return False


class Terminal:
    """A program in a new session whose controlling terminal is a pty we hold the master of."""

    def __init__(self, argv: list[str], env: dict, cwd: Path) -> None:
        pid, self.master = pty.fork()
        if pid == 0:  # the child: session leader, pty as its tty
            try:
                os.chdir(cwd)
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.seen = pid, b""

    def read_until(self, ending: bytes, timeout: float = 20) -> None:
        """Read until what the terminal shows next ends with ``ending``."""
        deadline, start = time.monotonic() + timeout, len(self.seen)
        while not self.seen[start:].endswith(ending):
            if not select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise AssertionError(f"timed out waiting for {ending!r}; the terminal shows {self.seen!r}")
            try:
                self.seen += os.read(self.master, 4096)
            except OSError:  # EIO: the program is gone
                raise AssertionError(f"the terminal closed; it showed {self.seen!r}") from None

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def end(self, timeout: float = 20) -> int:
        """Read the terminal to its end; the program's wait status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and select.select([self.master], [], [], deadline - time.monotonic())[0]:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                break
            if not chunk:
                break
            self.seen += chunk
        os.close(self.master)
        return os.waitpid(self.pid, 0)[1]


def test_python_reading_lines_on_a_terminal_and_its_ctrl_c(runs):
    """Each move is asked for while python waits in its read of the terminal (made at home);
    the next line typed ends the read, and it moves. The ^C, typed while it is away and
    blocked reading the terminal, interrupts that read: its handler prints, and python
    re-raises and dies of SIGINT."""
    numbers = [b"7", b"12", b"31", b"5", b"18"]
    moves = {1: "2", 2: "home", 3: "3"}

    def session(name: str, mosix: bool, move: bool = False) -> tuple[int, bytes]:
        argv = (["mosrun"] if mosix else []) + ["/usr/bin/python3", "-c", INTERACTIVE]
        term = Terminal(argv, runs.env, runs.dir(name))
        try:
            term.read_until(b"> ")
            if move:
                assert row_of(runs.cluster, term.pid)["where"] == "here"
            for k, number in enumerate(numbers):
                if move and k in moves:
                    runs.request(term.pid, moves[k])
                term.type(number + b"\n")
                term.read_until(b"> ")
                if move and k in moves:
                    runs.arrived(term.pid, moves[k])
            # a ^C just before the read would only be seen once the read returns (natively too)
            wait_until(lambda: reading_stdin(term.pid), timeout=10, what="python's read of the terminal")
            if move:
                assert row_of(runs.cluster, term.pid)["nmigs"] == 3
                assert alive(term.pid) and row_of(runs.cluster, term.pid)["where"] == runs.where("3")
            term.type(b"\x03")
        finally:
            status = term.end()
        return status, term.seen

    native = session("native", mosix=False)
    assert os.WIFSIGNALED(native[0]) and os.WTERMSIG(native[0]) == signal.SIGINT, native
    assert native[1].count(b"> ") == 6 and b"^C" in native[1] and b"interrupted at" in native[1]
    assert native[1].endswith(b"KeyboardInterrupt\r\n")
    assert session("plain", mosix=True) == native
    assert session("moved", mosix=True, move=True) == native


# --- a program where the guest host may not look ----------------------------------------------


def test_a_program_in_a_private_directory_moves(runs):
    """A user's own program in a directory only its owner may search (pytest's basetemp, a
    home directory) moves and runs on as from anywhere else: the target needs none of its
    files, which stay at home."""
    private = runs.tmp / "private"
    private.mkdir(mode=0o700)
    shutil.copy2(os.path.realpath(shutil.which("awk")), private / "awk")
    argv = [str(private / "awk"), AWK % 150]
    native = runs.run("native", argv, mosix=False)
    proc = runs.start("moved", argv)
    pid = runs.registered(proc)
    wait_until(lambda: lines(proc.dir / "stdout") >= 5, what="5 lines")
    runs.request(pid, "2")
    wait_until(
        lambda: (
            b"failed migrating" in (proc.dir / "stderr").read_bytes()
            or row_of(runs.cluster, pid)["where"] == runs.where("2")
        ),
        what="the move or its failure",
    )
    assert (proc.dir / "stderr").read_bytes() == b""
    assert runs.finish(proc) == native


# --- 10. a large process, its memory sent ahead while it runs -----------------------------------

WRITER = r"""
import mmap, sys, zlib
size = 128 << 20
pages = size // 4096
memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for page in range(0, pages, 7):
    memory[page * 4096:page * 4096 + 8] = page.to_bytes(8, "little")
x, spare = 12345, None
for step in range(int(sys.argv[1])):
    for _ in range(32):
        x = (x * 1103515245 + 12345) % 2147483648
        at = (x % pages) * 4096 + (x >> 20) % 4000
        memory[at:at + 8] = x.to_bytes(8, "little")
    if step % 16 == 0:     # memory made and dropped (madvise is refused under mosrun)
        if spare is not None:
            spare.close()
        spare = mmap.mmap(-1, 1 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        spare[::4096] = bytes([step % 251]) * 256
    print(step, x, zlib.crc32(memory[(x % 4096) * 4096:(x % 4096) * 4096 + (1 << 18)]), flush=True)
print("all", zlib.crc32(memory), flush=True)
"""


def test_a_large_process_runs_on_while_its_memory_goes_ahead(runs):
    """128 MiB of anonymous memory that the program keeps writing, and more it maps and
    unmaps: moved
    out, it runs on while its memory goes (its row says "leaving" while its output
    grows), then stops for what it wrote meanwhile. Home and out again, its output is
    the native one, to the checksum of all its memory at the end."""
    argv = ["/usr/bin/python3", "-c", WRITER, "50000"]
    native = runs.run("native", argv, mosix=False)
    assert native[0] == 0 and native[1].count(b"\n") == 50001 and native[2] == b""
    proc = runs.start("moved", argv)
    pid = runs.registered(proc)
    grew_while_leaving = []
    for to in ("2", "home", "2"):
        before = lines(proc.dir / "stdout")
        wait_until(lambda: lines(proc.dir / "stdout") > before + 20, what=f"progress before the move to {to}")
        mover = runs.request_meanwhile(pid, to)
        seen_leaving = None
        while (row := row_of(runs.cluster, pid)) is not None and row["where"] != runs.where(to):
            if row["where"] == "leaving":
                now = lines(proc.dir / "stdout")
                seen_leaving = now if seen_leaving is None else seen_leaving
                if now > seen_leaving:
                    grew_while_leaving.append(to)
                    seen_leaving = float("inf")
            time.sleep(0.002)
        assert mover.wait(timeout=120) == 0, mover.stderr.read()
        runs.arrived(pid, to)
    assert alive(pid), "the program ended before the last move was over"
    assert "2" in grew_while_leaving
    # its 50,000 lines away are 50,000 forwarded writes: on a busy machine (both ends of each
    # call wait for a CPU) that is minutes, not the seconds it takes on an idle one
    assert runs.finish(proc, timeout=600) == native
