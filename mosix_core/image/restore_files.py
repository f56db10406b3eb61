"""The restorer's files: the descriptor table, the working directory and the umask.

Each descriptor of the FILES record is opened again in the new process at its
number, flags and offset: a file by its path, a terminal or pipe (``special``) kept
if the stub inherited it or else ``/dev/null``, an unlinked file from the copy of
its contents the image carries (FILE_DATA records, put in a nameless file of ours).
``mosrun -R -O`` replaces chosen descriptors with other files.
"""

from __future__ import annotations

import os
import struct
import tempfile
from typing import Any

from mosix_core.errors import MosixError
from mosix_core.image.checks import check_files
from mosix_core.image.restore_memory import AddressSpace, RestoreFailed
from mosix_core.image.stream import CorruptImage
from mosix_core.linux import inject, procfs

SYS_CLOSE, SYS_LSEEK, SYS_CHDIR, SYS_UMASK, SYS_DUP3 = 3, 8, 80, 95, 292
O_CREAT, O_EXCL, O_TRUNC, O_CLOEXEC = 0o100, 0o200, 0o1000, 0o2000000


class FileRestoreFailed(MosixError):
    """mosrun -R -O: a replacement file could not be opened (the manual's message)."""


def _anonymous_file(original: str) -> int:
    """A nameless file to hold an unlinked file's contents, near where it lived."""
    for directory in (os.path.dirname(original) or "/", tempfile.gettempdir()):
        try:
            return os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
        except OSError:
            continue
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    return fd


class FileTable:
    """The files of the process being restored into ``space``; ``redirect``: the
    descriptors ``mosrun -O`` replaces, with their files."""

    def __init__(self, space: AddressSpace, redirect: tuple[tuple[int, str], ...]) -> None:
        self.space = space
        self.pid = space.pid
        self.injector = space.injector
        self.redirect = redirect
        self.files: list[dict[str, Any]] = []
        self.unlinked: dict[int, int] = {}  # FILES index -> our temporary copy
        self.file_data_at: dict[int, int] = {}  # FILES index -> the next offset due

    def close(self) -> None:
        for fd in self.unlinked.values():
            os.close(fd)
        self.unlinked.clear()

    # -- records -----------------------------------------------------------------------------------
    def take_files(self, files: Any) -> None:
        """The FILES record."""
        check_files(files)
        self.files = files
        open_fds = {entry["fd"] for entry in self.files}
        for fd, _ in self.redirect:
            if fd not in open_fds:
                raise FileRestoreFailed(f"File-descriptor {fd} was not open at the time of checkpoint!")

    def take_data(self, payload: memoryview) -> None:
        """A FILE_DATA record: a piece of an unlinked file's contents."""
        if len(payload) < 12:
            raise CorruptImage("file-data record too short")
        index, offset = struct.unpack_from("<IQ", payload)
        if index >= len(self.files) or self.files[index].get("kind") != "unlinked":
            raise CorruptImage("file-data record for no unlinked file")
        # the capture sends a file's contents in order, each piece where the last ended
        if offset != self.file_data_at.get(index, 0) or offset + len(payload) - 12 > (1 << 63) - 1:
            raise CorruptImage(f"file-data record at offset {offset} of file #{index} is out of order")
        self.file_data_at[index] = offset + len(payload) - 12
        fd = self.unlinked.get(index)
        if fd is None:
            fd = self.unlinked[index] = _anonymous_file(self.files[index]["path"])
        os.pwrite(fd, payload[12:], offset)

    # -- after END ---------------------------------------------------------------------------------
    def close_all(self) -> None:
        """A process away from home: its files stay at home (its calls go there), so it
        gets none here — not even the descriptors the stub inherited."""
        for fd in procfs.open_fds(self.pid):
            self.injector.call(SYS_CLOSE, fd)

    def restore(self, cwd: str, umask: int) -> None:
        """Every descriptor, then the working directory and the umask."""
        self._restore_descriptors()
        self.injector.check(f"chdir({cwd})", SYS_CHDIR, self.space.scratch(os.fsencode(cwd) + b"\0"))
        self.injector.call(SYS_UMASK, umask)

    def _restore_descriptors(self) -> None:
        redirect = dict(self.redirect)
        inherited = set(procfs.open_fds(self.pid))
        keep = {
            e["fd"] for e in self.files if e["kind"] == "special" and e["fd"] in inherited and e["fd"] not in redirect
        }
        for fd in sorted(inherited - keep):
            self.injector.call(SYS_CLOSE, fd)
        for index, entry in enumerate(self.files):
            fd = entry["fd"]
            if fd in keep:
                continue
            flags = entry["flags"] & ~(O_CREAT | O_EXCL | O_TRUNC)
            if entry["cloexec"]:
                flags |= O_CLOEXEC
            if fd in redirect:
                path = redirect[fd]
                try:
                    got = self.space.open(path, flags | O_CREAT, 0o666, path)
                except inject.InjectedCallFailed as err:
                    raise FileRestoreFailed(
                        f"Could not restore file-descriptor {fd} with \u2018{path}\u2019: {os.strerror(err.errno)}"
                    ) from None
            elif entry["kind"] == "special":
                got = self.space.open("/dev/null", flags & (3 | O_CLOEXEC), 0, "/dev/null")
            elif entry["kind"] == "unlinked":
                copy = self.unlinked.get(index)
                if copy is None:
                    copy = self.unlinked[index] = _anonymous_file(entry["path"])
                got = self._reopen(f"/proc/{os.getpid()}/fd/{copy}", flags, entry["path"])
            else:
                got = self._reopen(entry["path"], flags, entry["path"])
            if got != fd:
                self.injector.check("dup3", SYS_DUP3, got, fd, O_CLOEXEC if entry["cloexec"] else 0)
                self.injector.call(SYS_CLOSE, got)
            if entry["kind"] != "special" or fd in redirect:
                self.injector.call(SYS_LSEEK, fd, entry["pos"], 0)

    def _reopen(self, path: str, flags: int, shown: str) -> int:
        try:
            return self.space.open(path, flags, 0, shown)
        except inject.InjectedCallFailed as err:
            raise RestoreFailed(f"cannot re-open {shown}: {os.strerror(err.errno)}") from None
