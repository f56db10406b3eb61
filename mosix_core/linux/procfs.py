"""Reading /proc/PID files that several parts of MOSIX look at."""

from __future__ import annotations

import os

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
    return None if end < 0 else data[end + 2:].split()


# -- what the process-image engine reads ---------------------------------------------------------
PAGE = 4096
PM_PRESENT = 1 << 63
PM_SWAPPED = 1 << 62
PM_FILE = 1 << 61        # a file page or shared anonymous page: unchanged from the file


@attrs.frozen
class Mapping:
    """One line of ``/proc/PID/maps``."""

    start: int
    end: int
    perms: str            # "rwxp" / "r--s" ...
    offset: int
    device: str           # "fd:01"
    inode: int
    path: str             # "" for anonymous memory, "[heap]", "[stack]", "[vdso]", a file

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
        out.append(Mapping(int(start, 16), int(end, 16), parts[1], int(parts[2], 16), parts[3],
                           int(parts[4]), parts[5] if len(parts) > 5 else ""))
    return out


def page_runs(pagemap_fd: int, start: int, end: int, changed_only: bool) -> list[tuple[int, int]]:
    """The ``(address, length)`` runs of pages of ``[start, end)`` that have contents
    worth saving: present or swapped; with ``changed_only`` (private file mappings),
    only the pages no longer backed by the file (written since mapped)."""
    count = (end - start) // PAGE
    raw = os.pread(pagemap_fd, count * 8, (start // PAGE) * 8)
    entries = memoryview(raw).cast("Q")
    runs: list[tuple[int, int]] = []
    run_start = -1
    for i in range(len(entries)):
        entry = entries[i]
        wanted = entry & (PM_PRESENT | PM_SWAPPED) and not (changed_only and entry & PM_FILE)
        if wanted:
            if run_start < 0:
                run_start = i
        elif run_start >= 0:
            runs.append((start + run_start * PAGE, (i - run_start) * PAGE))
            run_start = -1
    if run_start >= 0:
        runs.append((start + run_start * PAGE, (len(entries) - run_start) * PAGE))
    return runs


def status_fields(pid: int) -> dict[str, str]:
    """``/proc/PID/status`` as name → value text."""
    out = {}
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f.read().decode(errors="replace").splitlines():
            name, _, value = line.partition(":")
            out[name] = value.strip()
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
