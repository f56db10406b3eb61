"""What every mos* command shares: the --etc option, MOSIX-style argv, error reporting."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import typer

from mosix_core import paths
from mosix_core.errors import MosixError

CONTEXT = {"help_option_names": ["--help"]}  # -h is a MOSIX option in several tools
ETC_HELP = "configuration directory (default: $MOSIX_ETC, else /etc/mosix)"


def new_app(help_text: str) -> typer.Typer:
    return typer.Typer(
        add_completion=False,
        context_settings=CONTEXT,
        help=help_text,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )


def etc_path(etc: Path | None) -> Path:
    return paths.etc_dir(etc)


def reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print a MosixError as the tool's one-line message and exit 1 — never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MosixError as err:
            prog = Path(sys.argv[0]).name or "mosix"
            typer.echo(f"{prog}: {err}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def run(
    app: typer.Typer, argv: Sequence[str] | None = None, rewrite: Callable[[list[str]], list[str]] | None = None
) -> None:
    """Entry point: MOSIX argv rewriting (``-off``, ``-m500``) then typer. (Logging
    is configured when something first logs.)"""
    args = list(sys.argv[1:] if argv is None else argv)
    if rewrite is not None:
        args = rewrite(args)
    app(args=args, prog_name=Path(sys.argv[0]).name if argv is None else None)
