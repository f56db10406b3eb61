"""Where a frozen process's memory image goes (mosix(7) freeze.conf, mosrun(1)
ALTERNATIVE FREEZING SPACE).

Which directories:

* the user's own, when set: the ``FREEZE_DIR`` environment variable (one directory)
  or ``$HOME/.freeze_dirs`` (several, with weights). The manual offers them as
  alternatives without saying which wins when both exist; here ``FREEZE_DIR`` does,
  because it is set per process ("your processes (or some of them)") while the file
  covers all of the user's processes. An empty ``FREEZE_DIR`` counts as unset, and
  a ``.freeze_dirs`` listing no directory falls back to the system's;
* otherwise freeze.conf's directories, ``/freeze`` when it lists none.

Which one of them, for an image of a given size: only directories whose file system
has that much space available count. Among those with a positive weight the choice is
random, each directory's chance proportional to its weight (freeze.conf's example:
weights 2, 0.5, 2.5 take 4, 1 and 5 of every 10 images); weight-0 directories are
the last resort, tried in the order listed only when no weighted one fits. A
directory that cannot be opened counts as full.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence

from attrs import frozen

from mosix_core.config.freeze import FreezeConfig, FreezeDir, parse_freeze_dirs_file
from mosix_core.config.source import read_text
from mosix_core.config.tokens import parse_path
from mosix_core.errors import MosixError

#: The manual's message (user's guide, 10.5 Error messages) when no freezing directory has room.
NO_SPACE = "No space to freeze"
FREEZE_DIR_VARIABLE = "FREEZE_DIR"
USER_FILE = ".freeze_dirs"


class NoSpaceToFreeze(MosixError):
    """No freezing directory has room for the image."""

    def __init__(self) -> None:
        super().__init__(NO_SPACE)


@frozen
class FreezeDirs:
    """The directories a process may be frozen to, and as whom the image is created.

    ``owner`` is the uid whose privileges create the image file: freeze.conf's
    ``U {uid}`` (0, root, without one) for the system's directories, the user's
    own uid for the user's directories (which need the user's write access and
    are subject to the user's disk quota). Creating as that uid — not creating as
    root and changing the owner after — is what NFS servers refusing root need.
    ``source`` names where the list came from, for messages; ``users_own`` says
    the list is the user's (FREEZE_DIR or .freeze_dirs), not the system's.
    """

    dirs: tuple[FreezeDir, ...]
    owner: int
    source: str
    users_own: bool


def freeze_dirs_for(config: FreezeConfig, env: Mapping[str, str], home: str | None, uid: int) -> FreezeDirs:
    """The freezing directories of a process of user ``uid`` with environment ``env``
    and home directory ``home`` (None: none). Raises ConfigError for a bad
    ``FREEZE_DIR`` or an unreadable or malformed ``$HOME/.freeze_dirs``."""
    value = env.get(FREEZE_DIR_VARIABLE, "")
    if value:
        path = parse_path(value, FREEZE_DIR_VARIABLE, None, "a freezing directory")
        return FreezeDirs(dirs=(FreezeDir(path),), owner=uid, source=FREEZE_DIR_VARIABLE, users_own=True)
    if home:
        name = os.path.join(home, USER_FILE)
        if os.path.lexists(name):
            dirs = parse_freeze_dirs_file(read_text(name), name)
            if dirs:
                return FreezeDirs(dirs=dirs, owner=uid, source=name, users_own=True)
    owner = 0 if config.uid is None else config.uid
    return FreezeDirs(dirs=config.dirs, owner=owner, source="freeze.conf", users_own=False)


def available_bytes(directory: str) -> int | None:
    """Space available for a new file in ``directory``; None when it is not an
    accessible directory."""
    try:
        # O_DIRECTORY: a regular file's statvfs would answer for its file system,
        # and creating the image "in" it would fail later.
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstatvfs(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    # f_bavail, not f_bfree: the blocks reserved for root are the system's safety
    # margin, not freezing space.
    return info.f_bavail * info.f_frsize


def freeze_dir_order(
    candidates: Sequence[FreezeDir], needed_bytes: int, rng: random.Random | None = None
) -> list[FreezeDir]:
    """The directories with room for ``needed_bytes``, in the order to try them: the
    weighted ones drawn at random by weight (without repetition), then the weight-0
    ones as listed. Writing may still run out of space (others freeze at the same
    time, quotas); the caller then goes on to the next."""
    draw = rng if rng is not None else random
    weighted: list[FreezeDir] = []
    last_resort: list[FreezeDir] = []
    for candidate in candidates:
        space = available_bytes(candidate.path)
        if space is None or space < needed_bytes:
            continue
        (weighted if candidate.weight > 0 else last_resort).append(candidate)
    order: list[FreezeDir] = []
    while weighted:
        total = sum(d.weight for d in weighted)
        point = draw.random() * total
        index = len(weighted) - 1  # rounding can leave point == total
        for position, candidate in enumerate(weighted):
            point -= candidate.weight
            if point < 0:
                index = position
                break
        order.append(weighted.pop(index))
    return order + last_resort


def choose_freeze_dir(
    candidates: Sequence[FreezeDir], needed_bytes: int, rng: random.Random | None = None
) -> FreezeDir:
    """The directory to freeze an image of ``needed_bytes`` to; NoSpaceToFreeze when
    none has room."""
    order = freeze_dir_order(candidates, needed_bytes, rng)
    if not order:
        raise NoSpaceToFreeze()
    return order[0]


def freeze_file_name(directory: str, *, node: str, pid: int, serial: int) -> str:
    """The image file of freeze number ``serial`` of process ``pid`` of home node
    ``node``: ``{directory}/freeze.{node}.{pid}.{serial}``.

    The node is part of the name because freezing directories may be shared (NFS)
    by several nodes whose pids collide; the serial (the process's count of freezes)
    keeps a new image from meeting a previous one still being removed. The name only
    needs to be unique while the file exists; create it with O_EXCL all the same.
    """
    if not node or "/" in node or "\0" in node:
        raise MosixError(f"a node name fit for a file name is needed, not {node!r}")
    if pid <= 0 or serial < 0:
        raise MosixError(f"no freeze file for pid {pid}, freeze {serial}")
    return os.path.join(directory, f"freeze.{node}.{pid}.{serial}")
