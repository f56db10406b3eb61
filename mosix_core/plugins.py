"""Building the hook bus: built-ins, installed entry points and site hook modules.

One plugin manager per process. Built-in features are registered through the
``mosix.plugins`` entry-point group exactly like third-party ones, so a site can
disable any of them by name (``disabled_plugins`` in ``mosd.conf``) and replace it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable

import attrs
import pluggy

from mosix_core import hookspecs
from mosix_core.entry_points import entry_points, normalized
from mosix_core.errors import ConfigError, MosixError

OUR_DISTRIBUTION = "mosix-py"


@attrs.frozen
class PluginInfo:
    """Where a registered plugin came from, for ``mosplugins`` and error messages."""

    name: str
    source: str  # "entry point" or "site hook"
    distribution: str | None
    version: str | None
    location: str


class MosixPluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers where each plugin came from."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.origins: dict[str, PluginInfo] = {}

    def register_module(self, module: ModuleType | Any, info: PluginInfo) -> None:
        if self.is_blocked(info.name):
            return
        if self.get_plugin(info.name) is not None:
            raise MosixError(f"plugin name '{info.name}' is used twice ({info.location} and "
                             f"{self.origins[info.name].location})")
        try:
            self.register(module, name=info.name)
        except pluggy.PluginValidationError as err:
            raise MosixError(f"plugin '{info.name}' ({info.location}): {err}") from err
        self.origins[info.name] = info

    def plugins_info(self) -> list[PluginInfo]:
        return [self.origins[name] for name in sorted(self.origins)]


def load_site_hooks(pm: MosixPluginManager, directory: Path) -> None:
    """Register every ``*.py`` module of a site hook directory, in name order."""
    if not directory.is_dir():
        raise ConfigError(str(directory), "site hook directory does not exist")
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        name = f"site:{path.stem}"
        if pm.is_blocked(name) or pm.is_blocked(path.stem):
            continue
        spec = importlib.util.spec_from_file_location(f"mosix_site_hooks.{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ConfigError(str(path), "cannot be loaded as a Python module")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # a site hook is foreign code: report, don't crash with a traceback
            raise ConfigError(str(path), f"site hook failed to load: {type(err).__name__}: {err}") from err
        pm.register_module(module, PluginInfo(name, "site hook", None, None, str(path)))


def build_plugin_manager(
    *, disabled: Iterable[str] = (), hooks_dir: Path | None = None, extra: Iterable[tuple[str, Any]] = ()
) -> MosixPluginManager:
    """Build the hook bus: entry points (built-ins included), site hooks, then ``extra``.

    ``extra`` registers in-process plugins (used by tests and by embedding code).
    Unknown hook names in any plugin fail loudly.
    """
    pm = MosixPluginManager()
    for name in disabled:
        pm.set_blocked(name)
    found_builtins = False
    for ep in entry_points(hookspecs.ENTRY_POINT_GROUP):
        ours = normalized(ep.distribution) == OUR_DISTRIBUTION
        found_builtins = found_builtins or ours
        if pm.is_blocked(ep.name):
            continue
        try:
            module = ep.load()
        except Exception as err:
            raise MosixError(f"plugin '{ep.name}' from {ep.distribution} failed to load: "
                             f"{type(err).__name__}: {err}") from err
        pm.register_module(module, PluginInfo(ep.name, "entry point", ep.distribution,
                                              ep.version, ep.value))
    if not found_builtins:
        raise MosixError("mosix-py is not installed (no 'mosix.plugins' entry points found): "
                         "run 'pip install .' in the source tree")
    if hooks_dir is not None:
        load_site_hooks(pm, hooks_dir)
    for name, plugin in extra:
        pm.register_module(plugin, PluginInfo(name, "in-process", None, None, repr(plugin)))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        raise MosixError(f"unknown hook: {err}") from err
    return pm


_cached: MosixPluginManager | None = None


def plugin_manager_for(settings: Any | None = None, etc: Path | None = None) -> MosixPluginManager:
    """The process-wide plugin manager, built on first use from ``settings`` (a
    :class:`mosix_core.config.DaemonSettings`, or ``None`` for defaults); a relative
    ``hooks_dir`` is taken relative to the configuration directory ``etc``."""
    global _cached
    if _cached is None:
        _cached = build_plugin_manager(**plugin_options(settings, etc))
    return _cached


def plugin_options(settings: Any | None, etc: Path | None) -> dict[str, Any]:
    if settings is None:
        return {}
    hooks = settings.hooks_path(etc or Path(".")) if settings.hooks_dir else None
    return {"disabled": tuple(settings.disabled_plugins), "hooks_dir": hooks}


def reset_plugin_manager() -> None:
    """Forget the cached manager (tests, and ``mossetpe`` reloading configuration)."""
    global _cached
    _cached = None


def apply_policies(pm: pluggy.PluginManager, hook_name: str, request: Any) -> Any:
    """Run a chaining policy hook: each implementation sees the request as the previous
    one left it. ``None`` keeps it; a returned value replaces it; ``PolicyRefused`` stops.

    Implementations run in pluggy's call order (last registered first, ``tryfirst``/
    ``trylast`` respected), so a site hook runs before the built-ins.
    """
    caller: Callable[..., Any] = getattr(pm.hook, hook_name)
    for impl in reversed(caller.get_hookimpls()):
        result = impl.function(request=request)
        if result is not None:
            request = result
    return request


__all__ = [
    "MosixPluginManager",
    "PluginInfo",
    "apply_policies",
    "build_plugin_manager",
    "load_site_hooks",
    "plugin_manager_for",
    "reset_plugin_manager",
]
