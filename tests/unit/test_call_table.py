"""docs/system-calls.md is the table mosrun's own rules make (issue 18)."""

from __future__ import annotations

from pathlib import Path

from mosix_core.linux.syscall_names import NAMES
from mosix_core.mosrun import call_table as rules

DOC = Path(__file__).resolve().parents[2] / "docs" / "system-calls.md"


def test_the_committed_table_is_up_to_date():
    assert DOC.read_text() == rules.table_markdown(), (
        "run: python -m mosix_core.mosrun.rules --table > docs/system-calls.md"
    )


def test_every_call_has_a_row_and_the_answered_ones_say_how():
    rows = {name: (status, away, why) for name, status, away, why in rules.call_table()}
    assert set(rows) == set(NAMES.values())
    for name in rules.ANSWERED:
        assert rows[name][0].startswith("supported") and "strict process" in rows[name][2], name
    assert rows["shmat"][0] == rows["timer_create"][0] == "refused"
    assert rows["sched_getaffinity"][0] == "supported, with a difference"
