"""The node's process table: every MOSIX process whose home is here, and every guest.

``mosrun`` registers the processes it supervises through the control socket; the
daemon watches each one with a pidfd, so a row disappears the moment its process
exits, whatever the reason. ``mosps``, ``mostimeof``, ``moskillall``, load
measurement and the freezing policy read this table.

The fields a supervisor may set (at ``register`` and by ``update``) are checked here,
by :func:`checked_fields`, so the daemon, the tools and the tests agree on them:

``command``       the command line to show (default: the process's ``/proc`` cmdline)
``where``         ``here``, ``leaving``, ``starting`` or the IPv4 address it runs on
``frozen``        ``-`` (not frozen), ``A`` (automatic), ``P`` (preempted by a package),
                  ``M`` (manual) or ``N/A`` (cannot be frozen)
``nmigs``         how many times the process (or its MOSIX ancestors) migrated
``queue``         ``"total/done/fail"`` of a ``mosrun -S`` queue driver, else absent
``options``       a short string of the mosrun flags it runs with (for ``mosps``)
``remote_utime``  user CPU seconds accumulated away from home (all remote stays);
                  ``mostimeof`` adds the home process's own user time
``freezable``     may the automatic freezing policy freeze it (``mosrun -g``/``-G``,
                  ``/proc/self/freezable``)
``locked``        no automatic migration (``mosrun -L``, ``/proc/self/lock``)
``cpujob``        its system calls and I/O do not count against leaving (``-c``, ``/proc/self/cpujob``)
``decayrate``     how its statistics decay, per 10000 per second (``-d``, ``/proc/self/decayrate``)
``needmem``       MB it needs free where it goes (``-m``, ``/proc/self/needmem``)
``cleared``       how often it wrote ``/proc/self/clear``: its statistics start again at each change

The daemon itself keeps ``frozen_since``: when ``frozen`` last changed (the policy's
time slices).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from typing import Any

import attrs

FROZEN_VALUES = ("-", "A", "P", "M", "N/A")
WHERE_WORDS = ("here", "leaving", "starting")
MAX_COMMAND = 4096
MAX_OPTIONS = 256
#: fields a supervisor may set when registering or updating a row
SETTABLE = (
    "command",
    "where",
    "frozen",
    "nmigs",
    "queue",
    "options",
    "remote_utime",
    "freezable",
    "locked",
    "cpujob",
    "decayrate",
    "needmem",
    "cleared",
)
DECAY_SCALE = 10000  # decay rates are per DECAY_SCALE per second
DEFAULT_DECAY = 9976  # mosrun(1) -d


@attrs.define
class ProcessRecord:
    pid: int
    uid: int
    command: str
    home: IPv4Address | None = None  # None: home is here
    origpid: int | None = None  # pid at home (guests)
    home_uid: int | None = None  # guests: the owner's uid at home (``uid`` is the guest uid here)
    home_user: str | None = None  # guests: the owner's login name, as home names it
    where: str = "here"  # "here", "leaving", "starting" or a node address
    frozen: str = "-"  # "-", "A", "P", "M" or "N/A"
    nmigs: int = 0
    queue: str | None = None  # "total/done/fail" for a mosrun -S supervisor
    started: float = attrs.field(factory=time.time)
    options: str = ""  # mosrun flags, e.g. "-b -m500"
    remote_utime: float | None = None  # user CPU seconds accumulated away from home
    freezable: bool = True  # by the automatic policy
    locked: bool = False  # no automatic migration
    cpujob: bool = False  # its calls and I/O do not count
    decayrate: int = DEFAULT_DECAY  # per DECAY_SCALE per second
    needmem: int = 0  # MB
    cleared: int = 0  # /proc/self/clear writes
    # monotonic time of the last freeze or unfreeze (or the start): the policy's slices
    frozen_since: float = attrs.field(factory=time.monotonic)

    @property
    def is_guest(self) -> bool:
        return self.home is not None

    @property
    def is_away(self) -> bool:
        """A local process running on another node (``where`` is an address)."""
        return not self.is_guest and self.where not in WHERE_WORDS

    @property
    def queue_counts(self) -> tuple[int, int, int] | None:
        """``(total, done, fail)`` of a queue driver, None for other processes."""
        return None if self.queue is None else parse_queue(self.queue)

    def apply(self, fields: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Set already-checked fields; return ``{name: (old, new)}`` of those that changed."""
        changed = {}
        for name, value in fields.items():
            old = getattr(self, name)
            if old != value:
                setattr(self, name, value)
                changed[name] = (old, value)
        if "frozen" in changed:
            self.frozen_since = time.monotonic()
        return changed

    def to_json(self) -> dict:
        data = attrs.asdict(self)
        data["home"] = str(self.home) if self.home else None
        return data

    @classmethod
    def from_json(cls, data: dict) -> ProcessRecord:
        """A row as the ``processes`` operation returns it (for the tools)."""
        known = {a.name for a in attrs.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("home"):
            values["home"] = IPv4Address(values["home"])
        return cls(**values)


def parse_queue(text: str) -> tuple[int, int, int]:
    parts = text.split("/")
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"queue must be 'total/done/fail', not {text!r}")
    total, done, fail = (int(p) for p in parts)
    if done > total or fail > done:
        raise ValueError(f"queue {text!r}: need fail <= done <= total")
    return total, done, fail


