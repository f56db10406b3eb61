"""mosctl — miscellaneous MOSIX functions (mosctl(1)).

``expel`` and ``bring`` wait, as the manual says, until the processes have moved
(the daemon does the waiting; see ``mosix_core.daemon.control``). They can be
interrupted, with no guarantee then that all have moved; ``--timeout`` (ours, not
the manual's) bounds the wait, after which the ones left are named.
"""

from __future__ import annotations

import os
import socket
from ipaddress import IPv4Address
from pathlib import Path

import typer

from mosix_core.cli.common import ETC_HELP, etc_path, new_app, print_json, reports_errors, run
from mosix_core.cluster import status as fmt
from mosix_core.config import load_config
from mosix_core.daemon import protocol as p
from mosix_core.daemon.client import Client
from mosix_core.errors import MosixError, NotInMap, PermissionDenied

app = new_app("Miscellaneous MOSIX functions.")
EtcOption = typer.Option(None, "--etc", help=ETC_HELP)
JsonOption = typer.Option(False, "--json", help="machine-readable output")
MOVE_TIMEOUT = 300.0
TimeoutOption = typer.Option(MOVE_TIMEOUT, "--timeout", min=0.1, help="give up after this many seconds")


def whois(etc: Path, what: str | None) -> str:
    """Node number → host name (or IP); IP or host name → node number."""
    config = load_config(etc)
    if what is None:
        ip = IPv4Address(Client(etc).request(p.PingRequest()).ip)
        number = config.node_number(ip)
        return f"{number}" if number else f"{ip}: no node number"
    if what.isdigit():
        ip = config.resolve_node(what)
        try:
            return socket.gethostbyaddr(str(ip))[0]
        except OSError:
            return str(ip)
    ip = config.resolve_node(what)
    number = config.node_number(ip)
    if number is None:
        raise NotInMap(f"{what}: has no node number (not in userview.map)")
    return str(number)


def require_root() -> None:
    if os.geteuid() != 0:
        raise PermissionDenied("Permission denied: only the Super-User may do this")


def set_state(etc: Path, flag: str, value: bool) -> None:
    require_root()
    Client(etc).request(p.SetstateRequest(flag=p.StateFlag(flag), value=value))


def expel(etc: Path, timeout: float = MOVE_TIMEOUT) -> int:
    """Send every guest process home; once all have gone, how many there were."""
    require_root()
    return Client(etc, timeout=timeout + 30).request(p.ExpelRequest(timeout=timeout)).expelled


def bring(etc: Path, timeout: float = MOVE_TIMEOUT) -> int:
    """Bring back every process whose home is here; once all are back, how many were away."""
    require_root()
    return Client(etc, timeout=timeout + 30).request(p.BringRequest(timeout=timeout)).brought


@app.command("whois", help="Convert node numbers to host names and vice versa.")
@reports_errors
def whois_cmd(node: str | None = typer.Argument(None), etc: Path | None = EtcOption) -> None:
    typer.echo(whois(etc_path(etc), node))


@app.command("status", help="User-friendly information about a node (default: this one).")
@reports_errors
def status_cmd(
    node: str | None = typer.Argument(None), etc: Path | None = EtcOption, as_json: bool = JsonOption
) -> None:
    info = Client(etc_path(etc)).request(p.StatusRequest(node=node)).node
    if as_json:
        print_json(info)
    else:
        typer.echo("\n".join(fmt.status_lines(info)))


@app.command("localstatus", help="Like status, with what only this node knows.")
@reports_errors
def localstatus_cmd(etc: Path | None = EtcOption, as_json: bool = JsonOption) -> None:
    report = p.encode(Client(etc_path(etc)).request(p.LocalStatusRequest()))
    if as_json:
        print_json(report)
    else:
        typer.echo("\n".join(fmt.localstatus_lines(report)))


@app.command("rstatus", help="Raw information about a node: the manual's integers, in order.")
@reports_errors
def rstatus_cmd(
    node: str | None = typer.Argument(None), etc: Path | None = EtcOption, as_json: bool = JsonOption
) -> None:
    info = Client(etc_path(etc)).request(p.StatusRequest(node=node)).node
    values = fmt.rstatus_integers(info)
    if as_json:
        print_json(dict(zip(fmt.RSTATUS_FIELDS, values)))
    else:
        typer.echo(" ".join(str(v) for v in values))


def _state_command(name: str, flag: str, value: bool, text: str) -> None:
    @app.command(name, help=text)
    @reports_errors
    def command(etc: Path | None = EtcOption) -> None:
        set_state(etc_path(etc), flag, value)


_state_command("stay", "stay", True, "Prevent automatic migration away from this node.")
_state_command("nostay", "stay", False, "Cancel 'stay'.")
_state_command("lstay", "lstay", True, "Prevent automatic migration of local processes away from this node.")
_state_command("nolstay", "lstay", False, "Cancel 'lstay'.")
_state_command("block", "block", True, "Do not allow further migrations into this node.")
_state_command("noblock", "block", False, "Cancel 'block'.")


@app.command("expel", help="Expel all guest processes (returns when they have all moved away).")
@reports_errors
def expel_cmd(etc: Path | None = EtcOption, timeout: float = TimeoutOption) -> None:
    expel(etc_path(etc), timeout)


@app.command("bring", help="Bring back all processes whose home-node is here (returns when they have all arrived).")
@reports_errors
def bring_cmd(etc: Path | None = EtcOption, timeout: float = TimeoutOption) -> None:
    bring(etc_path(etc), timeout)


def add_plugin_commands() -> None:
    """Sub-commands contributed by plugins through ``mosix_cli_commands``."""
    import sys

    from mosix_core.contract.plugins import plugin_manager_for

    argv = sys.argv[1:]
    etc = Path(argv[argv.index("--etc") + 1]) if "--etc" in argv[:-1] else None
    try:
        pm = plugin_manager_for(load_config(etc_path(etc)).daemon, etc_path(etc))
    except MosixError:
        pm = plugin_manager_for(None)
    for commands in pm.hook.mosix_cli_commands():
        for name, sub_app in commands:
            app.add_typer(sub_app, name=name)


def main() -> None:
    try:
        add_plugin_commands()
    except MosixError as err:
        typer.echo(f"mosctl: {err}", err=True)
        raise SystemExit(1) from None
    run(app)


if __name__ == "__main__":
    main()
