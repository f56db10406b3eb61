"""The checks of one field of mosd's protocol (:mod:`mosix_core.daemon.protocol`): each
takes the value as it came off the wire and returns it normalised, or raises
ValueError saying what is wrong (the protocol adds the operation and the field's name).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address
from typing import Any

from mosix_core.cluster.proctable import ProcessRecord, checked_fields
from mosix_core.contract.records import MosrunRequest


class Unset(enum.Enum):
    UNSET = "unset"


#: a process-table field that a register or update request does not set
UNSET = Unset.UNSET

Check = Callable[[Any], Any]


def optional(check: Check) -> Check:
    def optional(value: Any) -> Any:
        return None if value is None else check(value)

    return optional


def whole(low: int, high: int) -> Check:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number, not {type(value).__name__}")
        if not low <= value <= high:
            raise ValueError(f"must be in {low}..{high}, not {value}")
        return value

    return check


def number(low: float, high: float, *, above: bool = False) -> Check:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number, not {type(value).__name__}")
        if not (low < value if above else low <= value) or not value <= high:
            raise ValueError(f"must be {'above' if above else 'at least'} {low:g} and at most {high:g}, not {value}")
        return value

    return check


def text(most: int, *, least: int = 0) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, not {type(value).__name__}")
        if not least <= len(value) <= most:
            raise ValueError(f"must be a string of {least}..{most} characters")
        return value

    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {type(value).__name__}")
    return value


def address(value: Any) -> str:
    """An IPv4 address, in its canonical text."""
    if isinstance(value, IPv4Address):
        return str(value)
    try:
        return str(IPv4Address(text(15)(value)))
    except ValueError:
        raise ValueError(f"must be an IPv4 address, not {value!r}") from None


def one_of(kind: type[enum.Enum]) -> Check:
    def check(value: Any) -> enum.Enum:
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"must be one of {', '.join(str(m.value) for m in kind)}, not {value!r}") from None

    return check


def settable(name: str) -> Check:
    """A process-table field, as :func:`checked_fields` checks it."""

    def check(value: Any) -> Any:
        return value if value is UNSET else checked_fields({name: value})[name]

    return check


def mosrun_fields(value: Any) -> dict[str, Any]:
    """A mosrun request's policy fields, as :meth:`MosrunRequest.from_fields` checks them
    (whose uid and user the daemon fills in from the caller)."""
    return MosrunRequest.from_fields(value, uid=0, user="", etc=None).policy_fields()


def json_list(value: Any) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"must be a list, not {type(value).__name__}")
    return tuple(value)


def json_object(value: Any) -> dict:
    if not isinstance(value, Mapping):
        raise ValueError(f"must be an object, not {type(value).__name__}")
    return dict(value)


def process_rows(value: Any) -> tuple[ProcessRecord, ...]:
    """Rows of a process table, as :meth:`ProcessRecord.to_json` writes them (or the
    records themselves, on the daemon's side)."""
    rows = json_list(value)
    try:
        return tuple(
            row if isinstance(row, ProcessRecord) else ProcessRecord.from_json(json_object(row)) for row in rows
        )
    except TypeError as err:  # a row without its pid, uid or command
        raise ValueError(f"a process row is malformed: {err}") from None
