"""``mosix.map``: the nodes of the local cluster, and aliases for nodes with several addresses."""

from __future__ import annotations

import os
from ipaddress import IPv4Address

from attrs import field, frozen

from mosix_core.config.addresses import (
    Resolver,
    as_address,
    check_range,
    parse_address,
    parse_node,
)
from mosix_core.config.ranges import RangeIndex, find_overlap
from mosix_core.config.source import data_lines, read_text
from mosix_core.config.tokens import parse_int
from mosix_core.errors import ConfigError

#: mosix(7): "up to 256 data lines and/or alias lines".
MAX_LINES = 256
#: A bound on the whole map, so that a typo such as an extra digit in a count is
#: reported instead of producing a cluster of millions of nodes.
MAX_NODES = 65535 * 256


@frozen
class NodeRange:
    """One data line: ``count`` nodes with consecutive addresses from ``first``."""

    first: IPv4Address
    count: int
    proximate: bool
    line: int
    host: str | None = None

    @property
    def last(self) -> IPv4Address:
        return self.first + (self.count - 1)

    def addresses(self) -> list[IPv4Address]:
        return [self.first + offset for offset in range(self.count)]

    def __contains__(self, ip: object) -> bool:
        address = as_address(ip)
        if address is None:
            return False
        return int(self.first) <= int(address) < int(self.first) + self.count


@frozen
class Alias:
    """``alias=target``: messages from ``alias`` come from the node known as ``target``."""

    alias: IPv4Address
    target: IPv4Address
    line: int
    host: str | None = None


@frozen
class ClusterMap:
    ranges: tuple[NodeRange, ...]
    aliases: tuple[Alias, ...] = ()
    source: str = "mosix.map"
    _index: RangeIndex[NodeRange] = field(init=False, repr=False, eq=False, hash=False)
    _targets: dict[IPv4Address, IPv4Address] = field(init=False, repr=False, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        # Derived lookups: frozen records cannot assign normally, but these are
        # pure functions of the declared fields.
        index = RangeIndex((int(r.first), r.count, r) for r in self.ranges)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_targets", {a.alias: a.target for a in self.aliases})

    @classmethod
    def parse(cls, text: str, source: str, *, resolve: Resolver | None = None) -> ClusterMap:
        ranges: list[NodeRange] = []
        aliases: list[Alias] = []
        total = 0
        for number, fields in data_lines(text):
            if len(ranges) + len(aliases) == MAX_LINES:
                raise ConfigError(source, f"more than {MAX_LINES} data and alias lines", number)
            if any("=" in token for token in fields):
                aliases.append(_parse_alias(fields, source, number, resolve))
                continue
            node_range = _parse_data_line(fields, source, number, resolve)
            total += node_range.count
            if total > MAX_NODES:
                raise ConfigError(source, f"too many nodes (more than {MAX_NODES} in all)", number)
            ranges.append(node_range)
        if not ranges:
            raise ConfigError(source, "no data lines: the map must list the nodes of the cluster")
        check_overlaps(ranges, source)
        _check_aliases(aliases, RangeIndex((int(r.first), r.count, r) for r in ranges), source)
        return cls(ranges=tuple(ranges), aliases=tuple(aliases), source=source)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, resolve: Resolver | None = None) -> ClusterMap:
        return cls.parse(read_text(path), os.fspath(path), resolve=resolve)

    def range_of(self, ip: object) -> NodeRange | None:
        """The data line that lists ``ip`` (aliases are not followed)."""
        address = as_address(ip)
        return None if address is None else self._index.find(int(address))

    def contains(self, ip: object) -> bool:
        return self.range_of(ip) is not None

    __contains__ = contains

    def canonical(self, ip: object) -> IPv4Address | None:
        """The address MOSIX knows the node by: an alias becomes its target (which may be
        a node of another cluster); an address of the map is itself; anything else is None."""
        address = as_address(ip)
        if address is None:
            return None
        target = self._targets.get(address)
        if target is not None:
            return target
        return address if self._index.find(int(address)) is not None else None

    def nodes(self) -> list[IPv4Address]:
        """Every node, in the order of the file."""
        seen: set[IPv4Address] = set()
        result = []
        for node_range in self.ranges:
            for address in node_range.addresses():
                if address not in seen:
                    seen.add(address)
                    result.append(address)
        return result

    def is_proximate(self, ip: object) -> bool:
        node_range = self.range_of(self.canonical(ip))
        return node_range is not None and node_range.proximate

    def __len__(self) -> int:
        return self._index.distinct()


def _parse_data_line(fields: list[str], source: str, number: int, resolve: Resolver | None) -> NodeRange:
    if len(fields) not in (2, 3):
        raise ConfigError(
            source,
            f"a data line has 2 or 3 fields (first node, number of nodes, optional 'p'), not {len(fields)}",
            number,
        )
    first, host = parse_node(fields[0], source, number, resolve)
    count = parse_int(fields[1], source, number, "the number of nodes", 1, MAX_NODES)
    check_range(first, count, source, number)
    proximate = False
    if len(fields) == 3:
        if fields[2] != "p":
            raise ConfigError(source, f"the third field may only be 'p' (proximate), not {fields[2]!r}", number)
        proximate = True
    return NodeRange(first=first, count=count, proximate=proximate, line=number, host=host)


def _parse_alias(fields: list[str], source: str, number: int, resolve: Resolver | None) -> Alias:
    left, _, right = " ".join(fields).partition("=")
    if len(left.split()) != 1 or len(right.split()) != 1 or "=" in right:
        raise ConfigError(source, "an alias line must be a.b.c.d=e.f.g.h or a.b.c.d=host-name", number)
    alias = parse_address(left.strip(), source, number, what="alias")
    target, host = parse_node(right.strip(), source, number, resolve)
    if alias == target:
        raise ConfigError(source, f"alias {alias} refers to itself", number)
    return Alias(alias=alias, target=target, line=number, host=host)


def check_overlaps(ranges: list[NodeRange], source: str) -> None:
    """No address may be in two ranges of one file (mosix.map or a partner file)."""
    clash = find_overlap((int(r.first), r.count, r) for r in ranges)
    if clash is not None:
        earlier, later = sorted(clash, key=lambda r: r.line)
        raise ConfigError(
            source,
            f"nodes {later.first}..{later.last} overlap the range on line {earlier.line}"
            f" ({earlier.first}..{earlier.last})",
            later.line,
        )


def _check_aliases(aliases: list[Alias], index: RangeIndex[NodeRange], source: str) -> None:
    # An alias that is also a listed node, or that is listed twice, would give
    # one address two identities; a chain would need repeated resolution that
    # MOSIX does not do.
    by_address: dict[IPv4Address, Alias] = {}
    for alias in aliases:
        node_range = index.find(int(alias.alias))
        if node_range is not None:
            raise ConfigError(
                source,
                f"alias {alias.alias} is itself a node of the map (line {node_range.line})",
                alias.line,
            )
        previous = by_address.get(alias.alias)
        if previous is not None:
            raise ConfigError(source, f"alias {alias.alias} is already defined on line {previous.line}", alias.line)
        by_address[alias.alias] = alias
    for alias in aliases:
        chained = by_address.get(alias.target)
        if chained is not None:
            raise ConfigError(
                source,
                f"alias target {alias.target} is itself an alias (line {chained.line}); name the node it stands for",
                alias.line,
            )
