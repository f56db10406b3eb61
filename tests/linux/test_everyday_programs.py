"""Issue 18: everyday programs from the Debian archive run unmodified under mosrun, in
the default UTF-8 locale (no LC_ALL): each case natively and under mosrun, byte-identical
stdout, stderr and exit status. The corpus is tests/helpers/everyday.py.

Before issue 18 every one of them was killed at once ("Shared memory (MAP_SHARED) not
supported under MOSIX": glibc maps its gconv cache MAP_SHARED read-only in UTF-8
locales), sort for sched_getaffinity, python3 importing subprocess for epoll_create1,
time.sleep for an absolute clock_nanosleep."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import everyday
from tests.helpers.programs import BIN

pytestmark = pytest.mark.linux

PROGRAMS = (
    "sort",
    "ls",
    "wc",
    "sha256sum",
    "md5sum",
    "cut",
    "tr",
    "uniq",
    "join",
    "split",
    "du",
    "date",
    "seq",
    "factor",
    "grep",
    "sed",
    "gawk",
    "mawk",
    "find",
    "tar",
    "gzip",
    "bzip2",
    "xz",
    "zstd",
    "bc",
    "dc",
    "python3",
    "perl",
    "sqlite3",
    "make",
    "gcc",
    "git",
    "openssl",
    "b2sum",
    "tac",
    "od",
    "base64",
    "comm",
    "paste",
    "xargs",
    "expr",
    "stat",
    "nl",
    "cksum",
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    missing = [name for name in PROGRAMS if shutil.which(name, path="/usr/bin:/bin") is None]
    if missing:
        pytest.fail(f"not installed: {' '.join(missing)} (scripts/install.sh installs them)")
    root = tmp_path_factory.mktemp("everyday")
    everyday.write_inputs(root / "data", loop=20_000)
    return root


def run_case(root: Path, prefix: list[str], name: str, command: str) -> subprocess.CompletedProcess:
    where = everyday.fresh(root / f"{'mosrun' if prefix else 'native'}-{name}")
    return subprocess.run(
        [*prefix, "bash", "-c", command], cwd=where, env=everyday.environment(where), capture_output=True, timeout=300
    )


def test_the_corpus_is_large_enough():
    assert len(everyday.CASES) + len(everyday.LONG) >= 40


@pytest.mark.parametrize("name", sorted(everyday.CASES) + sorted(everyday.LONG))
def test_an_everyday_program_gives_its_native_result_under_mosrun(corpus, name):
    command = everyday.CASES.get(name) or " ".join(everyday.LONG[name]) + " < ../data/big.txt"
    native = run_case(corpus, [], name, command)
    mosix = run_case(corpus, [str(BIN / "mosrun")], name, command)
    assert mosix.stderr.decode(errors="replace") == native.stderr.decode(errors="replace")
    assert (mosix.returncode, mosix.stdout) == (native.returncode, native.stdout)
    assert native.stdout  # each case says something
