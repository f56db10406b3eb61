"""Shared set-up for the tests that run real programs under mosrun (their helpers are in
:mod:`tests.helpers.programs` and :mod:`tests.helpers.guest`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.programs import BIN

PROGRAMS = Path(__file__).parent / "programs"


@pytest.fixture(scope="session")
def programs(tmp_path_factory) -> Path:
    """Our C test programs (tests/linux/programs/*.c), compiled once per run."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the test programs (scripts/install.sh installs it)")
    out = tmp_path_factory.mktemp("programs")
    for source in sorted(PROGRAMS.glob("*.c")):
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out / source.stem), str(source)], check=True)
    os.chmod(out, 0o755)
    return out


@pytest.fixture
def mosrun_env(tmp_path) -> dict[str, str]:
    """An environment for running mosrun as a user of a stock Debian would: its default
    locale (C.UTF-8), our tools first on PATH, no MOSIX configuration."""
    env = dict(os.environ)
    env.pop("LC_ALL", None)
    env.update(LANG="C.UTF-8", PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}", MOSIX_ETC=str(tmp_path / "no-etc"))
    return env
