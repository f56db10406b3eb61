"""The process-table fields the balancer goes by: checked like every settable field."""

import pytest

from mosix_core.cluster.proctable import ProcessRecord, checked_fields
from mosix_core.daemon import protocol
from mosix_core.mosrun import procself
from mosix_core.mosrun.tracee import row_fields


def test_a_processs_parameters_become_its_rows_fields():
    state = procself.MosixState(lock=1, cpujob=1, decayrate=9000, needmem=500, statistics_cleared=2)
    fields = checked_fields(row_fields(state))
    assert {k: fields[k] for k in ("locked", "cpujob", "decayrate", "needmem", "cleared")} == {
        "locked": True,
        "cpujob": True,
        "decayrate": 9000,
        "needmem": 500,
        "cleared": 2,
    }
    row = ProcessRecord(pid=1, uid=0, command="x")
    assert set(row.apply(fields)) >= {"locked", "cpujob", "decayrate", "needmem", "cleared"}


@pytest.mark.parametrize(
    "bad",
    [
        {"locked": 1},
        {"cpujob": "yes"},
        {"decayrate": 10001},
        {"decayrate": -1},
        {"decayrate": True},
        {"needmem": -5},
        {"cleared": 1.5},
    ],
)
def test_bad_values_are_refused_before_they_reach_a_row(bad):
    with pytest.raises(ValueError):
        checked_fields(bad)
    with pytest.raises(protocol.ProtocolError):
        protocol.decode("update", {"pid": 5, **bad})
