"""mosd — the MOSIX node daemon."""

from __future__ import annotations

from pathlib import Path

import typer

from mosix_core.cli.common import ETC_HELP, etc_path, new_app, reports_errors, run
from mosix_core.daemon import server

app = new_app("Start (or stop) the MOSIX daemon of this node.")


@app.command()
@reports_errors
def main_command(
    etc: Path | None = typer.Option(None, "--etc", help=ETC_HELP),
    foreground: bool = typer.Option(False, "--foreground", "-f", help="stay in the foreground (log to stderr)"),
    mapfile: Path | None = typer.Option(None, "-m", help="use this map instead of mosix.map"),
    our_ip: str | None = typer.Option(None, "-p", help="our MOSIX IP address"),
    stop: bool = typer.Option(False, "--stop", help="stop the running mosd"),
) -> None:
    etc_dir = etc_path(etc)
    if stop:
        pid = server.stop(etc_dir)
        typer.echo(f"mosd (pid {pid}) stopped" if pid else "mosd is not running")
        return
    if foreground:
        server.run_foreground(etc_dir, map_override=mapfile, ip_override=our_ip)
        return
    pid = server.start_background(etc_dir, map_override=mapfile, ip_override=our_ip)
    typer.echo(f"mosd started (pid {pid})")


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
