"""Freezing supervised processes: ``mosmigrate {pid} freeze|continue`` and the
automatic policy's requests from mosd (mosix(7) freeze.conf).

The supervisor freezes a process in place (:mod:`mosix_core.image.freeze`): its
memory goes, lz4-compressed, to a file in one of its freezing directories
(:mod:`mosix_core.image.freezedirs`), and the process waits as an empty shell.
As mosix(7) says of MOSIX itself, the file is unlinked as soon as it is created:
only the supervisor's descriptor holds it, so an image can never be left behind —
not by a failed write, a killed process or a crashed supervisor — and its disk
space returns the moment the process is unfrozen or dies.

Where the image goes is tried in the order the weights draw; a directory that
fills up while the image is written is abandoned (its partial file vanishes with
the descriptor) for the next. The process is touched only once a whole image is
on disk.
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
from pathlib import Path
from typing import BinaryIO

import attrs

from mosix_core.config.freeze import FreezeConfig
from mosix_core.errors import MosixError
from mosix_core.image import freeze
from mosix_core.image.freezedirs import FreezeDirs, NoSpaceToFreeze, freeze_dir_order, freeze_dirs_for, freeze_file_name
from mosix_core.image.stream import CorruptImage, ImageReader, ImageWriter
from mosix_core.linux import procfs, ptrace

#: FRZ column values that mean frozen: automatic, by a package, manual (mosps(1))
FREEZE_KINDS = ("A", "P", "M")
UNFREEZE = "-"
#: the manual's messages (user's guide, error messages)
UNFREEZE_FAILED = "Un-freeze failed"
REFREEZING = "Re-freezing because un-freeze failed"
FAILED_DECOMPRESSING = "Failed decompressing freeze file"
# write errors that mean "this directory is full (for us)": try the next one
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@attrs.define
class Frozen:
    """A frozen tracee: its image, and where its shell waits."""

    how: str  # "A", "P" or "M"
    image: BinaryIO  # the freeze file (unlinked: this is its only name)
    directory: str
    shell: int
    page_bytes: int
    image_bytes: int
    held: list[int] = attrs.field(factory=list)  # signals to deliver once unfrozen

    def discard(self) -> None:
        try:
            self.image.close()
        except OSError:
            pass


class LostInFreezing(MosixError):
    """The image was written but the process broke while its memory was released."""


class NoSpace(NoSpaceToFreeze):
    """No freezing directory took the image; ``needed_mb`` is the process's memory."""

    def __init__(self, needed_mb: int) -> None:
        super().__init__()
        self.needed_mb = needed_mb


class Freezer:
    """Freezes and unfreezes the processes of one supervisor (node configuration in ``etc``)."""

    def __init__(self, etc: Path | None) -> None:
        self.etc = etc
        self.node = socket.gethostname() or "localhost"

    def config(self) -> FreezeConfig:
        """freeze.conf, read at each freeze (the administrator may change it any time);
        a malformed file is a MosixError naming it."""
        if self.etc is None:
            return FreezeConfig.default()
        path = Path(self.etc) / "freeze.conf"
        if not path.exists():
            return FreezeConfig.default()
        return FreezeConfig.from_file(path)

    def killing_memory_mb(self) -> int:
        """freeze.conf's killing-memory (0 without a policy: "KILLING-POLICY = always")."""
        try:
            policy = self.config().policy
        except MosixError:
            return 0
        return 0 if policy is None else policy.killing_memory_mb

    def dirs_for(self, pid: int, config: FreezeConfig) -> FreezeDirs:
        uid = procfs.real_uid(pid)
        try:
            home = pwd.getpwuid(uid).pw_dir
        except KeyError:
            home = None
        return freeze_dirs_for(config, procfs.environment(pid), home, uid)

    def freeze(self, pid: int, how: str, serial: int, regs: ptrace.Registers) -> Frozen:
        """Freeze stopped tracee ``pid`` (``regs``: its registers at the stop).

        Raises :class:`NoSpace` when no directory takes the image and
        :class:`mosix_core.image.freeze.CannotFreeze` for a process that cannot be
        frozen; in both cases (and any other error before the image is complete) the
        process is exactly as it was."""
        config = self.config()
        dirs = self.dirs_for(pid, config)
        plan = freeze.plan_freeze(pid)
        needed = plan.page_bytes
        for candidate in freeze_dir_order(dirs.dirs, needed):
            path = freeze_file_name(candidate.path, node=self.node, pid=pid, serial=serial)
            image = _create_unlinked(path, dirs.owner)
            if image is None:
                continue
            try:
                writer = ImageWriter(image, compress=True)
                stats = freeze.write_freeze_image(pid, writer, regs, plan)
                writer.close()
                image.flush()
            except OSError as err:
                image.close()
                if err.errno in _FULL:
                    continue
                raise MosixError(f"cannot write the freeze file in {candidate.path}: {err.strerror}") from None
            except BaseException:
                image.close()
                raise
            try:
                shell, held = freeze.release_memory(pid)
            except (MosixError, OSError) as err:
                image.close()
                raise LostInFreezing(str(err)) from None
            return Frozen(how, image, candidate.path, shell, stats.page_bytes, stats.image_bytes, held)
        raise NoSpace(max(1, needed >> 20) if needed else 0)

    def thaw(self, pid: int, frozen: Frozen) -> list[int]:
        """Unfreeze stopped shell ``pid``; the signals that arrived meanwhile. Raises
        :class:`mosix_core.image.freeze.ThawFailed`."""
        try:
            frozen.image.seek(0)
            reader = ImageReader(frozen.image, streaming=True)
        except (CorruptImage, OSError) as err:
            raise freeze.ThawFailed(str(err), frozen.shell, corrupt=True) from None
        return freeze.thaw(pid, reader, frozen.shell)


def _create_unlinked(path: str, owner: int) -> BinaryIO | None:
    """Create ``path`` as ``owner`` (root may act as freeze.conf's ``U``), then unlink it;
    None when it cannot be created there."""
    become = os.geteuid() == 0 and owner != 0
    try:
        if become:
            os.setegid(_primary_gid(owner))
            os.seteuid(owner)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        finally:
            if become:
                os.seteuid(0)
                os.setegid(0)
    except OSError:
        return None
    try:
        os.unlink(path)
    except OSError:
        os.close(fd)
        return None
    return os.fdopen(fd, "w+b")


def _primary_gid(uid: int) -> int:
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid
