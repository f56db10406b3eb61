"""structlog, configured once per process.

Pretty, coloured output on a terminal; one JSON object per line otherwise (daemons
write to log files). Node and pid are bound through contextvars so every line of a
daemon says which node it is.

structlog is imported, and configured, when a process first logs: it brings rich
with it (~0.1 s), which a command that never logs (mosmigrate, mosps...) should not
wait for.

A daemon's log file is rotated by size (:class:`RotatingFile`), and what anyone can
make a daemon say often is limited with a :class:`Throttle`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, TextIO

# A daemon's log file is moved aside when it reaches LOG_MAX_BYTES; LOG_BACKUPS old
# files are kept (mosd.log.1 the newest), so the log never takes more than
# (LOG_BACKUPS + 1) * LOG_MAX_BYTES and a line or so.
LOG_MAX_BYTES = 8 * 1024 * 1024
LOG_BACKUPS = 3

_configured = False


class RotatingFile:
    """A text stream appending to ``path``, rotated by size: path -> path.1 -> ... ->
    path.{backups}, the oldest dropped.

    The size is the file's (``fstat``), not what went through here: others append to
    the same file (with ``stdio``, it is this process's stdout and stderr, which its
    children inherit). With ``stdio`` those follow the log to each new file, so a
    traceback lands next to the lines before it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int = LOG_MAX_BYTES,
        backups: int = LOG_BACKUPS,
        stdio: bool = False,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = max(1, backups)
        self.stdio = stdio
        self._file = self._open()

    def _open(self) -> TextIO:
        stream = open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115  (the log's, kept open)
        if self.stdio:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(stream.fileno(), 1)
            os.dup2(stream.fileno(), 2)
        return stream

    def write(self, text: str) -> int:
        return self._file.write(text)

    def flush(self) -> None:
        self._file.flush()
        try:
            size = os.fstat(self._file.fileno()).st_size
        except OSError:
            return
        if size >= self.max_bytes:
            self.rotate()

    def rotate(self) -> None:
        try:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            new = self._open()
        except OSError:
            return  # keep writing where we were; the next line tries again
        old, self._file = self._file, new
        old.close()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._file.fileno()


class Throttle:
    """Decides which of many similar events get a log line.

    At most one line per key (a source address) every ``per_key`` seconds, remembering
    the ``keys`` most recent keys (so a flood from ever new addresses cannot grow the
    table); and across all keys a token bucket: ``burst`` lines at once, then ``rate``
    lines a second. ``held_back`` counts what the bucket refused, for a summary line.
    """

    def __init__(self, *, burst: int, rate: float, per_key: float, keys: int) -> None:
        self.burst, self.rate, self.per_key, self.max_keys = burst, rate, per_key, keys
        self.held_back = 0
        self._tokens = float(burst)
        self._filled_at: float | None = None
        self._last: dict[str, float] = {}  # key -> when it last got a line, oldest first

    def __len__(self) -> int:
        return len(self._last)

    def allow(self, key: str, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.per_key:
            return False
        if self._filled_at is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._filled_at) * self.rate)
        self._filled_at = now
        if self._tokens < 1:
            self.held_back += 1
            return False
        self._tokens -= 1
        self._last.pop(key, None)
        self._last[key] = now
        while self._last:  # oldest first: drop the expired, and any beyond the bound
            oldest = next(iter(self._last))
            if len(self._last) <= self.max_keys and now - self._last[oldest] < self.per_key:
                break
            del self._last[oldest]
        return True

    def take_held_back(self) -> int:
        held_back, self.held_back = self.held_back, 0
        return held_back


def configure(
    stream: TextIO | None = None,
    level: str | None = None,
    json: bool | None = None,
    log_file: str | os.PathLike[str] | None = None,
) -> None:
    """Configure structlog for this process; later calls are ignored.

    ``log_file``: the process's stdout and stderr are this file (a daemon started in
    the background): log there, rotated (:class:`RotatingFile`).
    """
    global _configured
    if _configured:
        return
    _configured = True
    import structlog

    if log_file is not None:
        stream = RotatingFile(log_file, stdio=True)
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    level_name = (level or os.environ.get("MOSIX_LOG_LEVEL") or "info").upper()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )


def bind(**values: Any) -> None:
    """Bind values (node=, pid=) to every later log line of this context."""
    configure()
    import structlog

    structlog.contextvars.bind_contextvars(**values)


def get(name: str | None = None) -> Any:
    configure()
    import structlog

    return structlog.get_logger(name)
