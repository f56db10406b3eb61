"""The node's process table: every MOSIX process whose home is here, and every guest.

``mosrun`` registers the processes it supervises through the control socket; the
daemon watches each one with a pidfd, so a row disappears the moment its process
exits, whatever the reason. ``mosps``, ``moskillall``, load measurement and the
freezing policy read this table.
"""

from __future__ import annotations

import time
from ipaddress import IPv4Address
from typing import Iterator

import attrs


@attrs.define
class ProcessRecord:
    pid: int
    uid: int
    command: str
    home: IPv4Address | None = None        # None: home is here
    origpid: int | None = None             # pid at home (guests)
    where: str = "here"                    # "here", "leaving", "starting" or a node address
    frozen: str = "-"                      # "-", "A", "P", "M" or "N/A"
    nmigs: int = 0
    queue: str | None = None               # "total/done/fail" for a mosrun -S supervisor
    started: float = attrs.field(factory=time.time)

    @property
    def is_guest(self) -> bool:
        return self.home is not None

    def to_json(self) -> dict:
        data = attrs.asdict(self)
        data["home"] = str(self.home) if self.home else None
        return data


@attrs.frozen
class ProcessEvent:
    """Something happened to a MOSIX process (for ``mosix_process_event``)."""

    kind: str              # "started", "exited", "migrated", "frozen", "unfrozen"
    pid: int
    uid: int
    detail: str = ""


class ProcessTable:
    def __init__(self) -> None:
        self._rows: dict[int, ProcessRecord] = {}

    def add(self, record: ProcessRecord) -> None:
        self._rows[record.pid] = record

    def remove(self, pid: int) -> ProcessRecord | None:
        return self._rows.pop(pid, None)

    def get(self, pid: int) -> ProcessRecord | None:
        return self._rows.get(pid)

    def __iter__(self) -> Iterator[ProcessRecord]:
        return iter(list(self._rows.values()))

    def __len__(self) -> int:
        return len(self._rows)

    def local(self) -> list[ProcessRecord]:
        return [r for r in self._rows.values() if not r.is_guest]

    def guests(self) -> list[ProcessRecord]:
        return [r for r in self._rows.values() if r.is_guest]

    def frozen_count(self) -> int:
        return sum(1 for r in self._rows.values() if r.frozen in ("A", "P", "M"))
