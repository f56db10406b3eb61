"""Building the hook bus: built-ins, installed entry points and site hook modules.

One plugin manager per process. Built-in features are registered through the
``mosix.plugins`` entry-point group exactly like third-party ones, so a site can
disable any of them by name (``disabled_plugins`` in ``mosd.conf``) and replace it.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import pwd
import stat
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import pluggy

from mosix_core import log
from mosix_core.contract import hookspecs
from mosix_core.contract.entry_points import entry_points, normalized
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
        self.refused: list[UnsafeHook] = []  # site hooks not loaded, and why

    def register_module(self, module: ModuleType | Any, info: PluginInfo) -> None:
        if self.is_blocked(info.name):
            return
        if self.get_plugin(info.name) is not None:
            raise MosixError(
                f"plugin name '{info.name}' is used twice ({info.location} and {self.origins[info.name].location})"
            )
        try:
            self.register(module, name=info.name)
        except pluggy.PluginValidationError as err:
            raise MosixError(f"plugin '{info.name}' ({info.location}): {err}") from err
        self._refuse_chained_wrappers(module, info)
        self.origins[info.name] = info

    def _refuse_chained_wrappers(self, module: ModuleType | Any, info: PluginInfo) -> None:
        """A chained hook passes each implementation's result to the next one: a wrapper
        (``wrapper=True``/``hookwrapper=True``) has no place in that chain."""
        for caller in self.get_hookcallers(module) or ():
            if caller.name not in hookspecs.CHAINED_HOOKS:
                continue
            for impl in caller.get_hookimpls():
                if impl.plugin is module and (impl.wrapper or impl.hookwrapper):
                    self.unregister(module)
                    raise MosixError(
                        f"plugin '{info.name}' ({info.location}): {caller.name} is a chained "
                        "policy (each implementation sees the request as the previous one left "
                        "it); it cannot be a wrapper: drop wrapper=True/hookwrapper=True and "
                        "return the request, changed or None"
                    )

    def plugins_info(self) -> list[PluginInfo]:
        return [self.origins[name] for name in sorted(self.origins)]


class UnsafeHook(ConfigError):
    """A site hook someone else could have written: it runs as whoever loads it (root,
    in mosd), so it is not loaded."""


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"user {uid}"


def _check_trusted(shown: str, info: os.stat_result, where: str, *, ancestor: bool) -> None:
    """``where`` (``info``: its lstat) may be changed only by root or by us. A directory
    above the hooks, root's and sticky (/tmp), lets others change only their own entries:
    it may be written by others, as sudo allows for its plugins' paths."""
    me = os.geteuid()
    if info.st_uid not in (0, me):
        raise UnsafeHook(
            shown, f"{where} is owned by {_owner(info.st_uid)}, not by root" + ("" if me == 0 else f" or {_owner(me)}")
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        if ancestor and stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX and info.st_uid == 0:
            return
        whom = " and ".join(
            name for bit, name in ((stat.S_IWGRP, "its group"), (stat.S_IWOTH, "others")) if info.st_mode & bit
        )
        raise UnsafeHook(shown, f"{where} is writable by {whom}")


def _trusted_directory(directory: Path) -> Path:
    """The real path of the hooks directory, every directory from / down to it checked;
    the modules are then read through that path, not through links others may change."""
    real = Path(os.path.realpath(directory))
    chain = [*reversed(real.parents), real]
    for at in chain:
        _check_trusted(str(directory), os.lstat(at), str(at), ancestor=at != real)
    return real


def _read_trusted(path: Path) -> bytes:
    """A module's source, from the file as opened (so what was checked is what runs)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafeHook(str(path), "is a symbolic link") from None
        raise ConfigError(str(path), f"cannot be read: {err.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeHook(str(path), "is not a regular file")
        _check_trusted(str(path), info, str(path), ancestor=False)
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def load_site_hooks(pm: MosixPluginManager, directory: Path) -> None:
    """Register every ``*.py`` module of a site hook directory, in name order.

    Only modules that nobody but root (or the user running us) could have written are
    loaded: the directory, every directory above it and the module itself. Any other is
    refused — logged with the reason, and the program goes on without it."""
    if not directory.is_dir():
        raise ConfigError(str(directory), "site hook directory does not exist")
    try:
        real = _trusted_directory(directory)
    except UnsafeHook as err:
        _refused(pm, err)
        return
    for path in sorted(real.glob("*.py")):
        if path.name.startswith("_"):
            continue
        name = f"site:{path.stem}"
        if pm.is_blocked(name) or pm.is_blocked(path.stem):
            continue
        shown = directory / path.name
        try:
            source = _read_trusted(path)
        except UnsafeHook as err:
            _refused(pm, err)
            continue
        # read and compiled here, not through importlib's loader: it would also take a
        # cached .pyc from __pycache__, which nothing above has checked
        spec = importlib.util.spec_from_loader(f"mosix_site_hooks.{path.stem}", loader=None, origin=str(shown))
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        module.__file__ = str(shown)
        try:
            exec(compile(source, str(shown), "exec"), module.__dict__)
        except Exception as err:  # a site hook is foreign code: report, don't crash with a traceback
            raise ConfigError(str(shown), f"site hook failed to load: {type(err).__name__}: {err}") from err
        pm.register_module(module, PluginInfo(name, "site hook", None, None, str(shown)))


def _refused(pm: MosixPluginManager, err: UnsafeHook) -> None:
    pm.refused.append(err)
    log.get("plugins").error("site hook refused: not loaded", path=err.path, reason=err.reason)


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
            raise MosixError(
                f"plugin '{ep.name}' from {ep.distribution} failed to load: {type(err).__name__}: {err}"
            ) from err
        pm.register_module(module, PluginInfo(ep.name, "entry point", ep.distribution, ep.version, ep.value))
    if not found_builtins:
        raise MosixError(
            "mosix-py is not installed (no 'mosix.plugins' entry points found): run 'pip install .' in the source tree"
        )
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


_NO_DEFAULT: Any = object()


class NoAnswer(MosixError):
    """A "who decides?" hook that must be answered was not: the built-in that answers it
    is disabled (``disabled_plugins``) and nothing replaced it."""


def first_answer(hook: pluggy.HookCaller, /, *, default: Any = _NO_DEFAULT, **kwargs: Any) -> Any:
    """Call a ``firstresult`` hook: the first implementation's answer that is not ``None``.

    When none answers, ``default`` is the answer; without a default, that is an error
    (:class:`NoAnswer`) naming the hook, because the kernel cannot go on without one."""
    answer = hook(**kwargs)
    if answer is not None:
        return answer
    if default is _NO_DEFAULT:
        raise NoAnswer(f"no plugin answers {hook.name} (is its built-in in disabled_plugins?)")
    return default


def apply_policies(pm: pluggy.PluginManager, hook_name: str, request: Any) -> Any:
    """Run a chained policy hook (:data:`mosix_core.contract.hookspecs.CHAINED_HOOKS`): each
    implementation sees the request as the previous one left it. ``None`` keeps it; a
    returned value replaces it; ``PolicyRefused`` stops.

    Implementations run in pluggy's call order (last registered first, ``tryfirst``/
    ``trylast`` respected), so a site hook runs before the built-ins. Each is called
    through pluggy (a hook caller of its plugin alone), so tracing and monitoring see it.
    """
    if hook_name not in hookspecs.CHAINED_HOOKS:
        raise MosixError(f"{hook_name} is not a chained hook")
    impls = getattr(pm.hook, hook_name).get_hookimpls()
    for impl in reversed(impls):
        alone = pm.subset_hook_caller(hook_name, remove_plugins=[i.plugin for i in impls if i is not impl])
        answers = alone(request=request)
        if answers and answers[0] is not None:
            request = answers[0]
    return request


__all__ = [
    "MosixPluginManager",
    "PluginInfo",
    "UnsafeHook",
    "NoAnswer",
    "apply_policies",
    "build_plugin_manager",
    "first_answer",
    "load_site_hooks",
    "plugin_manager_for",
    "reset_plugin_manager",
]
