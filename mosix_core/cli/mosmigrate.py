"""mosmigrate — manual control of a running MOSIX process (mosmigrate(1)).

``mosmigrate {pid} {node-number | IP-address | host | home | out | freeze |
continue | checkpoint | chkstop | chkexit}``

The request goes to the process's supervisor, and to nothing else that listens
under its name (see :mod:`mosix_core.mosrun.control_socket`). The manual says mosmigrate does
not wait for the action to be performed; this one does wait for a *move* (a node, an
address, a host, ``home``): it reports the move's outcome — exit status 0 once the
process is there, else the manual's "failed migrating to {computer}: {reason}" and
exit status 1. A node not in the map is refused before anything is sent. The other
actions are requests, answered as soon as they are taken. The caller must be allowed to kill the
process (root, or its owner: the supervisor checks, with the caller's credentials). What
this MOSIX cannot do yet is refused with a message saying so, never ignored.

``out`` is the exception: it is about a guest process running *here* (whose home
is elsewhere), it is for the Super-User only, and it goes to this node's mosd,
which sends the guest home. ``pid`` is the guest as this node lists it: the PID
``mosps -V`` shows (its guest host; the guest process itself is accepted too) —
not its ORIGPID, which is a pid on its home node.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from mosix_core.cli.common import ETC_HELP, etc_path, new_app, reports_errors, run
from mosix_core.daemon.client import Client
from mosix_core.errors import MosixError, PermissionDenied
from mosix_core.mosrun import control_socket, targets

app = new_app("Manually migrate or otherwise instruct a running MOSIX process.")
#: how long a move may take before mosmigrate stops waiting for its outcome: the target's
#: restore (migration.RESTORE_TIMEOUT) and the way there (mosd's handshake)
MOVE_TIMEOUT = 180.0
ACTIONS = ("home", "out", "freeze", "continue", "checkpoint", "chkstop", "chkexit")


def mosmigrate(pid_text: str, action: str, etc: Path | None = None) -> None:
    """Send ``action`` to process ``pid_text`` (a node, address or host name means "migrate there")."""
    if not pid_text.isascii() or not pid_text.isdigit() or int(pid_text) <= 0:
        raise MosixError(f"{pid_text}: not a process-ID")
    pid = int(pid_text)
    if action == "out":
        send_out(pid, etc_path(etc))
    elif action in ACTIONS and action != "home":
        control_socket.request(pid, action)
    else:
        target = resolve_target(action, etc_path(etc))
        if target.home:
            control_socket.request(pid, "home", timeout=MOVE_TIMEOUT, wait=True)
        else:
            control_socket.request(pid, "migrate", timeout=MOVE_TIMEOUT, to=target.text, wait=True)


def resolve_target(named: str, etc: Path) -> targets.MoveTarget:
    """The node ``named`` means here, before anything is sent (the manual's "not in map" else)."""
    from mosix_core.config import load_config_if_present

    return targets.resolve(None if named in targets.HOME_WORDS else load_config_if_present(etc), named)


def send_out(pid: int, etc: Path) -> None:
    """``out``: guest ``pid`` (as listed here) leaves this node for its home (Super-User only)."""
    if os.geteuid() != 0:
        raise PermissionDenied("Permission denied: only the Super-User may do this")
    Client(etc).call("out", pid=pid)


@app.command()
@reports_errors
def main_command(
    pid: str = typer.Argument(..., help="the MOSIX process (see mosps; with out: a guest, see mosps -V)"),
    action: str = typer.Argument(..., help="node-number | IP-address | host | " + " | ".join(ACTIONS)),
    etc: Path | None = typer.Option(None, "--etc", help=ETC_HELP),
) -> None:
    """mosmigrate {pid} {node-number | IP-address | host | home | out | freeze | continue | checkpoint |
    chkstop | chkexit}"""
    mosmigrate(pid, action, etc)


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
