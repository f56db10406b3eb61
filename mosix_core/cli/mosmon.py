"""mosmon — MOSIX monitor (mosmon(1)): a bar chart of the nodes' loads, speeds, memory…

The model and the drawing are in ``mosix_core.cluster.monitor``; this module only parses the
options, fetches the cluster view from the local mosd every interval and paints it
with curses (or prints one screen with ``--once``, or when stdout is not a terminal).
"""

from __future__ import annotations

import curses
import locale
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import typer

from mosix_core.cli.common import ETC_HELP, etc_path, new_app, reports_errors, run
from mosix_core.cluster.monitor import ENTER, LEFT, RIGHT, MonitorState, handle_key, render
from mosix_core.daemon import protocol as p
from mosix_core.daemon.client import Client
from mosix_core.errors import MosixError

app = new_app("Display the load, speed, memory, swap space, frozen processes or cores of the MOSIX nodes.")


def initial_state(
    *,
    vertical: bool = False,
    tight: bool = False,
    horizontal: bool = False,
    count: bool = False,
    dead: bool = False,
    speed: bool = False,
    memory: int = 0,
    frozen: bool = False,
    cores: bool = False,
    load: bool = False,
) -> MonitorState:
    """The state the command-line options ask for (mosmon(1) SYNOPSIS)."""
    numberings = [key for key, given in (("v", vertical), ("V", tight), ("w", horizontal)) if given]
    if len(numberings) > 1:
        raise typer.BadParameter("choose only one of -v, -V and -w")
    modes = [
        m
        for m, given in (
            ("speed", speed),
            ("mem", memory == 1),
            ("swap", memory >= 2),
            ("frozen", frozen),
            ("cores", cores),
            ("load", load),
        )
        if given
    ]
    if len(modes) > 1:
        raise typer.BadParameter("choose only one of -s, -m, -m -m, -f, -c and -l")
    return MonitorState(
        mode=modes[0] if modes else "load",
        numbering=numberings[0] if numberings else "a",
        show_dead=dead,
        show_count=count,
    )


def fetch(client: Client) -> tuple[dict[str, Any] | None, str | None]:
    """The view, or why there is none (mosd not running, not answering…)."""
    try:
        return p.encode(client.request(p.ViewRequest())), None
    except MosixError as err:
        return None, f"[retrying] {err}"


def once(etc: Path, state: MonitorState) -> list[str]:
    """One screen for stdout, as big as the terminal (80x24 when there is none)."""
    size = shutil.get_terminal_size((80, 24))
    lines = render(state, p.encode(Client(etc).request(p.ViewRequest())), size.columns, size.lines)
    while lines and not lines[-1]:
        lines.pop()
    return lines


_CURSES_KEYS = {
    curses.KEY_RIGHT: RIGHT,
    curses.KEY_LEFT: LEFT,
    curses.KEY_ENTER: ENTER,
    10: ENTER,
    13: ENTER,
    curses.KEY_NPAGE: "n",
    curses.KEY_PPAGE: "p",
}


def key_name(code: int) -> str | None:
    """A curses key code as ``handle_key`` knows it (None: nothing, or a key we ignore)."""
    if code in _CURSES_KEYS:
        return _CURSES_KEYS[code]
    if 32 <= code < 127:
        return chr(code)
    return None


def _paint(screen: Any, lines: list[str], clear: bool) -> None:
    if clear:
        screen.clear()
    else:
        screen.erase()
    for y, line in enumerate(lines):
        try:
            screen.addstr(y, 0, line)
        except curses.error:  # the bottom-right cell cannot be written; render stays inside anyway
            pass
    screen.refresh()


def _loop(screen: Any, client: Client, state: MonitorState, interval: float) -> None:
    try:
        curses.curs_set(0)
    except curses.error:
        pass
    screen.keypad(True)
    view: dict[str, Any] | None = None
    message: str | None = None
    due = 0.0
    while not state.quit:
        if time.monotonic() >= due:
            view, message = fetch(client)
            due = time.monotonic() + interval
        height, width = screen.getmaxyx()
        _paint(screen, render(state, view, width, height, message), state.redraw)
        state.redraw = False
        screen.timeout(max(0, int((due - time.monotonic()) * 1000)))
        code = screen.getch()
        if code == curses.KEY_RESIZE:
            state.redraw = True
            continue
        key = key_name(code)
        if key is not None:
            handle_key(state, key)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through curses.wrapper, which restores the terminal


def monitor(etc: Path, state: MonitorState, interval: float = 1.0) -> None:
    """The interactive monitor until ``q`` (the terminal is restored however it ends)."""
    locale.setlocale(locale.LC_ALL, "")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    client = Client(etc, timeout=max(1.0, min(5.0, 2 * interval)))
    try:
        curses.wrapper(_loop, client, state, interval)
    except curses.error as err:
        raise MosixError(f"cannot use this terminal ({err}); try --once") from None


@app.command()
@reports_errors
def main_command(
    vertical: bool = typer.Option(False, "-v", help="vertical numbering: more nodes are visible"),
    tight: bool = typer.Option(False, "-V", help="tight vertical numbering: the most nodes are visible"),
    horizontal: bool = typer.Option(False, "-w", help="horizontal numbering: better display, fewer nodes"),
    count: bool = typer.Option(False, "-t", help="display the number of operational nodes and CPUs"),
    dead: bool = typer.Option(False, "-d", help="display also dead (not responding) nodes"),
    speed: bool = typer.Option(False, "-s", help="display the CPU speeds"),
    memory: int = typer.Option(0, "-m", count=True, help="display used vs. total memory (-m -m: swap space)"),
    frozen: bool = typer.Option(False, "-f", help="display the number of frozen processes"),
    cores: bool = typer.Option(False, "-c", help="display the number of cores"),
    load: bool = typer.Option(False, "-l", help="display the load (default)"),
    etc: Path | None = typer.Option(None, "--etc", help=ETC_HELP),
    one_screen: bool = typer.Option(False, "--once", help="print one screen to stdout and exit (no curses)"),
    interval: float = typer.Option(1.0, "--interval", min=0.05, help="seconds between refreshes"),
) -> None:
    state = initial_state(
        vertical=vertical,
        tight=tight,
        horizontal=horizontal,
        count=count,
        dead=dead,
        speed=speed,
        memory=memory,
        frozen=frozen,
        cores=cores,
        load=load,
    )
    if one_screen or not (sys.stdin.isatty() and sys.stdout.isatty()):
        for line in once(etc_path(etc), state):
            typer.echo(line)
        return
    monitor(etc_path(etc), state, interval)


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
