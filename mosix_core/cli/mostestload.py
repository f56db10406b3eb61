"""mostestload — MOSIX test program: artificial CPU load, memory and I/O (mostestload(1)).

The work is done by :func:`run_load` on a :class:`~mosix_core.cli.loadspec.LoadSpec`
(what one run does, read from the options' values in :mod:`mosix_core.cli.loadspec`);
the typer command only parses the options (MOSIX spellings included: ``-t20``,
``-t10,20``, ``-l 10 -h 20``, ``-m100``, ``--write 32,640,1``), calls it and prints.

Definitions this implementation makes where the manual is silent:

* one *unit* of CPU work is :data:`UNIT_ITERATIONS` rounds of a small integer loop —
  about 10 ms of CPU on a 3 GHz machine;
* all times are CPU seconds of this process (user + system), as ``mostimeof`` counts them;
* ``--write`` truncates the file first; ``--read`` wraps to the start of the file at
  end-of-file; ``--maxiosize`` makes the I/O restart at offset 0 before it would pass
  SIZE megabytes, so a written file never grows beyond it;
* ``--cpu`` units run *between* chunks of system calls (not after the last one);
* ``--read``/``--write``/``--noiosyscall`` are alternatives (the manual's "OR"), and so
  are ``-d`` and ``-f``;
* a file given by ``-f`` is kept; a file created in ``/tmp`` (or ``-d``) is removed at exit.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import TextIO

import typer
from attrs import define

from mosix_core.cli.common import new_app, reports_errors, run
from mosix_core.cli.loadspec import DEFAULT_SECONDS, MB, IOSpec, LoadSpec, SpecError
from mosix_core.errors import MosixError

PROG = "mostestload"
PAGE = mmap.PAGESIZE
UNIT_ITERATIONS = 100_000  # one unit of CPU work: ~10 ms on a 3 GHz machine
TOUCH_WINDOW = 64 * MB  # memory re-touched after each unit / batch of calls
READ_PREFILL_MAX = 16 * MB  # data put in a temporary file before --read
WHEREAMI = "/proc/self/whereami"
SYSCALL_BATCH = 64  # system calls between two housekeeping ticks

DESCRIPTION = (
    "MOSIX test program: generate artificial load and consume memory for testing MOSIX.\n\n"
    f"One unit of CPU work (--cpu) is {UNIT_ITERATIONS:,} rounds of a small integer loop, "
    "about 10 ms of CPU on a 3 GHz machine. All times are CPU seconds (user + system) of this "
    "process, not wall-clock time.\n\n"
    "-h with a value is the maximum of a random run time (as in 'mostestload -l 10 -h 20'); "
    "a bare -h, like --help, shows this help.\n\n"
    "Examples: 'mostestload -t 20' (20 CPU seconds); 'mostestload -l 10 -h 20' (random, 10 to 20); "
    "'mostestload -f /tmp/20MB --write 32,640,1' (write 640 x 32 KB once); "
    "'mostestload -f /tmp/10MB --write 32,640 --maxiosize 10 --cpu=20' (forever, 20 units between "
    "chunks, the file never grows beyond 10 MB)."
)
app = new_app(DESCRIPTION)


class LoadError(MosixError):
    """An I/O or memory failure while generating load (exit status 1)."""


# --------------------------------------------------------------------------- results


def where_text(where: int) -> str:
    """What ``/proc/self/whereami`` returned, for people: 0 is home, larger than 65535 an IP."""
    where &= 0xFFFFFFFF
    if where == 0:
        return "home"
    if where > 65535:
        return str(IPv4Address(where & 0xFFFFFFFF))
    return f"node {where}"


@define
class Summary:
    """What a run did (``-r`` prints it)."""

    seconds_limit: float = 0.0
    cpu_seconds: float = 0.0
    units: int = 0
    memory_mb: int = 0
    bytes_read: int = 0
    read_calls: int = 0
    bytes_written: int = 0
    write_calls: int = 0
    other_calls: int = 0
    chunks: int = 0
    migrations: int = 0
    ended_by: str = ""  # "time", "cpu", "repeats" or the name of a signal

    def lines(self) -> list[str]:
        limit = "indefinitely" if self.seconds_limit == 0 else f"{self.seconds_limit:.2f} seconds"
        return [
            f"{PROG}: summary (ended by {self.ended_by})",
            f"  CPU time:           {self.cpu_seconds:.2f} seconds (limit: {limit})",
            f"  CPU units:          {self.units}",
            f"  memory:             {self.memory_mb} MB",
            f"  read:               {self.bytes_read} bytes in {self.read_calls} calls",
            f"  written:            {self.bytes_written} bytes in {self.write_calls} calls",
            f"  other system calls: {self.other_calls}",
            f"  chunks:             {self.chunks}",
            f"  migrations:         {self.migrations}",
        ]


# --------------------------------------------------------------------------- the work


def cpu_unit(iterations: int = UNIT_ITERATIONS) -> int:
    """One unit of CPU work."""
    x = 1
    for _ in range(iterations):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    return x


_libc = ctypes.CDLL(None, use_errno=True)
_libc.open.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.open.restype = ctypes.c_int


def read_whereami() -> int | None:
    """The MOSIX programming interface: under mosrun, ``open("/proc/self/whereami", O_RDONLY)``
    returns where the process runs (0 = home); elsewhere the file does not exist (None).

    libc's ``open`` rather than ``os.open``: an IP address of 128.0.0.0 or above comes back
    as a negative int, which ``os.open`` would take for a failure; only -1 is one."""
    result = _libc.open(WHEREAMI.encode(), os.O_RDONLY)
    return None if result == -1 else result & 0xFFFFFFFF


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Load:
    """The state of one run."""

    def __init__(
        self,
        spec: LoadSpec,
        out: TextIO,
        err: TextIO,
        whereami: Callable[[], int | None],
        poll_interval: float,
        rng: random.Random,
    ) -> None:
        self.spec = spec
        self.out = out
        self.err = err
        self.whereami = whereami
        self.poll_interval = poll_interval
        self.rng = rng
        self.summary = Summary(memory_mb=spec.mem_mb)
        self.base = 0.0
        self.seconds = 0.0
        self.mem: bytearray | None = None
        self.touch_at = 0
        self.where: int | None = None
        self.polling = spec.report_migrations
        self.last_poll = 0.0
        self.last_progress = 0.0
        self.fd = -1
        self.path: Path | None = None
        self.temporary = False
        self.offset = 0
        self.file_size = 0
        self.limit = int(spec.maxiosize_mb * MB) if spec.maxiosize_mb else 0
        self.buffer = b""

    # ---- output

    def debug(self, message: str) -> None:
        if self.spec.verbose:
            print(f"{PROG}: {message}", file=self.err, flush=True)

    def say(self, message: str) -> None:
        print(f"{PROG}: {message}", file=self.out, flush=True)

    # ---- time

    def used(self) -> float:
        return time.process_time() - self.base

    def expired(self) -> bool:
        return self.seconds > 0 and self.used() >= self.seconds

    # ---- memory

    def allocate(self) -> None:
        if not self.spec.mem_mb:
            return
        size = self.spec.mem_mb * MB
        try:
            if self.spec.random_mem:
                self.mem = bytearray(size)
                for start in range(0, size, MB):
                    self.mem[start : start + MB] = os.urandom(min(MB, size - start))
            else:
                self.mem = bytearray(b"\xa5") * size
        except MemoryError:
            self.mem = None
            raise LoadError(f"cannot allocate {self.spec.mem_mb} MB of memory") from None
        self.debug(
            f"allocated {self.spec.mem_mb} MB of memory, filled with "
            f"{'a random pattern' if self.spec.random_mem else 'the byte 0xa5'}"
        )

    def touch(self) -> None:
        """Rewrite one byte of every page of the next window, so the memory stays resident
        (and dirty) while we run; the pattern is kept."""
        if self.mem is None:
            return
        size = len(self.mem)
        start = self.touch_at
        end = min(start + TOUCH_WINDOW, size)
        self.mem[start:end:PAGE] = self.mem[start:end:PAGE]
        self.touch_at = 0 if end >= size else end

    # ---- migrations

    def poll(self, now: float | None = None) -> None:
        if not self.polling:
            return
        now = time.monotonic() if now is None else now
        if self.where is not None and now - self.last_poll < self.poll_interval:
            return
        self.last_poll = now
        where = self.whereami()
        if where is None:
            self.polling = False
            self.debug("not running under mosrun: no migrations to report")
            return
        if self.where is None:
            self.debug(f"running at {where_text(where)}")
        elif where != self.where:
            self.summary.migrations += 1
            self.say("migrated back home" if where == 0 else f"migrated to {where_text(where)}")
        self.where = where

    # ---- housekeeping between units and batches of calls

    def tick(self) -> None:
        self.touch()
        self.poll()
        if self.spec.verbose:
            now = time.monotonic()
            if now - self.last_progress >= 1.0:
                self.last_progress = now
                s = self.summary
                self.debug(
                    f"progress: {self.used():.2f} CPU seconds, {s.units} units, {s.chunks} chunks, "
                    f"{s.bytes_read} bytes read, {s.bytes_written} bytes written, "
                    f"{s.other_calls} other system calls"
                )

    def units(self, count: int | None) -> bool:
        """Run ``count`` units (None: until the time is up); False once the time is up."""
        done = 0
        while count is None or done < count:
            if self.expired():
                return False
            cpu_unit()
            done += 1
            self.summary.units += 1
            self.tick()
        return not self.expired()

    # ---- files

    def open_file(self) -> None:
        spec = self.spec
        if spec.noio is not None or spec.io is None:
            if spec.file is not None or spec.directory is not None:
                self.debug("-d/-f ignored: no --read or --write")
            return
        assert spec.io is not None
        self.buffer = os.urandom(spec.io.size)
        if spec.file is not None:
            self.path = spec.file
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC if spec.write else os.O_RDONLY
            try:
                self.fd = os.open(spec.file, flags, 0o644)
            except OSError as err:
                raise LoadError(f"{spec.file}: cannot open: {err.strerror}") from None
            if spec.read and os.fstat(self.fd).st_size == 0:
                raise LoadError(f"{spec.file}: the file is empty: nothing to read")
        else:
            directory = spec.directory or Path("/tmp")
            try:
                fd, name = tempfile.mkstemp(prefix=f"{PROG}.", dir=directory)
            except OSError as err:
                raise LoadError(f"{directory}: cannot create a file: {err.strerror}") from None
            self.fd, self.path, self.temporary = fd, Path(name), True
            if spec.read:
                self.prefill(spec.read)
        self.file_size = os.fstat(self.fd).st_size
        self.debug(
            f"{'reading' if spec.read else 'writing'} {self.path}"
            f"{' (temporary)' if self.temporary else ''}"
            f"{f', wrapping at {self.limit} bytes' if self.limit else ''}"
        )

    def prefill(self, io: IOSpec) -> None:
        """Something to read in a fresh temporary file."""
        amount = min(max(io.size * io.ncalls, io.size), READ_PREFILL_MAX)
        if self.limit:
            amount = min(amount, self.limit)
        block = os.urandom(min(MB, amount))
        try:
            written = 0
            while written < amount:
                written += os.write(self.fd, block[: amount - written])
            os.lseek(self.fd, 0, os.SEEK_SET)
        except OSError as err:
            raise LoadError(f"{self.path}: cannot write: {err.strerror}") from None
        self.debug(f"put {amount} bytes in {self.path} to read")

    def close_file(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
        if self.temporary and self.path is not None:
            try:
                self.path.unlink()
            except OSError:
                pass

    # ---- system calls

    def rewind_before(self, length: int) -> None:
        if self.limit and self.offset > 0 and self.offset + length > self.limit:
            os.lseek(self.fd, 0, os.SEEK_SET)
            self.offset = 0

    def write_call(self) -> None:
        length = min(len(self.buffer), self.limit) if self.limit else len(self.buffer)
        try:
            self.rewind_before(length)
            n = os.write(self.fd, memoryview(self.buffer)[:length])
        except OSError as err:
            raise LoadError(f"{self.path}: cannot write: {err.strerror}") from None
        self.offset += n
        self.summary.write_calls += 1
        self.summary.bytes_written += n

    def read_call(self) -> None:
        size = len(self.buffer)
        try:
            self.rewind_before(size)
            if self.offset > 0 and self.offset >= self.file_size:  # known end of file: start again
                os.lseek(self.fd, 0, os.SEEK_SET)
                self.offset = 0
            n = len(os.read(self.fd, size))
            if n == 0:  # the file shrank: start again
                if self.offset == 0:
                    raise LoadError(f"{self.path}: the file is empty: nothing to read")
                os.lseek(self.fd, 0, os.SEEK_SET)
                self.offset = 0
        except OSError as err:
            raise LoadError(f"{self.path}: cannot read: {err.strerror}") from None
        self.offset += n
        self.summary.read_calls += 1
        self.summary.bytes_read += n

    def noio_call(self) -> None:
        os.getppid()  # a real system call (glibc does not cache it)
        self.summary.other_calls += 1

    def chunk(self, io: IOSpec) -> bool:
        """One chunk of system calls; False once the time is up."""
        call = self.read_call if self.spec.read else self.write_call if self.spec.write else self.noio_call
        for n in range(io.ncalls):
            if self.expired():
                return False
            call()
            if n % SYSCALL_BATCH == SYSCALL_BATCH - 1:
                self.tick()
        self.summary.chunks += 1
        self.tick()
        return True

    # ---- the run

    def run(self) -> Summary:
        spec = self.spec
        if spec.sleep:
            self.debug(f"sleeping {spec.sleep:g} seconds")
            time.sleep(spec.sleep)
        self.base = time.process_time()
        self.seconds = self.summary.seconds_limit = spec.time.pick(self.rng)
        self.debug("running indefinitely" if self.seconds == 0 else f"running for {self.seconds:.2f} CPU seconds")
        self.poll()
        self.allocate()
        io = spec.io
        if io is None:
            finished = self.units(spec.cpu_units)
            self.summary.ended_by = "cpu" if finished and spec.cpu_units is not None else "time"
        else:
            self.open_file()
            done = 0
            finished = True
            while io.repeats is None or done < io.repeats:
                if done and spec.cpu_units:
                    finished = self.units(spec.cpu_units)
                    if not finished:
                        break
                finished = self.chunk(io)
                if not finished:
                    break
                done += 1
            self.summary.ended_by = "repeats" if finished else "time"
        return self.summary


def run_load(
    spec: LoadSpec,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    whereami: Callable[[], int | None] = read_whereami,
    poll_interval: float = 0.1,
    rng: random.Random | None = None,
) -> Summary:
    """Generate the load ``spec`` describes until its time, units or repeats are done, or
    SIGINT/SIGTERM/SIGHUP arrives (then ``ended_by`` names the signal). Always releases
    the memory and removes a temporary file. Raises LoadError on I/O or memory failure."""
    load = _Load(spec, out or sys.stdout, err or sys.stderr, whereami, poll_interval, rng or random.Random())

    cleaning_up = False

    def stop(signum: int, _frame: object) -> None:
        if not cleaning_up:  # a second signal must not interrupt the cleanup
            raise _Stopped(signum)

    handlers: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            handlers[signum] = signal.signal(signum, stop)
    try:
        return load.run()
    except _Stopped as stopped:
        load.summary.ended_by = signal.Signals(stopped.signum).name
        return load.summary
    finally:
        cleaning_up = True
        load.summary.cpu_seconds = load.used() if load.base else 0.0
        load.close_file()
        load.mem = None
        for signum, handler in handlers.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- command line

_SPEC_ARG = re.compile(r"^\s*\d*\s*(,\s*\d*\s*){0,2}$")
_NUMBER = re.compile(r"^\d+(\.\d*)?$|^\.\d+$")


def rewrite(argv: list[str]) -> list[str]:
    """MOSIX spellings typer cannot express: ``--read``/``--write``/``--noiosyscall`` with an
    optional value, given with ``=`` or as the next word (``--write 32,640,1``); ``-h`` as help
    unless a number follows (``-l 10 -h 20``)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if arg == "--":
            out += argv[i:]
            break
        if arg in ("--read", "--write", "--noiosyscall"):
            if nxt is not None and nxt.strip() and _SPEC_ARG.match(nxt):
                out.append(f"{arg}={nxt}")
                i += 2
            else:
                out.append(f"{arg}=")
                i += 1
            continue
        if arg == "-h" and (nxt is None or not _NUMBER.match(nxt)):
            out.append("--help")
        else:
            out.append(arg)
        i += 1
    return out


