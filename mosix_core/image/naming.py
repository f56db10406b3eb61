"""Checkpoint file names (mosrun(1) CHECKPOINTS) and writing a checkpoint file safely.

Naming, from the manual:

* ``-C{filename}``: each checkpoint gets a consecutive numeric extension unless the
  name already has one, in which case numbering starts there — ``-Cmysave`` gives
  ``mysave.1``, ``mysave.2``, …; ``-Csave.4`` gives ``save.4``, ``save.5``, ….
* no ``-C``: ``ckpt.{pid}.1``, ``ckpt.{pid}.2``, … (the pid is not an extension).
* ``-N{max}``: after ``max`` files the versions are recycled — ``-Csave.4 -N3``
  gives save.4, save.5, save.6, save.4, …; ``-N0`` (the default) never recycles.

A *version* is the number in the file name: what reading ``/proc/self/checkpoint``
returns before a checkpoint ("the version number of the next checkpoint to be made")
is exactly the extension of the file that checkpoint will write. So with
``-Csave.4`` the first version is 4, not 1.

An extension is numeric when the last path component is ``{stem}.{digits}`` with a
non-empty stem (``.5`` is a hidden file without an extension). Leading zeros keep
their width: ``-Csave.04`` gives save.04, save.05, …, save.99, save.100.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import BinaryIO, TypeVar

from attrs import define

from mosix_core.errors import MosixError

#: The manual's warning when checkpoints were requested into an unwritable directory.
NO_WRITE_ACCESS = "WARNING: no write-access in checkpoint directory!"
#: mosix(7) /proc/self/checkpointlimit: "The maximal value allowed is 10000000."
MAX_LIMIT = 10_000_000
# Versions come back from open("/proc/self/checkpoint") as a C int.
MAX_VERSION = 2**31 - 1
# mode of a finished checkpoint: "its mode is changed to 0400 (read-only)"
FINISHED_MODE = 0o400

T = TypeVar("T")


class CheckpointSettingError(MosixError):
    """A checkpoint file name or limit that cannot be used (the message says why)."""


class CheckpointFileError(MosixError):
    """Creating, finishing or replacing a checkpoint file failed; ``errno`` is kept."""

    def __init__(self, path: str, action: str, err: OSError) -> None:
        self.path = path
        self.errno = err.errno or 0
        super().__init__(f"Checkpoint file {path}: cannot {action}: {err.strerror or err}")


def split_name(name: str) -> tuple[str, int, int]:
    """``(stem, first version, zero-padding width)`` for a ``-C`` argument.

    ``"save.4"`` → ``("save", 4, 0)``; ``"mysave"`` → ``("mysave", 1, 0)``;
    ``"save.04"`` → ``("save", 4, 2)``.
    """
    if not name:
        raise CheckpointSettingError("the checkpoint file name is empty")
    if "\0" in name:
        raise CheckpointSettingError("the checkpoint file name contains a NUL character")
    last = name.rsplit("/", 1)[-1]
    if last in ("", ".", ".."):
        # A directory: adding ".1" to it would silently create "..1" or "dir/.1".
        raise CheckpointSettingError(f"the checkpoint file name {name!r} names a directory, not a file")
    stem, dot, digits = last.rpartition(".")
    if not (dot and stem and digits.isascii() and digits.isdigit()):
        return name, 1, 0
    first = int(digits)
    if first > MAX_VERSION:
        raise CheckpointSettingError(f"the numeric extension of {name!r} is larger than {MAX_VERSION}")
    width = len(digits) if len(digits) > 1 and digits.startswith("0") else 0
    return name[: len(name) - len(digits) - 1], first, width


def check_limit(limit: int) -> int:
    if not 0 <= limit <= MAX_LIMIT:
        raise CheckpointSettingError(
            f"the maximum number of checkpoints must be between 0 and {MAX_LIMIT}, not {limit}"
        )
    return limit


@define
class CheckpointNaming:
    """Where a process's checkpoints go, and which version comes next.

    ``stem`` is the name without its version (``save`` for ``-Csave.4``), ``first``
    the first version, ``width`` the zero-padding of the version (0: none), ``limit``
    the ``-N`` value (0: unlimited) and ``next`` the version of the next checkpoint.
    Build one with :meth:`for_process`; mutate it only through the methods.
    """

    stem: str
    first: int
    width: int = 0
    limit: int = 0
    next: int = 0

    @classmethod
    def for_process(cls, pid: int, name: str | None = None, limit: int = 0) -> CheckpointNaming:
        """The naming of a process started with ``-C{name}`` (None: no -C) and ``-N{limit}``."""
        if name is None:
            stem, first, width = f"ckpt.{pid}", 1, 0
        else:
            stem, first, width = split_name(name)
        return cls(stem=stem, first=first, width=width, limit=check_limit(limit), next=first)

    def next_version(self) -> int:
        """The version the next checkpoint will be written as (reading /proc/self/checkpoint)."""
        return self.next

    def file_name(self, version: int) -> str:
        """The name (relative or absolute, as given) of a given version's file."""
        return f"{self.stem}.{version:0{self.width}d}"

    def next_path(self, cwd: str) -> str:
        """The file the next checkpoint goes to; a relative name is relative to ``cwd``
        (the process's working directory when the checkpoint is taken)."""
        return os.path.join(cwd, self.file_name(self.next))

    def directory(self, cwd: str) -> str:
        """The directory checkpoints are created in (for :func:`can_write_in`)."""
        return os.path.dirname(self.next_path(cwd)) or "/"

    def advance(self) -> None:
        """Count a produced checkpoint file. Call it for every file made, a good one or
        one holding only an error message: the manual counts both toward ``-N``."""
        following = self.next + 1
        if self._outside_window(following):
            following = self.first
        self.next = following

    def set_base(self, name: str) -> None:
        """Writing /proc/self/checkpointfile: future checkpoints use ``name``, numbered
        from its extension (or 1). The limit stays; it has its own /proc file."""
        self.stem, self.first, self.width = split_name(name)
        self.next = self.first

    def set_limit(self, limit: int) -> None:
        """Writing /proc/self/checkpointlimit (0: unlimited). The next version is kept
        unless the new limit puts it beyond the recycled range; then recycling starts
        at once with the first version."""
        self.limit = check_limit(limit)
        if self._outside_window(self.next):
            self.next = self.first

    def _outside_window(self, version: int) -> bool:
        # Unlimited numbering still has to fit the C int that /proc/self/checkpoint
        # returns; wrapping there is the only sane choice (2**31 checkpoints never happen).
        if self.limit:
            return version >= self.first + self.limit
        return version > MAX_VERSION


