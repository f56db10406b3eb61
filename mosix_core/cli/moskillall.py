"""moskillall — send a signal to all your MOSIX processes (moskillall(1)).

``moskillall [-{signum} | -{symbolic_signal}] [--etc DIR]``

* The signal: SIGTERM by default; ``-9`` or ``-KILL`` style, with exactly the
  symbolic names of the manual (no ``SIG`` prefix). SIGSTOP (``-STOP`` or ``-19``)
  is sent as SIGTSTP: MOSIX processes must not receive SIGSTOP.
* The processes: every row of mosd's process table whose home is here and that
  belongs to the caller (root: every user's). Guests (processes whose home is
  another node) are not signalled from here: their home node does that.
  moskillall never signals itself.
* Errors: a process that exited meanwhile is skipped silently; any other failure
  is reported on stderr as ``moskillall: {pid}: {reason}`` and the others are still
  signalled. Exit status: 0 when every process was signalled (or had exited), 1 when
  at least one could not be, or on a bad signal or when MOSIX is not running.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import attrs
import typer

from mosix_core.cli.common import ETC_HELP, etc_path, new_app, reports_errors, run
from mosix_core.cluster.proctable import ProcessRecord
from mosix_core.daemon import protocol as p
from mosix_core.daemon.client import Client
from mosix_core.errors import MosixError

app = new_app("Send a signal (SIGTERM by default) to all your MOSIX processes.")

SYMBOLIC = (
    "HUP INT QUIT ILL TRAP ABRT BUS FPE KILL USR1 SEGV USR2 PIPE ALRM TERM STKFLT CHLD CONT STOP "
    "TSTP TTIN TTOU URG XCPU XFSZ VTALRM PROF WINCH POLL PWR SYS"
).split()


def parse_signal(text: str) -> int:
    """A signal number from ``9`` or ``KILL`` (SIGSTOP becomes SIGTSTP)."""
    if text.isascii() and text.isdigit():
        number = int(text)
        if not 1 <= number < signal.NSIG:
            raise MosixError(f"{text}: no such signal (1 to {signal.NSIG - 1})")
    elif text in SYMBOLIC:
        number = int(getattr(signal, "SIG" + text))
    else:
        raise MosixError(f"{text}: unknown signal; use a number or one of: {' '.join(SYMBOLIC)}")
    return int(signal.SIGTSTP) if number == signal.SIGSTOP else number


def rewrite(argv: list[str]) -> list[str]:
    """``-9`` / ``-KILL`` → ``--signal 9`` / ``--signal KILL``; everything else as it is."""
    out = []
    for arg in argv:
        if arg.startswith("-") and not arg.startswith("--") and len(arg) > 1:
            out += ["--signal", arg[1:]]
        else:
            out.append(arg)
    return out


@attrs.frozen
class KillReport:
    signalled: list[int]
    gone: list[int]  # exited before the signal reached them
    failed: list[tuple[int, str]]


def targets(rows: list[ProcessRecord], uid: int) -> list[ProcessRecord]:
    """The caller's local MOSIX processes (root: everybody's); never guests, never us."""
    return [r for r in rows if not r.is_guest and (uid == 0 or r.uid == uid) and r.pid != os.getpid()]


def kill_all(etc: Path, signum: int = signal.SIGTERM, uid: int | None = None) -> KillReport:
    if signum == signal.SIGSTOP:
        signum = signal.SIGTSTP
    rows = list(Client(etc).request(p.ProcessesRequest()).processes)
    signalled, gone, failed = [], [], []
    for record in targets(rows, os.geteuid() if uid is None else uid):
        try:
            os.kill(record.pid, signum)
        except ProcessLookupError:
            gone.append(record.pid)
        except OSError as err:
            failed.append((record.pid, err.strerror or str(err)))
        else:
            signalled.append(record.pid)
    return KillReport(signalled, gone, failed)


@app.command()
@reports_errors
def main_command(
    sig: str = typer.Option("TERM", "--signal", hidden=True, help="the signal (written -{signum} or -{NAME})"),
    etc: Path | None = typer.Option(None, "--etc", help=ETC_HELP),
) -> None:
    """moskillall [-{signum} | -{symbolic_signal}]

    Symbolic signals: HUP INT QUIT ILL TRAP ABRT BUS FPE KILL USR1 SEGV USR2 PIPE ALRM TERM STKFLT
    CHLD CONT STOP TSTP TTIN TTOU URG XCPU XFSZ VTALRM PROF WINCH POLL PWR SYS (STOP is sent as TSTP).
    """
    report = kill_all(etc_path(etc), parse_signal(sig))
    for pid, reason in report.failed:
        typer.echo(f"moskillall: {pid}: {reason}", err=True)
    if report.failed:
        raise typer.Exit(1)


def main() -> None:
    run(app, rewrite=rewrite)


if __name__ == "__main__":
    main()
