"""mosbestnode — select the best node to run on (mosbestnode(1))."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from mosix_core.cli.common import ETC_HELP, etc_path, new_app, print_json, reports_errors, run
from mosix_core.daemon import protocol as p
from mosix_core.daemon.client import Client

app = new_app("Select the best node to run a new MOSIX process on.")


def best_node(
    etc: Path, *, memory_mb: int = 0, reserve: bool = True, wait: bool = False, poll: float = 0.5
) -> p.BestnodeReply:
    """Ask mosd for the best node; unless ``reserve`` is False, mosd then assumes a
    process is about to start there. With ``wait``, retry until a node qualifies."""
    client = Client(etc)
    while True:
        reply = client.request(p.BestnodeRequest(memory_mb=memory_mb, reserve=reserve))
        if reply.ip is not None or not wait:
            return reply
        time.sleep(poll)


@app.command()
@reports_errors
def main_command(
    number: bool = typer.Option(False, "-u", help="print the node number instead of the IP address"),
    no_reserve: bool = typer.Option(False, "-n", help="information only: no process is about to start there"),
    wait: bool = typer.Option(False, "-w", help="wait until an appropriate node is found"),
    memory_mb: int = typer.Option(0, "-m", min=0, help="only nodes with at least this many MB free"),
    etc: Path | None = typer.Option(None, "--etc", help=ETC_HELP),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    reply = best_node(etc_path(etc), memory_mb=memory_mb, reserve=not no_reserve, wait=wait)
    if as_json:
        print_json(p.encode(reply))
    elif reply.ip is None:
        typer.echo("0")
    else:
        typer.echo(str(reply.number) if number and reply.number else reply.ip)


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
