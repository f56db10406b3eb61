"""The MOSIX configuration (``/etc/mosix``, see mosix(7)), parsed and validated.

Every file has its own module; :func:`load_config` reads them all, applying the
manual's default for each optional file that is absent. The secret is not read
here, because ordinary users load the configuration too: see :func:`load_secret`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import TypeVar

from attrs import frozen

from mosix_core.config.addresses import Resolver, as_address, is_host_name
from mosix_core.config.daemon import DaemonSettings
from mosix_core.config.freeze import (
    FreezeConfig,
    FreezeDir,
    FreezePolicy,
    parse_freeze_dirs_file,
)
from mosix_core.config.mosixmap import Alias, ClusterMap, NodeRange
from mosix_core.config.partners import Partner, PartnerRange, load_partners
from mosix_core.config.private import PrivateConfig, PrivateDir
from mosix_core.config.ranges import find_overlap
from mosix_core.config.scalars import (
    DEFAULT_SPEED,
    MaxGuests,
    detect_our_ip,
    load_secret,
    parse_maxguests,
    parse_mosip,
    parse_retainpri,
    parse_speed,
)
from mosix_core.config.source import read_optional_text
from mosix_core.config.userview import UserView, UserViewRange
from mosix_core.errors import ConfigError, NotInMap

__all__ = [
    "load_config_if_present",
    "Alias",
    "ClusterMap",
    "DaemonSettings",
    "FreezeConfig",
    "FreezeDir",
    "FreezePolicy",
    "MaxGuests",
    "MosixConfig",
    "NodeRange",
    "Partner",
    "PartnerRange",
    "PrivateConfig",
    "PrivateDir",
    "UserView",
    "UserViewRange",
    "detect_our_ip",
    "load_config",
    "load_partners",
    "load_secret",
    "parse_freeze_dirs_file",
    "parse_maxguests",
    "parse_mosip",
    "parse_retainpri",
    "parse_speed",
]


@frozen
class MosixConfig:
    etc: Path
    cluster: ClusterMap
    userview: UserView | None
    speed: int
    mosip: IPv4Address | None
    freeze: FreezeConfig
    partners: tuple[Partner, ...]
    private: PrivateConfig
    retainpri: int
    maxguests: MaxGuests | None
    log_mosrun: bool
    daemon: DaemonSettings

    def our_ip(self, override: str | None = None) -> IPv4Address:
        """This node's address (``mossetpe -p`` value, else mosip, else the interfaces)."""
        return detect_our_ip(self.cluster, self.mosip, override, mosip_path=self.etc / "mosip")

    def node_number(self, ip: object) -> int | None:
        return None if self.userview is None else self.userview.number_of(ip)

    def resolve_node(self, text: str, *, resolve: Resolver | None = None) -> IPv4Address:
        """The node a user means by a node number, an address or a host name."""
        text = text.strip()
        if text.isascii() and text.isdigit():
            address = self.userview.address_of(int(text)) if self.userview and len(text) <= 5 else None
        elif as_address(text) is not None:
            address = as_address(text)
        elif is_host_name(text):
            address = _lookup(text, resolve)
        else:
            address = None
        known = self.canonical(address) if address is not None else None
        if known is None:
            raise NotInMap(f"{text}: not in map")
        return known

    def canonical(self, ip: object) -> IPv4Address | None:
        """The address a node is known by in the cluster or a partner; None if unknown."""
        address = as_address(ip)
        if address is None:
            return None
        mapped = self.cluster.canonical(address)
        if mapped is not None:
            return mapped
        return address if self.partner_of(address) is not None else None

    def is_local_cluster(self, ip: object) -> bool:
        return self.cluster.contains(self.cluster.canonical(ip))

    def partner_of(self, ip: object) -> Partner | None:
        address = self.cluster.canonical(ip) or as_address(ip)
        if address is None or self.cluster.contains(address):
            return None
        for partner in self.partners:
            if address in partner:
                return partner
        return None

    def is_proximate(self, ip: object) -> bool:
        """Whether migration to ``ip`` goes uncompressed (map 'p', or a partner's proximate column)."""
        if self.cluster.is_proximate(ip):
            return True
        address = self.cluster.canonical(ip) or as_address(ip)
        partner = self.partner_of(address)
        if partner is None:
            return False
        found = partner.range_of(address)
        return found is not None and found.proximate


def load_config(etc: Path, *, map_override: Path | None = None, resolve: Resolver | None = None) -> MosixConfig:
    """Everything in ``etc`` but the secret; only ``mosix.map`` is mandatory."""
    etc = Path(etc)
    cluster = ClusterMap.from_file(map_override or etc / "mosix.map", resolve=resolve)
    userview = _optional(etc / "userview.map", lambda text, src: UserView.parse(text, src, resolve=resolve))
    partners = load_partners(etc / "partners", resolve=resolve)
    _check_partners_apart(cluster, partners)
    speed = _optional(etc / "speed", parse_speed)
    retainpri = _optional(etc / "retainpri", parse_retainpri)
    freeze = _optional(etc / "freeze.conf", FreezeConfig.parse)
    private = _optional(etc / "private.conf", PrivateConfig.parse)
    daemon = _optional(etc / "mosd.conf", DaemonSettings.parse)
    return MosixConfig(
        etc=etc,
        cluster=cluster,
        userview=userview,
        speed=DEFAULT_SPEED if speed is None else speed,
        mosip=_optional(etc / "mosip", parse_mosip),
        freeze=freeze or FreezeConfig.default(),
        partners=partners,
        private=private or PrivateConfig.default(),
        retainpri=retainpri or 0,
        maxguests=_optional(etc / "maxguests", parse_maxguests),
        log_mosrun=os.path.lexists(etc / ".log_mosrun"),
        daemon=daemon or DaemonSettings.default(),
    )


def load_config_if_present(etc: Path) -> MosixConfig | None:
    """:func:`load_config`, or None where MOSIX is not configured (no ``mosix.map``)."""
    if not (Path(etc) / "mosix.map").exists():
        return None
    return load_config(Path(etc))


T = TypeVar("T")


def _optional(path: Path, parse: Callable[[str, str], T]) -> T | None:
    text = read_optional_text(path)
    return None if text is None else parse(text, os.fspath(path))


def _check_partners_apart(cluster: ClusterMap, partners: tuple[Partner, ...]) -> None:
    # A node cannot be both ours and another cluster's: its priority, and
    # whether processes may go there, would be undefined.
    ours = [(int(r.first), r.count, r) for r in cluster.ranges]
    for partner in partners:
        theirs = [(int(r.first), r.count, r) for r in partner.ranges]
        clash = find_overlap(ours + theirs)
        if clash is None:
            continue
        # Neither file overlaps itself (each parser checks), so one of the pair is the map's.
        local, other = clash if any(clash[0] is r for r in cluster.ranges) else clash[::-1]
        raise ConfigError(
            partner.source,
            f"nodes {other.first}..{other.last} include nodes of the local cluster ({cluster.source}:{local.line})",
            other.line,
        )


def _lookup(name: str, resolve: Resolver | None) -> IPv4Address | None:
    try:
        return IPv4Address((resolve or socket.gethostbyname)(name))
    except (OSError, UnicodeError, ValueError):
        return None
