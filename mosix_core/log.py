"""structlog, configured once per process.

Pretty, coloured output on a terminal; one JSON object per line otherwise (daemons
write to log files). Node and pid are bound through contextvars so every line of a
daemon says which node it is.

structlog is imported, and configured, when a process first logs: it brings rich
with it (~0.1 s), which a command that never logs (mosmigrate, mosps...) should not
wait for.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

_configured = False


def configure(stream: TextIO | None = None, level: str | None = None, json: bool | None = None) -> None:
    """Configure structlog for this process; later calls are ignored."""
    global _configured
    if _configured:
        return
    _configured = True
    import structlog

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