def checked_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """The settable fields present in a request, validated and normalised.

    Raises ValueError naming the first bad field; unknown keys are ignored (the
    request also carries ``op``, ``pid`` and so on).
    """
    out: dict[str, Any] = {}
    for name in SETTABLE:
        if name not in raw:
            continue
        value = raw[name]
        if name == "command":
            if not isinstance(value, str):
                raise ValueError("command must be a string")
            value = value[:MAX_COMMAND]
        elif name == "options":
            if not isinstance(value, str) or len(value) > MAX_OPTIONS:
                raise ValueError(f"options must be a string of at most {MAX_OPTIONS} characters")
        elif name == "where":
            if not isinstance(value, str):
                raise ValueError("where must be a string")
            if value not in WHERE_WORDS:
                try:
                    value = str(IPv4Address(value))
                except ValueError:
                    raise ValueError(f"where must be here, leaving, starting or an address, not {value!r}") from None
        elif name == "frozen":
            if value not in FROZEN_VALUES:
                raise ValueError(f"frozen must be one of {' '.join(FROZEN_VALUES)}, not {value!r}")
        elif name == "nmigs":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError("nmigs must be a non-negative integer")
        elif name == "queue":
            if value is not None:
                if not isinstance(value, str):
                    raise ValueError("queue must be a 'total/done/fail' string")
                parse_queue(value)
        elif name in ("freezable", "locked", "cpujob"):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false")
        elif name == "decayrate":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= DECAY_SCALE:
                raise ValueError(f"decayrate must be an integer from 0 to {DECAY_SCALE}")
        elif name in ("needmem", "cleared"):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 31:
                raise ValueError(f"{name} must be a non-negative integer")
        elif name == "remote_utime" and value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError("remote_utime must be a non-negative number of seconds")
            value = float(value)
        out[name] = value
    return out


@attrs.frozen
class ProcessEvent:
    """Something happened to a MOSIX process (for ``mosix_process_event``)."""

    kind: str  # "started", "exited", "migrated", "frozen", "unfrozen"
    pid: int
    uid: int
    detail: str = ""


class ProcessTable:
    """Rows by pid. A row may come with a ``release`` callable (the daemon's pidfd
    watcher): it is called exactly once, when that row leaves the table — removed,
    discarded or replaced by a new row for the same pid."""

    def __init__(self) -> None:
        self._rows: dict[int, ProcessRecord] = {}
        self._release: dict[int, Callable[[], None]] = {}

    def add(self, record: ProcessRecord, release: Callable[[], None] | None = None) -> ProcessRecord | None:
        """Add (or replace) the row for ``record.pid``; return the row it replaced."""
        old = self.remove(record.pid)
        self._rows[record.pid] = record
        if release is not None:
            self._release[record.pid] = release
        return old

    def remove(self, pid: int) -> ProcessRecord | None:
        record = self._rows.pop(pid, None)
        release = self._release.pop(pid, None)
        if release is not None:
            release()
        return record

    def discard(self, record: ProcessRecord) -> bool:
        """Remove ``record`` if it is still the row for its pid (not since replaced)."""
        if self._rows.get(record.pid) is not record:
            return False
        self.remove(record.pid)
        return True

    def get(self, pid: int) -> ProcessRecord | None:
        return self._rows.get(pid)

    def __contains__(self, pid: object) -> bool:
        return pid in self._rows

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
