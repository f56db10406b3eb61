"""``private.conf``: where private temporary files are kept, and how much each process may use."""

from __future__ import annotations

import os

from attrs import frozen

from mosix_core.config.source import data_lines, read_text
from mosix_core.config.tokens import parse_int, parse_path
from mosix_core.errors import ConfigError

#: O: processes of this node; C: guests from our cluster; G: guests from other clusters.
CLASSES = ("O", "C", "G")
#: mosix(7): 5 GB for local processes, 2 GB for our cluster, 1 GB for other clusters.
DEFAULT_LIMIT_MB = {"O": 5120, "C": 2048, "G": 1024}
DEFAULT_DIR = "/private"
_MAX_LIMIT_MB = 2**40


@frozen
class PrivateDir:
    classes: frozenset[str]
    path: str
    limit_mb: int | None = None


@frozen
class PrivateConfig:
    dirs: tuple[PrivateDir, ...]
    present: bool  # False: there is no private.conf and the manual's default applies

    @classmethod
    def default(cls) -> PrivateConfig:
        return cls(dirs=(PrivateDir(classes=frozenset(CLASSES), path=DEFAULT_DIR),), present=False)

    @classmethod
    def parse(cls, text: str, source: str) -> PrivateConfig:
        dirs = []
        claimed: dict[str, int] = {}
        for number, fields in data_lines(text):
            if len(fields) not in (2, 3):
                raise ConfigError(
                    source,
                    "a line has 2 or 3 fields (letters from O, C, G; a directory; an optional limit in MB),"
                    f" not {len(fields)}",
                    number,
                )
            letters = fields[0]
            bad = [char for char in letters if char not in CLASSES]
            if bad:
                raise ConfigError(
                    source, f"{letters!r}: the first field may contain only the letters O, C and G", number
                )
            for char in letters:
                if char in claimed:
                    where = "twice on this line" if claimed[char] == number else f"already on line {claimed[char]}"
                    raise ConfigError(source, f"letter {char!r} appears {where}", number)
                claimed[char] = number
            path = parse_path(fields[1], source, number, "the directory")
            limit = None
            if len(fields) == 3:
                limit = parse_int(fields[2], source, number, "the limit in megabytes", 1, _MAX_LIMIT_MB)
            dirs.append(PrivateDir(classes=frozenset(letters), path=path, limit_mb=limit))
        return cls(dirs=tuple(dirs), present=True)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PrivateConfig:
        return cls.parse(read_text(path), os.fspath(path))

    def dir_for(self, cls: str) -> PrivateDir | None:
        """The directory for one class of process; None means no space for it on this node."""
        _check_class(cls)
        for entry in self.dirs:
            if cls in entry.classes:
                return entry
        return None

    def limit_mb(self, cls: str) -> int:
        entry = self.dir_for(cls)
        if entry is not None and entry.limit_mb is not None:
            return entry.limit_mb
        return DEFAULT_LIMIT_MB[cls]


def _check_class(cls: str) -> None:
    if cls not in CLASSES:
        raise ValueError(f"process class must be one of O, C, G, not {cls!r}")
