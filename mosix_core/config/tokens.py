"""Strict number syntax shared by every parser.

``int()`` and ``float()`` accept far more than a configuration file should
(``1_000``, ``nan``, ``inf``, Unicode digits, ``+5``) and raise ValueError on
the rest; these helpers accept plain decimal numbers and raise ConfigError.
"""

from __future__ import annotations

import re

from mosix_core.errors import ConfigError

_INT = re.compile(r"-?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)
# Longer numerals cannot be in any range we accept, and huge ones would make
# int() itself refuse (Python limits integer string conversion).
_MAX_DIGITS = 20


def parse_int(token: str, source: str, line: int | None, what: str, low: int, high: int) -> int:
    """``token`` as an integer in ``low..high``, else a ConfigError naming ``what``."""
    allowed = f"{low} to {high}"
    if not _INT.fullmatch(token):
        raise ConfigError(source, f"{what} must be an integer ({allowed}), not {token!r}", line)
    if len(token.lstrip("-")) > _MAX_DIGITS:
        raise ConfigError(source, f"{what} {token[:12]}... is out of range ({allowed})", line)
    value = int(token)
    if not low <= value <= high:
        raise ConfigError(source, f"{what} {value} is out of range ({allowed})", line)
    return value


def parse_float(token: str, source: str, line: int | None, what: str, low: float, high: float) -> float:
    """``token`` as a decimal number in ``low..high``, else a ConfigError naming ``what``."""
    allowed = f"{_fmt(low)} to {_fmt(high)}"
    if not _FLOAT.fullmatch(token) or len(token) > 40:
        raise ConfigError(source, f"{what} must be a number ({allowed}), not {token!r}", line)
    value = float(token)
    if not low <= value <= high:
        raise ConfigError(source, f"{what} {token} is out of range ({allowed})", line)
    return value


def _fmt(value: float) -> str:
    return f"{value:g}"


# Linux PATH_MAX, counting the terminating NUL.
_MAX_PATH = 4095


def parse_path(token: str, source: str, line: int | None, what: str) -> str:
    """An absolute path that the operating system can be handed (no NUL, not too long)."""
    if not token.startswith("/"):
        raise ConfigError(source, f"{what} must start with '/', not {token!r}", line)
    if "\0" in token:
        raise ConfigError(source, f"{what} contains a NUL character", line)
    if len(token.encode("utf-8", "surrogatepass")) > _MAX_PATH:
        raise ConfigError(source, f"{what} is longer than {_MAX_PATH} bytes", line)
    return token
