"""mossetpe — configure the local cluster (mossetpe(1))."""

from __future__ import annotations

import os
import time
from ipaddress import IPv4Address
from pathlib import Path

import typer

from mosix_core.cli.common import ETC_HELP, etc_path, new_app, print_json, reports_errors, run
from mosix_core.daemon import protocol as p
from mosix_core.daemon.client import Client
from mosix_core.errors import PermissionDenied

app = new_app("Modify (or list) the MOSIX node configuration.")


def range_text(r: dict) -> str:
    first = IPv4Address(r["first"])
    span = str(first) if r["count"] == 1 else f"{first}-{first + r['count'] - 1}"
    return f"{span} ({r['count']} node{'s' if r['count'] != 1 else ''})"


def listing(info: dict) -> list[str]:
    """``mossetpe -r`` / ``-R``: the configuration as the daemon currently holds it."""
    number = f"#{info['number']} " if info.get("number") else ""
    lines = [f"This is MOSIX node {number}({info['ip']}){' - MOSIX is OFF' if info['off'] else ''}"]
    lines += [range_text(r) + (" proximate" if r["proximate"] else "") for r in info["ranges"]]
    lines += [f"alias {a['alias']} = {a['target']}" for a in info["aliases"]]
    for partner in info.get("partners", []):
        flags = [f"pri={partner['priority']}"]
        if not partner["cango"]:
            flags.append("dontgo")
        if not partner["cantake"]:
            flags.append("dont_take")
        lines.append(f"partner {partner['name']} ({partner['description']}): {' '.join(flags)}")
        lines += ["    " + range_text(r) + (" proximate" if r["proximate"] else "") for r in partner["ranges"]]
    return lines


def wait_settled(client: Client, poll: float = 0.5) -> None:
    """Wait until no process runs where the new configuration no longer allows it."""
    while client.request(p.PendingRequest()).pending:
        time.sleep(poll)


def setpe(etc: Path, mapfile: Path | None, our_ip: str | None, no_wait: bool) -> p.SetpeReply:
    if os.geteuid() != 0:
        raise PermissionDenied("Permission denied: only the Super-User may modify the MOSIX configuration")
    client = Client(etc)
    reply = client.request(p.SetpeRequest(map=str(mapfile.resolve()) if mapfile else None, ip=our_ip))
    if not no_wait:
        wait_settled(client)
    return reply


def turn_off(etc: Path, no_wait: bool) -> None:
    if os.geteuid() != 0:
        raise PermissionDenied("Permission denied: only the Super-User may modify the MOSIX configuration")
    client = Client(etc)
    client.request(p.OffRequest())
    if not no_wait:
        wait_settled(client)


@app.command()
@reports_errors
def main_command(
    mapfile: Path | None = typer.Option(None, "-m", help="map file instead of mosix.map"),
    our_ip: str | None = typer.Option(None, "-p", help="our MOSIX IP address"),
    no_wait: bool = typer.Option(False, "-A", help="return without waiting for processes to move"),
    list_cluster: bool = typer.Option(False, "-r", help="list the nodes of the local cluster"),
    list_multi: bool = typer.Option(False, "-R", help="list the nodes of the multi-cluster"),
    off: bool = typer.Option(False, "--off", help="disable MOSIX (also spelt -off)"),
    etc: Path | None = typer.Option(None, "--etc", help=ETC_HELP),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output with -r/-R"),
) -> None:
    etc_dir = etc_path(etc)
    if list_cluster or list_multi:
        info = p.encode(Client(etc_dir).request(p.ListpeRequest(multi=list_multi)))
        if as_json:
            print_json(info)
        else:
            typer.echo("\n".join(listing(info)))
        return
    if off:
        turn_off(etc_dir, no_wait)
        return
    reply = setpe(etc_dir, mapfile, our_ip, no_wait)
    typer.echo(f"MOSIX configured: this is {reply.ip}, {reply.nodes} nodes in the cluster")


def rewrite(argv: list[str]) -> list[str]:
    """The manual spells it ``-off``."""
    return ["--off" if a == "-off" else a for a in argv]


def main() -> None:
    run(app, rewrite=rewrite)


if __name__ == "__main__":
    main()
