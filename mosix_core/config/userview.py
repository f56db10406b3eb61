"""``userview.map``: small node numbers that stand for addresses, for the users' convenience."""

from __future__ import annotations

import os
from ipaddress import IPv4Address

from attrs import field, frozen

from mosix_core.config.addresses import Resolver, as_address, check_range, parse_node
from mosix_core.config.ranges import RangeIndex, find_overlap
from mosix_core.config.source import data_lines, read_text
from mosix_core.config.tokens import parse_int
from mosix_core.errors import ConfigError

MAX_NUMBER = 65535


@frozen
class UserViewRange:
    """Node numbers ``number .. number+count-1`` for the addresses ``first ..``."""

    number: int
    first: IPv4Address
    count: int
    line: int

    @property
    def last_number(self) -> int:
        return self.number + self.count - 1


@frozen
class UserView:
    ranges: tuple[UserViewRange, ...]
    source: str = "userview.map"
    _by_number: RangeIndex[UserViewRange] = field(init=False, repr=False, eq=False, hash=False)
    _by_address: RangeIndex[UserViewRange] = field(init=False, repr=False, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_by_number", RangeIndex((r.number, r.count, r) for r in self.ranges))
        object.__setattr__(self, "_by_address", RangeIndex((int(r.first), r.count, r) for r in self.ranges))

    @classmethod
    def parse(cls, text: str, source: str, *, resolve: Resolver | None = None) -> UserView:
        ranges = []
        for number, fields in data_lines(text):
            if len(fields) not in (2, 3):
                raise ConfigError(
                    source,
                    "a line has a node number, a first address and a number of nodes"
                    f" (which may be left out for one node), not {len(fields)} fields",
                    number,
                )
            first_number = parse_int(fields[0], source, number, "the node number", 1, MAX_NUMBER)
            first, _ = parse_node(fields[1], source, number, resolve)
            # The count may be left out for a single node, as in mos_in_job's world file.
            count = 1
            if len(fields) == 3:
                count = parse_int(fields[2], source, number, "the number of nodes", 1, MAX_NUMBER)
            if first_number + count - 1 > MAX_NUMBER:
                raise ConfigError(
                    source,
                    f"the last node number would be {first_number + count - 1} (at most {MAX_NUMBER})",
                    number,
                )
            check_range(first, count, source, number)
            ranges.append(UserViewRange(number=first_number, first=first, count=count, line=number))
        _check_overlaps(ranges, source)
        return cls(ranges=tuple(ranges), source=source)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, resolve: Resolver | None = None) -> UserView:
        return cls.parse(read_text(path), os.fspath(path), resolve=resolve)

    def number_of(self, ip: object) -> int | None:
        address = as_address(ip)
        if address is None:
            return None
        found = self._by_address.find(int(address))
        return None if found is None else found.number + (int(address) - int(found.first))

    def address_of(self, n: int) -> IPv4Address | None:
        if isinstance(n, bool) or not isinstance(n, int):
            return None
        found = self._by_number.find(n)
        return None if found is None else found.first + (n - found.number)

    def numbered(self) -> list[tuple[int, IPv4Address]]:
        pairs = [(r.number + offset, r.first + offset) for r in self.ranges for offset in range(r.count)]
        return sorted(pairs)


def _check_overlaps(ranges: list[UserViewRange], source: str) -> None:
    clash = find_overlap((r.number, r.count, r) for r in ranges)
    if clash is not None:
        earlier, later = sorted(clash, key=lambda r: r.line)
        raise ConfigError(
            source,
            f"node numbers {later.number}..{later.last_number} overlap those of line {earlier.line}"
            f" ({earlier.number}..{earlier.last_number})",
            later.line,
        )
    # One address with two numbers would make number_of() ambiguous.
    clash = find_overlap((int(r.first), r.count, r) for r in ranges)
    if clash is not None:
        earlier, later = sorted(clash, key=lambda r: r.line)
        raise ConfigError(
            source,
            f"the addresses from {later.first} are already numbered on line {earlier.line}",
            later.line,
        )
