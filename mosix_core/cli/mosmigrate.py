"""mosmigrate — manual control of a running MOSIX process (mosmigrate(1)).

``mosmigrate {pid} {node-number | IP-address | host | home | out | freeze |
continue | checkpoint | chkstop | chkexit}``

The request goes to the process's supervisor (see
:mod:`mosix_core.mosrun.control`); as the manual says, mosmigrate does not wait
for the action to be performed. The caller must be allowed to kill the process
(root, or its owner). What this MOSIX cannot do yet (migration: ``home``, ``out``,
a node) is refused with a message saying so, never ignored.
"""

from __future__ import annotations

import typer

from mosix_core.cli.common import new_app, reports_errors, run
from mosix_core.errors import MosixError
from mosix_core.mosrun import control

app = new_app("Manually migrate or otherwise instruct a running MOSIX process.")
ACTIONS = ("home", "out", "freeze", "continue", "checkpoint", "chkstop", "chkexit")


def mosmigrate(pid_text: str, action: str) -> None:
    """Send ``action`` to process ``pid_text`` (a node, address or host name means "migrate there")."""
    if not pid_text.isascii() or not pid_text.isdigit() or int(pid_text) <= 0:
        raise MosixError(f"{pid_text}: not a process-ID")
    pid = int(pid_text)
    if action in ACTIONS:
        control.request(pid, action)
    else:
        control.request(pid, "migrate", to=action)


@app.command()
@reports_errors
def main_command(
    pid: str = typer.Argument(..., help="the MOSIX process (see mosps)"),
    action: str = typer.Argument(..., help="node-number | IP-address | host | " + " | ".join(ACTIONS)),
) -> None:
    """mosmigrate {pid} {node-number | IP-address | host | home | out | freeze | continue | checkpoint | chkstop | chkexit}"""
    mosmigrate(pid, action)


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