def can_write_in(directory: str) -> bool:
    """Whether new files can be created in ``directory`` (else the caller prints
    :data:`NO_WRITE_ACCESS`). Checked with the effective ids, which create the file."""
    flags = os.W_OK | os.X_OK
    try:
        if not os.path.isdir(directory):
            return False
        if os.access in os.supports_effective_ids:
            return os.access(directory, flags, effective_ids=True)
        return os.access(directory, flags)
    except OSError:
        return False


def write_atomically(path: str, produce: Callable[[BinaryIO], T]) -> T:
    """Write a checkpoint file: ``produce(file)`` writes the content, and the result is
    returned.

    The file is created with mode 0 and turns 0400 only once complete (the manual's
    "partially-written checkpoint file has no permissions"). A file of the same name —
    the version being recycled, itself 0400 — is unlinked first and a new one created
    with O_EXCL, which never follows a symbolic link: one put in its place is
    replaced, its target untouched. ``produce`` must not close the file.

    Any failure (of ``produce`` or of finishing the file) removes the partial file:
    no half-written file survives. ``produce``'s own exceptions pass through
    unchanged; the file operations here raise :class:`CheckpointFileError`.
    No fsync: checkpoints are often on tmpfs, and a crash mid-way is what ``-N`` > 1
    guards against.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:  # a directory of that name, or no write access
        raise CheckpointFileError(path, "replace the old version", err) from None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0)
    except OSError as err:
        raise CheckpointFileError(path, "create it", err) from None
    try:
        created = os.fstat(fd)
    except OSError as err:
        os.close(fd)
        _remove_if_ours(path, None)
        raise CheckpointFileError(path, "create it", err) from None
    file = os.fdopen(fd, "wb")
    try:
        result = produce(file)
        action = "write it"
        try:
            file.flush()
            action = "make it read-only"
            os.fchmod(fd, FINISHED_MODE)
            action = "close it"
            file.close()
        except OSError as err:
            raise CheckpointFileError(path, action, err) from None
        return result
    except BaseException:
        # BaseException: an interrupt (KeyboardInterrupt, a signal turned into an
        # exception) must not leave a partial image behind either.
        _close_quietly(file)
        _remove_if_ours(path, created)
        raise


def _close_quietly(file: BinaryIO) -> None:
    try:
        file.close()
    except OSError:
        # Buffered data that cannot be written (ENOSPC) is moot: the file goes.
        pass


def _remove_if_ours(path: str, created: os.stat_result | None) -> None:
    """Unlink ``path`` unless it is no longer the file we created (replaced meanwhile)."""
    try:
        if created is not None:
            now = os.lstat(path)
            if (now.st_dev, now.st_ino) != (created.st_dev, created.st_ino):
                return
        os.unlink(path)
    except OSError:
        # Already gone, or not removable: the original exception is the one to report.
        pass
