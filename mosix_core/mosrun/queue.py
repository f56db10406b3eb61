"""``mosrun -S{maxjobs} commands-file[,failed-file]``: a queue of command lines.

Lines are read lazily (the list may be very long), run through ``bash -c`` in
order, at most ``maxjobs`` at a time. A line that does not end with a line-feed,
or is longer than :data:`MAX_LINE`, is reported with the manual's message and
counts as failed. Blank lines are not commands. The exit status is the number of
failed lines (255 at most); the failed-file, when asked for, receives each
failed line as soon as it fails.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

import attrs

from mosix_core.errors import MosixError

MAX_LINE = 64 * 1024
MAX_STATUS = 255


@attrs.define
class Job:
    number: int       # its line number in the commands-file
    line: str
    pid: int = 0


def _identity(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class CommandQueue:
    def __init__(self, commands: str, failed: str | None, maxjobs: int,
                 say: Callable[[str], None] = lambda text: print(text, file=sys.stderr)) -> None:
        self.path = commands
        self.failed_path = failed
        self.maxjobs = maxjobs
        self.say = say
        try:
            self._file = open(commands, "rb")
        except OSError as err:
            raise MosixError(f"{commands}: {err.strerror}") from None
        self._identity = _identity(os.fstat(self._file.fileno()))
        self.total = _count_lines(self._file)
        self._file.seek(0)
        self._failed_file = None
        if failed is not None:
            try:
                self._failed_file = open(failed, "w")
            except OSError as err:
                raise MosixError(f"{failed}: {err.strerror}") from None
        self._failed_write_error = False
        self.line_number = 0
        self.done = 0
        self.failures = 0
        self.running: dict[int, Job] = {}
        self.exhausted = False

    # -- feeding ----------------------------------------------------------------------------------------
    def next_job(self) -> Job | None:
        """The next command line to run, or None when there is none (or room for none)."""
        while len(self.running) < self.maxjobs and not self.exhausted:
            raw = self._file.readline(MAX_LINE + 1)
            if not raw:
                self.exhausted = True
                break
            self.line_number += 1
            if not raw.endswith(b"\n") or len(raw) > MAX_LINE:
                self.say(f"Line #{self.line_number} is too long or broken!")
                first = raw
                while len(raw) > MAX_LINE and not raw.endswith(b"\n"):
                    raw = self._file.readline(MAX_LINE + 1)     # skip the rest of it
                self.done += 1
                self._record_failure(first[:MAX_LINE].rstrip(b"\n").decode(errors="surrogateescape"))
                continue
            line = raw[:-1].decode(errors="surrogateescape")
            if not line.strip():
                continue
            return Job(self.line_number, line)
        return None

    def started(self, job: Job) -> None:
        self.running[job.pid] = job

    def finished(self, pid: int, ok: bool) -> Job | None:
        job = self.running.pop(pid, None)
        if job is None:
            return None
        self.done += 1
        if not ok:
            self._record_failure(job.line)
        return job

    @property
    def more(self) -> bool:
        return bool(self.running) or not self.exhausted

    @property
    def progress(self) -> str:
        return f"{self.total}/{self.done}/{self.failures}"

    # -- results ----------------------------------------------------------------------------------------
    def _record_failure(self, line: str) -> None:
        self.failures += 1
        if self._failed_file is not None:
            try:
                self._failed_file.write(line + "\n")
                self._failed_file.flush()
            except OSError:
                if not self._failed_write_error:
                    self.say("Failed writing to failed-commands file!")
                self._failed_write_error = True

    def close(self) -> int:
        """Finish; return the exit status (the number of failed lines, at most 255)."""
        changed = True
        try:
            changed = _identity(os.stat(self.path)) != self._identity
        except OSError:
            pass
        self._file.close()
        if self._failed_file is not None:
            try:
                self._failed_file.close()
            except OSError:
                if not self._failed_write_error:
                    self.say("Failed writing to failed-commands file!")
            if changed:
                self.say("Commands-file changed: failed-commands file is incomplete!")
        return min(self.failures, MAX_STATUS)


def _count_lines(f) -> int:
    """The number of command lines (blank lines are not commands)."""
    return sum(1 for raw in f if raw.strip())


class Progress:
    """A one-line progress report, on a terminal only."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.active = os.isatty(fd)

    def show(self, queue: CommandQueue) -> None:
        if self.active:
            text = f"\rmosrun: {queue.done}/{queue.total} done, {queue.failures} failed "
            try:
                os.write(self.fd, text.encode())
            except OSError:
                self.active = False

    def end(self) -> None:
        if self.active:
            try:
                os.write(self.fd, b"\n")
            except OSError:
                pass
