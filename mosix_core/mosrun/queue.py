"""``mosrun -S{maxjobs} commands-file[,failed-file]``: a queue of command lines.

Lines are read lazily (the list may be very long), run through ``bash -c`` in
order, at most ``maxjobs`` at a time. A line that does not end with a line-feed,
or is longer than :data:`MAX_LINE`, is reported with the manual's message and
counts as failed. Blank lines are not commands. The exit status is the number of
failed lines (255 at most); the failed-file, when asked for, receives each
failed line as soon as it fails.

A line is bytes, whatever the locale: it reaches bash and the failed-file exactly
as the commands-file holds it, so that the failed-file can be run again as it is.
A NUL byte is the one thing a command line cannot carry to ``bash -c`` (the
argument would end there and bash would run only part of the line), so such a
line is "broken" as well.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import attrs

from mosix_core.errors import MosixError

MAX_LINE = 64 * 1024
MAX_STATUS = 255


@attrs.define
class Job:
    number: int  # its line number in the commands-file
    raw: bytes  # the line as the file holds it, without its line-feed
    pid: int = 0

    @property
    def line(self) -> str:
        """The line for ``bash -c``: decoded the way exec encodes arguments back
        (the file-system encoding with surrogateescape), so bash gets ``raw`` exactly."""
        return os.fsdecode(self.raw)

    @property
    def command(self) -> str:
        """The line for people (mosps, messages): odd bytes shown escaped, never
        a lone surrogate that a strict UTF-8 writer would refuse."""
        return self.raw.decode(errors="backslashreplace")


def _identity(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class CommandQueue:
    def __init__(
        self,
        commands: str,
        failed: str | None,
        maxjobs: int,
        say: Callable[[str], None] = lambda text: print(text, file=sys.stderr),
    ) -> None:
        self.path = commands
        self.maxjobs = maxjobs
        self.say = say
        try:
            self._file = open(commands, "rb")  # noqa: SIM115  (read as the jobs run)
        except OSError as err:
            raise MosixError(f"{commands}: {err.strerror}") from None
        self._identity = _identity(os.fstat(self._file.fileno()))
        self.total = _count_lines(self._file)
        self._file.seek(0)
        self._failed_file = None
        if failed is not None:
            try:
                self._failed_file = open(failed, "wb")  # noqa: SIM115  (written as lines fail)
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
            if not raw.endswith(b"\n") or len(raw) > MAX_LINE or b"\0" in raw:
                self.say(f"Line #{self.line_number} is too long or broken!")
                self.done += 1
                self.failures += 1
                # the whole line goes to the failed-file, however long, a piece at a time
                self._write_failed(raw)
                while len(raw) > MAX_LINE and not raw.endswith(b"\n"):
                    raw = self._file.readline(MAX_LINE + 1)  # the rest of it is not run
                    self._write_failed(raw)
                if not raw.endswith(b"\n"):
                    self._write_failed(b"\n")
                continue
            if not raw.strip():
                continue
            return Job(self.line_number, raw[:-1])
        return None

    def started(self, job: Job) -> None:
        self.running[job.pid] = job

    def finished(self, pid: int, ok: bool) -> Job | None:
        job = self.running.pop(pid, None)
        if job is None:
            return None
        self.done += 1
        if not ok:
            self.failures += 1
            self._write_failed(job.raw + b"\n")
        return job

    @property
    def more(self) -> bool:
        return bool(self.running) or not self.exhausted

    @property
    def progress(self) -> str:
        return f"{self.total}/{self.done}/{self.failures}"

    # -- results ----------------------------------------------------------------------------------------
    def _write_failed(self, data: bytes) -> None:
        if self._failed_file is not None and not self._failed_write_error:
            try:
                self._failed_file.write(data)
                self._failed_file.flush()
            except OSError:
                # once a piece is lost the file cannot be exact: say so once, write no more
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
