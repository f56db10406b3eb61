"""mostimeof — the user CPU time of MOSIX processes, wherever they run (mostimeof(1)).

``mostimeof pid... [--json] [--etc DIR]``

Run it on the processes' home node. For each pid, the user-level CPU time (system
time is not included) is the home process's own (``/proc/{pid}/stat`` utime) plus
``remote_utime``, the time the process accumulated on other nodes as its
supervisor reports it to mosd. While a process runs away from home and no
``remote_utime`` has been reported, its time is "not available".

Output, one line per pid, in the order given: ``{pid}: {seconds:.2f}`` on stdout;
problems on stderr as ``mostimeof: {pid}: not a MOSIX process`` (also for guests,
whose home is elsewhere), ``mostimeof: {pid}: not available`` or
``mostimeof: {arg}: not a process ID``. Exit status 0 when every time was
reported, else 1. ``--json``: a list of ``{"pid", "utime", "error"}`` (utime None
on error).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from mosix_core.cli.common import ETC_HELP, etc_path, new_app, print_json, reports_errors, run
from mosix_core.cluster.proctable import ProcessRecord
from mosix_core.daemon import protocol as p
from mosix_core.daemon.client import Client
from mosix_core.linux.procfs import stat_fields

app = new_app("Report the user CPU time of MOSIX processes, wherever they run.")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def local_utime(pid: int) -> float | None:
    """User CPU seconds of a process running here (None if it is gone)."""
    fields = stat_fields(pid)
    return None if fields is None else int(fields[11]) / CLOCK_TICKS  # field 14, utime


def time_of(record: ProcessRecord | None) -> tuple[float | None, str | None]:
    """``(seconds, None)`` or ``(None, reason)``."""
    if record is None or record.is_guest:
        return None, "not a MOSIX process"
    if record.is_away and record.remote_utime is None:
        return None, "not available"
    here = local_utime(record.pid)
    if here is None:
        return None, "not a MOSIX process"  # exited just now
    return here + (record.remote_utime or 0.0), None


def times_of(etc: Path, args: list[str]) -> list[dict]:
    rows = {row.pid: row for row in Client(etc).request(p.ProcessesRequest()).processes}
    report = []
    for arg in args:
        text = arg.strip()
        if not (text.isascii() and text.isdigit()) or int(text) <= 0:
            report.append({"pid": arg, "utime": None, "error": "not a process ID"})
            continue
        pid = int(text)
        seconds, error = time_of(rows.get(pid))
        report.append({"pid": pid, "utime": None if seconds is None else round(seconds, 2), "error": error})
    return report


@app.command()
@reports_errors
def main_command(
    pids: list[str] = typer.Argument(..., metavar="PID", help="process IDs (from mosps)"),
    etc: Path | None = typer.Option(None, "--etc", help=ETC_HELP),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """mostimeof pid..."""
    report = times_of(etc_path(etc), pids)
    if as_json:
        print_json(report)
    else:
        for item in report:
            if item["error"] is None:
                typer.echo(f"{item['pid']}: {item['utime']:.2f}")
            else:
                typer.echo(f"mostimeof: {item['pid']}: {item['error']}", err=True)
    if any(item["error"] for item in report):
        raise typer.Exit(1)


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
