"""Reading /proc/PID files that several parts of MOSIX look at."""

from __future__ import annotations

import os
import re

import attrs


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` from field 3 (state) on: index 0 is the state,
    11 utime, 12 stime (proc(5) numbering minus 3). None if the process is gone.

    The command name between the parentheses may hold spaces and parentheses, so the
    fields start after the *last* ')'."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    end = data.rfind(b")")
    return None if end < 0 else data[end + 2 :].split()


# -- what the process-image engine reads ---------------------------------------------------------
PAGE = 4096


@attrs.frozen
class Mapping:
    """One line of ``/proc/PID/maps``."""

    start: int
    end: int
    perms: str  # "rwxp" / "r--s" ...
    offset: int
    device: str  # "fd:01"
    inode: int
    path: str  # "" for anonymous memory, "[heap]", "[stack]", "[vdso]", a file

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def special(self) -> bool:
        return self.path.startswith("[") and self.path not in ("[heap]", "[stack]")

    @property
    def deleted(self) -> bool:
        return self.inode != 0 and self.path.endswith(" (deleted)")

    @property
    def file_backed(self) -> bool:
        return self.inode != 0


def read_maps(pid: int) -> list[Mapping]:
    with open(f"/proc/{pid}/maps", "rb") as f:
        lines = f.read().decode(errors="surrogateescape").splitlines()
    out = []
    for line in lines:
        parts = line.split(None, 5)
        start, end = parts[0].split("-")
        out.append(
            Mapping(
                int(start, 16),
                int(end, 16),
                parts[1],
                int(parts[2], 16),
                parts[3],
                int(parts[4]),
                parts[5] if len(parts) > 5 else "",
            )
        )
    return out


# The most significant byte of each little-endian pagemap entry holds bits 63..56:
# 0x80 present, 0x40 swapped, 0x20 file page. Translating those bytes to b"1"/b"0"
# and scanning with a regular expression keeps the per-page work in C.
_ANY_PAGE = bytes(0x31 if b & 0xC0 else 0x30 for b in range(256))
_CHANGED_PAGE = bytes(0x31 if b & 0xC0 and not b & 0x20 else 0x30 for b in range(256))
_RUNS = re.compile(rb"1+")


def page_runs(pagemap_fd: int, start: int, end: int, changed_only: bool) -> list[tuple[int, int]]:
    """The ``(address, length)`` runs of pages of ``[start, end)`` that have contents
    worth saving: present or swapped; with ``changed_only`` (private file mappings),
    only the pages no longer backed by the file (written since mapped)."""
    count = (end - start) // PAGE
    raw = os.pread(pagemap_fd, count * 8, (start // PAGE) * 8)
    flags = raw[7::8].translate(_CHANGED_PAGE if changed_only else _ANY_PAGE)
    return [(start + m.start() * PAGE, (m.end() - m.start()) * PAGE) for m in _RUNS.finditer(flags)]


def command_line(pid: int) -> str | None:
    """``/proc/PID/cmdline`` as one line to show (arguments joined by spaces); None if
    the process is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


def traced_child(pid: int) -> int | None:
    """The child that ``pid`` traces (a guest host's guest process); None if none."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            children = f.read().split()
    except OSError:
        return None
    for child in children:
        try:
            with open(f"/proc/{int(child)}/status", "rb") as f:
                if any(line == b"TracerPid:\t%d\n" % pid for line in f):
                    return int(child)
        except (OSError, ValueError):
            continue
    return None


def status_fields(pid: int) -> dict[str, str]:
    """``/proc/PID/status`` as name → value text."""
    out = {}
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f.read().decode(errors="replace").splitlines():
            name, _, value = line.partition(":")
            out[name] = value.strip()
    return out


def real_uid(pid: int) -> int:
    return int(status_fields(pid)["Uid"].split()[0])


def environment(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with (``/proc/PID/environ``); empty if unreadable."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:
        return {}
    out = {}
    for item in data.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep:
            out[name.decode(errors="surrogateescape")] = value.decode(errors="surrogateescape")
    return out


def signal_set(hex_mask: str) -> list[int]:
    """The signal numbers in a status mask such as ``SigBlk: 0000000000010000``."""
    mask = int(hex_mask, 16)
    return [sig for sig in range(1, 65) if mask >> (sig - 1) & 1]


def fd_info(pid: int, fd: int) -> tuple[int, int]:
    """``(position, flags)`` of descriptor ``fd`` (flags as open(2) flags, in octal there)."""
    pos = flags = 0
    with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as f:
        for line in f.read().decode().splitlines():
            name, _, value = line.partition(":")
            if name == "pos":
                pos = int(value)
            elif name == "flags":
                flags = int(value, 8)
    return pos, flags


def open_fds(pid: int) -> list[int]:
    return sorted(int(name) for name in os.listdir(f"/proc/{pid}/fd"))
