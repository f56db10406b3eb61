"""Every hook of the contract has a test that exercises it (DESIGN §4)."""

from __future__ import annotations

import re
from pathlib import Path

from mosix_core import hookspecs

TESTS = Path(__file__).resolve().parents[1]


def declared_hooks() -> set[str]:
    return {name for name in dir(hookspecs) if name.startswith("mosix_")}


def hooks_with_tests() -> set[str]:
    marked: set[str] = set()
    for path in TESTS.rglob("test_*.py"):
        if path.name == Path(__file__).name:
            continue
        marked |= set(re.findall(r"mark\.hook\(\s*[\"'](mosix_\w+)[\"']", path.read_text()))
    return marked


def test_every_hook_has_a_test():
    missing = declared_hooks() - hooks_with_tests()
    assert not missing, f"hooks without a test marked @pytest.mark.hook(...): {sorted(missing)}"


def test_markers_name_real_hooks():
    unknown = hooks_with_tests() - declared_hooks()
    assert not unknown, f"tests marked with hooks that do not exist: {sorted(unknown)}"

