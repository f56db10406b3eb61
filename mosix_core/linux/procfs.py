"""Reading /proc/PID files that several parts of MOSIX look at."""

from __future__ import annotations


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` from field 3 (state) on: index 0 is the state,
    11 utime, 12 stime (proc(5) numbering minus 3). None if the process is gone.

    The command name between the parentheses may hold spaces and parentheses, so the
    fields start after the *last* ')'."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    end = data.rfind(b")")
    return None if end < 0 else data[end + 2:].split()
