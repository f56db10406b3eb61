"""mosplugins — which plugins this node loads, and where each comes from."""

from __future__ import annotations

from pathlib import Path

import attrs
import typer

from mosix_core.cli.common import ETC_HELP, etc_path, new_app, print_json, reports_errors, run
from mosix_core.config import load_config
from mosix_core.contract.plugins import MosixPluginManager, build_plugin_manager, plugin_options

app = new_app("List the plugins on the hook bus and the package that supplied each.")


@app.command()
@reports_errors
def main_command(
    etc: Path | None = typer.Option(None, "--etc", help=ETC_HELP),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    settings = load_config(etc_path(etc)).daemon
    pm = build_plugin_manager(**plugin_options(settings, etc_path(etc)))
    infos = pm.plugins_info()
    if as_json:
        print_json([{**attrs.asdict(i), "hooks": hooks_of(pm, i.name)} for i in infos])
        return
    for info in infos:
        origin = f"{info.distribution} {info.version}" if info.distribution else info.source
        hooks = ", ".join(hooks_of(pm, info.name))
        typer.echo(f"{info.name:<20} {origin:<22} {info.location}  [{hooks}]")
    for name in settings.disabled_plugins:
        typer.echo(f"{name:<20} (disabled in mosd.conf)")
    for refused in pm.refused:  # site hooks someone else could have written
        typer.echo(f"{str(refused.path):<20} (refused, not loaded: {refused.reason})")


def hooks_of(pm: MosixPluginManager, name: str) -> list[str]:
    """The hooks plugin ``name`` implements."""
    return sorted(caller.name for caller in pm.get_hookcallers(pm.get_plugin(name)) or ())


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
