"""Where things live: the configuration directory and its run-time files."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ETC = Path("/etc/mosix")


def etc_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The configuration directory: ``--etc`` beats ``MOSIX_ETC`` beats /etc/mosix."""
    if override:
        return Path(override)
    env = os.environ.get("MOSIX_ETC")
    return Path(env) if env else DEFAULT_ETC


def var_dir(etc: Path) -> Path:
    """``etc/mosix/var``: MOSIX's own small run-time files (sockets, pid files)."""
    return etc / "var"


def control_socket(etc: Path) -> Path:
    return var_dir(etc) / "mosd.sock"


def pid_file(etc: Path) -> Path:
    return var_dir(etc) / "mosd.pid"


def log_file(etc: Path) -> Path:
    return var_dir(etc) / "mosd.log"
