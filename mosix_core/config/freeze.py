"""``freeze.conf`` (the automatic freezing policy, freezing directories, their owner)
and a user's ``$HOME/.freeze_dirs``."""

from __future__ import annotations

import os

from attrs import frozen

from mosix_core.config.source import data_lines, read_text
from mosix_core.config.tokens import parse_float, parse_int, parse_path
from mosix_core.errors import ConfigError

#: The user manual: "up to 10 different directories".
MAX_DIRS = 10
DEFAULT_DIR = "/freeze"
# Load marks and memory sizes far beyond any machine are typos.
_MAX_LOAD = 1e9
_MAX_INT = 2**31 - 1
_MAX_UID = 2**32 - 2  # (uid_t)-1 means "no uid" to the kernel
_POLICY_FIELDS = (
    "load-units (field 2)",
    "RED-MARK (field 3)",
    "BLUE-MARK (field 4)",
    "minautofreeze (field 5)",
    "minclustfreeze (field 6)",
    "min-keep (field 7)",
    "max-procs (field 8)",
    "slice (field 9)",
    "killing-memory (field 10)",
)


@frozen
class FreezePolicy:
    """The automatic freezing policy; a mark of -1 switches that feature off."""

    units: int  # 0: processes; 1: standard MOSIX load
    red: float
    blue: float
    home_mark: float = -1.0
    cluster_mark: float = -1.0
    min_keep: int = 0
    max_procs: int = -1
    slice_minutes: int = 20
    # 0 kills every process that fails to freeze ("KILLING-POLICY = always").
    killing_memory_mb: int = 0

    @classmethod
    def parse(cls, fields: list[str], source: str, line: int) -> FreezePolicy:
        """A policy line, ``fields[0]`` being the leading '1'."""
        if len(fields) < 4:
            raise ConfigError(
                source,
                "a freezing policy needs at least 4 fields: 1, load-units, RED-MARK, BLUE-MARK",
                line,
            )
        if len(fields) > 10:
            raise ConfigError(source, f"a freezing policy has at most 10 fields, not {len(fields)}", line)
        values = fields[1:]

        def mark(index: int, may_be_off: bool) -> float:
            value = parse_float(values[index], source, line, _POLICY_FIELDS[index], -1.0, _MAX_LOAD)
            if value < 0 and not (may_be_off and value == -1):
                off = " or -1 (off)" if may_be_off else ""
                raise ConfigError(source, f"{_POLICY_FIELDS[index]} must be 0 or more{off}, not {values[index]}", line)
            return value

        def integer(index: int, low: int, default: int) -> int:
            if index >= len(values):
                return default
            return parse_int(values[index], source, line, _POLICY_FIELDS[index], low, _MAX_INT)

        units = parse_int(values[0], source, line, _POLICY_FIELDS[0], 0, 1)
        red = mark(1, may_be_off=True)
        blue = mark(2, may_be_off=False)
        home_mark = mark(3, may_be_off=True) if len(values) > 3 else -1.0
        cluster_mark = mark(4, may_be_off=True) if len(values) > 4 else -1.0
        if red != -1 and red <= blue:
            raise ConfigError(
                source,
                f"RED-MARK ({values[1]}) must be higher than BLUE-MARK ({values[2]}); allow at least 1.1 between them",
                line,
            )
        return cls(
            units=units,
            red=red,
            blue=blue,
            home_mark=home_mark,
            cluster_mark=cluster_mark,
            min_keep=integer(5, 0, 0),
            max_procs=integer(6, -1, -1),
            slice_minutes=integer(7, 1, 20),
            killing_memory_mb=integer(8, 0, 0),
        )


@frozen
class FreezeDir:
    """A directory for frozen images; ``weight`` is its relative chance (0: last resort)."""

    path: str
    weight: float = 1.0


@frozen
class FreezeConfig:
    policy: FreezePolicy | None
    dirs: tuple[FreezeDir, ...]
    uid: int | None = None

    @classmethod
    def default(cls) -> FreezeConfig:
        """No ``freeze.conf``: no automatic freezing, images go to ``/freeze`` as root."""
        return cls(policy=None, dirs=(FreezeDir(DEFAULT_DIR),), uid=None)

    @classmethod
    def parse(cls, text: str, source: str) -> FreezeConfig:
        policy: FreezePolicy | None = None
        policy_line = 0
        uid: int | None = None
        uid_line = 0
        dirs = _DirCollector(source)
        for number, fields in data_lines(text):
            if fields[0] == "1":
                if policy is not None:
                    raise ConfigError(source, f"a second freezing policy (the first is on line {policy_line})", number)
                policy = FreezePolicy.parse(fields, source, number)
                policy_line = number
            elif fields[0].startswith("/"):
                dirs.add(fields, number)
            elif fields[0] == "U":
                if uid is not None:
                    raise ConfigError(source, f"a second 'U' line (the first is on line {uid_line})", number)
                if len(fields) != 2:
                    raise ConfigError(source, "a 'U' line must be 'U {UID}' with a numeric UID", number)
                uid = parse_int(fields[1], source, number, "the UID", 0, _MAX_UID)
                uid_line = number
            else:
                raise ConfigError(
                    source,
                    f"unexpected {fields[0]!r}: a line is either a freezing policy (starting with '1'),"
                    " a freezing directory (starting with '/') or 'U {UID}'",
                    number,
                )
        return cls(policy=policy, dirs=dirs.result(), uid=uid)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> FreezeConfig:
        return cls.parse(read_text(path), os.fspath(path))


def parse_freeze_dirs_file(text: str, source: str) -> tuple[FreezeDir, ...]:
    """A user's ``$HOME/.freeze_dirs``: freeze.conf's directory lines alone.
    Without any, the result is empty (the caller falls back to the system's)."""
    dirs = _DirCollector(source)
    for number, fields in data_lines(text):
        if not fields[0].startswith("/"):
            raise ConfigError(source, f"expected a directory name starting with '/', not {fields[0]!r}", number)
        dirs.add(fields, number)
    return dirs.collected()


class _DirCollector:
    """Freezing-directory lines, with the limits both files share."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._dirs: list[FreezeDir] = []
        self._lines: dict[str, int] = {}

    def add(self, fields: list[str], line: int) -> None:
        source = self._source
        if len(fields) > 2:
            raise ConfigError(source, "a freezing-directory line is a directory name and an optional weight", line)
        path = parse_path(fields[0], source, line, "a freezing directory")
        weight = 1.0
        if len(fields) == 2:
            weight = parse_float(fields[1], source, line, "the weight", 0.0, _MAX_LOAD)
        if path in self._lines:
            raise ConfigError(source, f"{path} is already listed on line {self._lines[path]}", line)
        if len(self._dirs) == MAX_DIRS:
            raise ConfigError(source, f"more than {MAX_DIRS} freezing directories", line)
        self._lines[path] = line
        self._dirs.append(FreezeDir(path=path, weight=weight))

    def collected(self) -> tuple[FreezeDir, ...]:
        return tuple(self._dirs)

    def result(self) -> tuple[FreezeDir, ...]:
        """What freezing uses: the listed directories, or ``/freeze`` when none is listed."""
        return self.collected() or (FreezeDir(DEFAULT_DIR),)
