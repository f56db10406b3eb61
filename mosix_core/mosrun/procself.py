"""The programming interface of mosix(7): ``open("/proc/self/{special}", …)``.

A MOSIX process reads and changes its own run-time parameters by opening these
names; the value (or -1 with ``errno``) comes back from ``open`` itself:

* ``open(path, 0)`` reads, ``open(path, 1|O_CREAT, newval)`` writes (returns 0),
  ``open(path, 2|O_CREAT, newval)`` writes and returns the previous value;
* ``open("/proc/self/in_cluster", O_CREAT, node)`` asks whether ``node`` is in
  this cluster.

Reading a write-only name, writing a read-only one, or a value out of its range
fails with EINVAL. Outside ``mosrun`` none of these exist: ``open`` fails with
ENOENT, as Linux says.

These are not files: ``cat /proc/self/whereami`` gets the value as if it were a
descriptor and reads *that* descriptor (standard input at home, a closed one away).
The manual's interface stays as it is; a tool that was given such a name on its
command line (:func:`named_by_argument`) is told so once, on its standard error
(:func:`misread_note`), which is all that can be done without guessing: nothing
else tells ``cat``'s ``open(name, 0)`` from a MOSIX program's. See docs/proc-self.md.

A name neither the manual nor Linux defines (``/proc/self/site_quota``) is the site's:
its plugins answer it through the ``mosix_special_path`` hook (see docs/hooks.md);
when none does, the open fails with ENOENT, as Linux would have it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any, cast

import attrs

PREFIX = b"/proc/self/"
O_CREAT = 0x40

NEEDMEM_MAX = 262143
LIMIT_MAX = 10_000_000


@attrs.define
class MosixState:
    """A MOSIX process's run-time parameters (what mosrun's options set, and what
    the program may change itself)."""

    lock: int = 0  # -L: no automatic migration
    freezable: int = 1  # -g sets 0
    unsupportok: int = 0  # -e 1, -w 2, -u 0
    needmem: int = 0  # -m, in MB
    sigmig: int = 0
    cpujob: int = 0  # -c
    decayrate: int = 9976  # -d
    local_time: int = 0  # -t
    nmigs: int = 0
    checkpoint_file: str | None = None  # -C   (not inherited by children)
    checkpoint_limit: int = 0  # -N
    checkpoint_interval: int = 0  # -A
    checkpoint_version: int = 1
    statistics_cleared: int = 0  # how often "clear" was written
    strict: int = 0  # the manual's LIMITATIONS exactly (mosd.conf, the site's mosrun policy)

    def for_child(self) -> MosixState:
        """A forked child: everything but the checkpoint settings (mosrun(1) CHECKPOINTS)."""
        return attrs.evolve(self, checkpoint_file=None, checkpoint_limit=0, checkpoint_interval=0, checkpoint_version=1)


@attrs.frozen
class Special:
    readable: bool
    writable: bool
    low: int = 0
    high: int = 0
    field: str | None = None


SPECIALS: dict[str, Special] = {
    "lock": Special(True, True, 0, 1, "lock"),
    "freezable": Special(True, True, 0, 1, "freezable"),
    "whereami": Special(True, False),
    "nmigs": Special(True, False, field="nmigs"),
    "sigmig": Special(True, True, 0, 64, "sigmig"),
    "needmem": Special(True, True, 0, NEEDMEM_MAX, "needmem"),
    "unsupportok": Special(True, True, 0, 2, "unsupportok"),
    "clear": Special(False, True, -(1 << 31), (1 << 31) - 1),
    "cpujob": Special(True, True, 0, 1, "cpujob"),
    "decayrate": Special(True, True, 0, 10000, "decayrate"),
    "migrate": Special(False, True, -(1 << 31), (1 << 32) - 1),
    "checkpoint": Special(True, True, -(1 << 31), (1 << 31) - 1),
    "checkpointfile": Special(False, True),
    "checkpointlimit": Special(True, True, 0, LIMIT_MAX, "checkpoint_limit"),
    "checkpointinterval": Special(True, True, 0, LIMIT_MAX, "checkpoint_interval"),
    "in_cluster": Special(False, False),
}


#: the supervisor reads at most this many bytes of an opened path: a longer one is cut
PATH_READ_LIMIT = 64


def special_name(path: bytes) -> str | None:
    """The interface name ``path`` opens: one of the manual's, or one the site's plugins
    may answer; None for any other path (the kernel opens it)."""
    if not path.startswith(PREFIX):
        return None
    name = path[len(PREFIX) :].decode(errors="replace")
    if name in SPECIALS:
        return name
    return name if is_site_name(name, path) and site_plugins_answer_paths() else None


def is_site_name(name: str, path: bytes) -> bool:
    """May ``/proc/self/{name}`` be a site's? One whole path component that Linux's
    /proc/self does not have (a site cannot hide the kernel's own files), read whole."""
    return (
        len(path) < PATH_READ_LIMIT
        and name not in ("", ".", "..")
        and "/" not in name
        and "\ufffd" not in name
        and name not in _linux_names()
    )


_linux: list[frozenset[str]] = []


def _linux_names() -> frozenset[str]:
    if not _linux:
        _linux.append(frozenset(os.listdir("/proc/self")))
    return _linux[0]


# The site's plugin manager, built when a program first opens a name that may be the
# site's (rarely: most programs never do), then kept for the supervisor's life.
_site: list[Any] = []


def site_plugins() -> Any:
    """This node's plugin manager (:mod:`mosix_core.contract.plugins`), from the configuration
    directory mosrun runs with; None if it cannot be built (then no site name exists)."""
    if not _site:
        from mosix_core import paths
        from mosix_core.config import load_config_if_present
        from mosix_core.contract.plugins import plugin_manager_for
        from mosix_core.errors import MosixError

        etc = paths.etc_dir()
        try:
            config = load_config_if_present(etc)
            _site.append(plugin_manager_for(config.daemon if config is not None else None, etc))
        except MosixError:
            _site.append(None)  # mosrun itself said what is wrong when it started
    return _site[0]


def site_plugins_answer_paths() -> bool:
    pm = site_plugins()
    return pm is not None and bool(pm.hook.mosix_special_path.get_hookimpls())


def _site_open(state: MosixState, name: str, flags: int, newval: int, env: Environment) -> int:
    """A site name: the first plugin's :class:`SpecialPathResult` is the open's result."""
    from mosix_core.contract.plugins import first_answer
    from mosix_core.contract.records import OpeningProcess

    process = OpeningProcess(
        flags=flags, value=newval, where=env.whereami(), lock=bool(state.lock), needmem=state.needmem, nmigs=state.nmigs
    )
    pm = site_plugins()
    if pm is None:
        return -errno.ENOENT
    try:
        answer = first_answer(
            pm.hook.mosix_special_path, default=None, path=(PREFIX + name.encode()).decode(), process=process
        )
    except Exception:  # foreign code: its failure is the open's, never the supervisor's
        return -errno.EIO
    if answer is None:
        return -errno.ENOENT  # what Linux answers for a name /proc/self lacks
    return -answer.errno if answer.errno else answer.result


@attrs.frozen
class Environment:
    """What the interface needs from the rest of MOSIX."""

    whereami: Callable[[], int]  # 0 at home
    in_cluster: Callable[[int], bool]  # node number or host-order IP
    read_string: Callable[[int], bytes]  # a string in the process's memory
    migrate: Callable[[int], int] | None = None  # wired by the migration feature
    checkpoint: Callable[[], int] | None = None  # wired by the checkpoint feature


def _as_int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def handle(state: MosixState, name: str, flags: int, newval: int, env: Environment) -> int:
    """Carry out one special open; return the value for ``open`` to return, or -errno."""
    if name not in SPECIALS:
        return _site_open(state, name, flags, newval, env)
    spec = SPECIALS[name]
    access = flags & 3
    if name == "in_cluster":
        return 1 if env.in_cluster(newval & 0xFFFFFFFF) else 0
    if access == 3:
        return -errno.EINVAL
    reading = access in (0, 2)
    writing = access in (1, 2)
    if (reading and not spec.readable) or (writing and not spec.writable):
        return -errno.EINVAL
    previous = _read(state, name, spec, env) if reading else 0
    if writing:
        result = _write(state, name, spec, newval, env)
        if result < 0:
            return result
        if access == 1:
            return result
    return previous


def _read(state: MosixState, name: str, spec: Special, env: Environment) -> int:
    if name == "whereami":
        return env.whereami()
    if name == "checkpoint":
        return state.checkpoint_version
    return getattr(state, cast(str, spec.field))  # every other readable name has one


def _write(state: MosixState, name: str, spec: Special, newval: int, env: Environment) -> int:
    if name == "checkpointfile":
        try:
            text = env.read_string(newval)
        except OSError:
            return -errno.EFAULT
        if not text:
            return -errno.EINVAL
        state.checkpoint_file = text.decode(errors="surrogateescape")
        state.checkpoint_version = 1
        return 0
    value = (newval & 0xFFFFFFFF) if name == "migrate" else _as_int32(newval)
    if not spec.low <= value <= spec.high:
        return -errno.EINVAL
    if name == "clear":
        state.statistics_cleared += 1
        return 0
    if name == "migrate":
        if env.migrate is not None:
            return env.migrate(value)
        # at home without the migration feature: "go home" is already done;
        # anything else cannot succeed (yet)
        return 0 if value == 0 else -errno.EOPNOTSUPP
    if name == "checkpoint":
        if env.checkpoint is not None:
            return env.checkpoint()
        return -errno.EOPNOTSUPP
    setattr(state, cast(str, spec.field), value)  # every other writable name has one
    return 0


def named_by_argument(path: bytes, command: str) -> bool:
    """Was the special name one of the program's arguments (``command``, its command
    line)? Then the opener is a tool that reads the files it is given (cat, head, od…),
    not a program that knows the interface, which names these files itself. (Only the
    manual's names: what a site's name means is the site's to say.)"""
    return special_name_of_manual(path) and path.decode(errors="replace") in command.split()[1:]


def special_name_of_manual(path: bytes) -> bool:
    return path.startswith(PREFIX) and path[len(PREFIX) :].decode(errors="replace") in SPECIALS


def misread_note(name: str, value: int) -> str:
    shown = f"here {value}" if value >= 0 else f"here -1, errno {errno.errorcode.get(-value, -value)}"
    return (
        f"/proc/self/{name} is not a file: its answer is the return value of open() ({shown}), "
        "not something to read - see mosix(7), INTERFACE FOR PROGRAMS"
    )
