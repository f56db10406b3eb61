"""mosplugins — which plugins this node loads, and where each comes from."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import attrs
import typer

from mosix_core.cli.common import ETC_HELP, etc_path, new_app, print_json, reports_errors, run
from mosix_core.config import load_config
from mosix_core.plugins import build_plugin_manager, plugin_options

app = new_app("List the plugins on the hook bus and the package that supplied each.")


@app.command()
@reports_errors
def main_command(etc: Optional[Path] = typer.Option(None, "--etc", help=ETC_HELP),
                 as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    settings = load_config(etc_path(etc)).daemon
    pm = build_plugin_manager(**plugin_options(settings, etc_path(etc)))
    infos = pm.plugins_info()
    if as_json:
        print_json([{**attrs.asdict(i), "hooks": sorted(h.name for h in pm.get_hookcallers(pm.get_plugin(i.name)))}
                    for i in infos])
        return
    for info in infos:
        origin = f"{info.distribution} {info.version}" if info.distribution else info.source
        hooks = ", ".join(sorted(h.name for h in pm.get_hookcallers(pm.get_plugin(info.name))))
        typer.echo(f"{info.name:<20} {origin:<22} {info.location}  [{hooks}]")
    for name in settings.disabled_plugins:
        typer.echo(f"{name:<20} (disabled in mosd.conf)")
    for refused in pm.refused:                   # site hooks someone else could have written
        typer.echo(f"{str(refused.path):<20} (refused, not loaded: {refused.reason})")


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
