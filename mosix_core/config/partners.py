"""``partners/*``: the other clusters of the multi-cluster, one file per cluster."""

from __future__ import annotations

import os
import stat
from ipaddress import IPv4Address
from pathlib import Path

from attrs import field, frozen

from mosix_core.config.addresses import Resolver, as_address, check_range, parse_node
from mosix_core.config.mosixmap import NodeRange, check_overlaps
from mosix_core.config.ranges import RangeIndex, find_overlap
from mosix_core.config.source import data_lines, read_text, split_lines
from mosix_core.config.tokens import parse_int
from mosix_core.errors import ConfigError

#: mosix(7): cluster names of "maximum 128 characters".
MAX_NAME = 128
MAX_PRIORITY = 65535
# Bounds a typo in a count, as in mosix.map.
MAX_NODES = 65535 * 256
_MAX_OBSOLETE = 2**31 - 1


# A partner's range line is a mosix.map data line with more columns: the same record.
PartnerRange = NodeRange


@frozen
class Partner:
    """Another cluster: its priority (lower is better) and which way processes may go."""

    name: str
    description: str
    priority: int
    cango: bool  # local processes may migrate there
    cantake: bool  # its processes may come here
    ranges: tuple[PartnerRange, ...]
    source: str
    _index: RangeIndex[PartnerRange] = field(init=False, repr=False, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_index", RangeIndex((int(r.first), r.count, r) for r in self.ranges))

    @classmethod
    def parse(cls, name: str, text: str, source: str, *, resolve: Resolver | None = None) -> Partner:
        _check_name(name, source)
        lines = split_lines(text)
        description = lines[0].strip()
        if not description:
            raise ConfigError(source, "line 1 must describe the cluster (it is empty)", 1)
        header = None
        ranges: list[PartnerRange] = []
        total = 0
        # Line 1 is free text (a '#' there is part of the description), so the
        # remaining lines are numbered from 2.
        for number, fields in data_lines("\n".join(lines[1:])):
            number += 1
            if header is None:
                header = _parse_header(fields, source, number)
                continue
            node_range = _parse_range(fields, source, number, resolve)
            total += node_range.count
            if total > MAX_NODES:
                raise ConfigError(source, f"too many nodes (more than {MAX_NODES} in all)", number)
            ranges.append(node_range)
        if header is None:
            raise ConfigError(source, "missing line 2: 'priority cango cantake' (three integers)")
        check_overlaps(ranges, source)
        priority, cango, cantake = header
        return cls(
            name=name,
            description=description,
            priority=priority,
            cango=cango,
            cantake=cantake,
            ranges=tuple(ranges),
            source=source,
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, resolve: Resolver | None = None) -> Partner:
        return cls.parse(os.path.basename(os.fspath(path)), read_text(path), os.fspath(path), resolve=resolve)

    def range_of(self, ip: object) -> PartnerRange | None:
        address = as_address(ip)
        return None if address is None else self._index.find(int(address))

    def __contains__(self, ip: object) -> bool:
        return self.range_of(ip) is not None

    def nodes(self) -> list[IPv4Address]:
        return [r.first + offset for r in self.ranges for offset in range(r.count)]


def is_partner_file(name: str) -> bool:
    """Hidden files, editor backups and ``*.sample`` files in ``partners/`` are not clusters."""
    return not (name.startswith(".") or name.endswith("~") or name.endswith(".sample"))


def load_partners(directory: Path, *, resolve: Resolver | None = None) -> tuple[Partner, ...]:
    """Every partner cluster, by name; no directory means no partners."""
    source = os.fspath(directory)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return ()
    except NotADirectoryError:
        raise ConfigError(source, "not a directory") from None
    except OSError as err:
        raise ConfigError(source, f"cannot list: {err.strerror or err}") from None
    partners = []
    for name in sorted(names):
        path = Path(directory) / name
        if not is_partner_file(name) or _is_directory(path):
            continue
        partners.append(Partner.from_file(path, resolve=resolve))
    _check_disjoint(partners)
    return tuple(partners)


def _check_name(name: str, source: str) -> None:
    if not name or len(name) > MAX_NAME:
        raise ConfigError(source, f"a cluster name has 1 to {MAX_NAME} characters (this one has {len(name)})")
    if "/" in name or "\0" in name or any(char.isspace() for char in name):
        raise ConfigError(source, f"cluster name {name!r} contains '/', a space or a NUL; use '-' or '_'")


def _parse_header(fields: list[str], source: str, number: int) -> tuple[int, bool, bool]:
    if len(fields) != 3:
        raise ConfigError(
            source,
            f"line {number} must be 'priority cango cantake' (three integers), not {len(fields)} fields",
            number,
        )
    priority = parse_int(fields[0], source, number, "the priority", 0, MAX_PRIORITY)
    cango = parse_int(fields[1], source, number, "cango", 0, 1) == 1
    cantake = parse_int(fields[2], source, number, "cantake", 0, 1) == 1
    return priority, cango, cantake


def _parse_range(fields: list[str], source: str, number: int, resolve: Resolver | None) -> PartnerRange:
    if len(fields) != 5:
        raise ConfigError(
            source,
            f"a node line has 5 fields (first node, number of nodes, 1, 1, proximate 0/1), not {len(fields)}",
            number,
        )
    first, _ = parse_node(fields[0], source, number, resolve)
    count = parse_int(fields[1], source, number, "the number of nodes", 1, MAX_NODES)
    check_range(first, count, source, number)
    # Fields 3 and 4 are obsolete ("should be '1'"); old files may hold other numbers.
    parse_int(fields[2], source, number, "field 3 (obsolete, should be 1)", 0, _MAX_OBSOLETE)
    parse_int(fields[3], source, number, "field 4 (obsolete, should be 1)", 0, _MAX_OBSOLETE)
    proximate = parse_int(fields[4], source, number, "proximate (field 5)", 0, 1) == 1
    return PartnerRange(first=first, count=count, proximate=proximate, line=number)


def _is_directory(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        # Let from_file report what is wrong with it.
        return False


def _check_disjoint(partners: list[Partner]) -> None:
    spans = [(int(r.first), r.count, (p, r)) for p in partners for r in p.ranges]
    clash = find_overlap(spans)
    if clash is not None:
        (first_partner, first_range), (other_partner, other_range) = clash
        raise ConfigError(
            other_partner.source,
            f"nodes {other_range.first}..{other_range.last} are also listed by partner"
            f" {first_partner.name!r} ({first_partner.source}:{first_range.line})",
            other_range.line,
        )