@app.command(help=DESCRIPTION)
@reports_errors
def main_command(
    time_text: str | None = typer.Option(
        None,
        "-t",
        "--time",
        metavar="SECONDS|MIN,MAX",
        help=f"run for this many CPU seconds (default {DEFAULT_SECONDS:g}; 0: indefinitely), "
        "or a random number of seconds between MIN and MAX",
    ),
    low: float | None = typer.Option(None, "-l", metavar="MIN", help="minimum of a random run time (with -h)"),
    high: float | None = typer.Option(
        None, "-h", metavar="MAX", help="maximum of a random run time (with -l); a bare -h is --help"
    ),
    mem_mb: int = typer.Option(0, "-m", "--mem", metavar="MB", help="memory to consume, in megabytes"),
    random_mem: bool = typer.Option(
        False, "--random-mem", help="fill the memory with a random pattern (else with one byte value)"
    ),
    cpu_units: int | None = typer.Option(
        None,
        "--cpu",
        metavar="N",
        help=f"perform N units of CPU work ({UNIT_ITERATIONS:,} loop rounds, ~10 ms at 3 GHz), then exit; "
        "with --read/--write/--noiosyscall: N units between chunks of system calls",
    ),
    read: str | None = typer.Option(
        None,
        "--read",
        metavar="[SIZE[,NCALLS[,REPEATS]]]",
        help="read SIZE KB (default 1) NCALLS times (default 1024) per chunk, REPEATS chunks "
        "(default: indefinitely); wraps to the start at end of file",
    ),
    write: str | None = typer.Option(
        None,
        "--write",
        metavar="[SIZE[,NCALLS[,REPEATS]]]",
        help="write SIZE KB (default 1) NCALLS times (default 1024) per chunk, REPEATS chunks "
        "(default: indefinitely); the file is truncated first",
    ),
    noio: str | None = typer.Option(
        None,
        "--noiosyscall",
        metavar="[NCALLS[,REPEATS]]",
        help="perform a system call that does no I/O (getppid) NCALLS times (default 1024) per chunk, "
        "REPEATS chunks (default: indefinitely)",
    ),
    directory: Path | None = typer.Option(
        None, "-d", "--dir", metavar="DIRECTORY", help="create the (temporary) file to read or write here"
    ),
    file: Path | None = typer.Option(
        None,
        "-f",
        "--file",
        metavar="FILENAME",
        help="read or write this file (default: a temporary file in /tmp, removed at exit)",
    ),
    maxiosize_mb: float | None = typer.Option(
        None, "--maxiosize", metavar="SIZE", help="resume I/O at the start of the file once it reaches SIZE MB"
    ),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="produce debug output (on stderr)"),
    report_migrations: bool = typer.Option(
        False, "--report-migrations", help="report when mostestload migrates (under mosrun)"
    ),
    report: bool = typer.Option(False, "-r", "--report", help="produce a summary at the end of the run"),
    sleep: float = typer.Option(0.0, "--sleep", metavar="SEC", help="sleep SEC seconds before starting"),
) -> None:
    try:
        spec = LoadSpec.from_options(
            time_text=time_text,
            low=low,
            high=high,
            mem_mb=mem_mb,
            random_mem=random_mem,
            cpu_units=cpu_units,
            read=read,
            write=write,
            noio=noio,
            directory=directory,
            file=file,
            maxiosize_mb=maxiosize_mb,
            verbose=verbose,
            report_migrations=report_migrations,
            sleep=sleep,
        )
    except SpecError as err:
        raise typer.BadParameter(str(err), param_hint=f"'{err.option}'") from None
    try:
        summary = run_load(spec)
    except LoadError as err:
        typer.echo(f"{PROG}: {err}", err=True)
        raise typer.Exit(1) from None
    if report:
        typer.echo("\n".join(summary.lines()))
    if summary.ended_by not in ("time", "cpu", "repeats"):
        raise typer.Exit(128 + int(signal.Signals[summary.ended_by]))


def main() -> None:
    run(app, rewrite=rewrite)


if __name__ == "__main__":
    main()
