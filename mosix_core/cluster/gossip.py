"""Resource discovery by gossip: what a node knows about the others, and how it tells.

Each node periodically sends one datagram to a randomly chosen node: its own fresh
status plus a window of the freshest entries it knows about others, each with its
age. A receiver keeps, per node, whichever information is younger. Ages (not clock
times) travel, so nodes need no synchronised clocks. Information that grows older
than ``dead_after`` marks the node dead; fresh information revives it.

This module is transport-agnostic and clock-agnostic (every method takes ``now``),
so ``bench/gossip.py`` runs it unchanged with a simulated network of 10,000 nodes.
"""

from __future__ import annotations

import heapq
import math
import random
import struct
from collections.abc import Iterable, Iterator
from ipaddress import IPv4Address

import attrs

from mosix_core.errors import ProtocolError

# Node state bits, as in ``mosctl rstatus`` (the first integer).
ST_CONFIGURED = 1  # part of our MOSIX configuration
ST_INFO = 2  # information is available about the node
ST_STAY = 4  # "mosctl stay"
ST_LSTAY = 8  # "mosctl lstay"
ST_BLOCK = 16  # "mosctl block"
ST_ACCEPTS = 32  # may accept processes from here
ST_FRESH = 512  # the information is not too old
# Bits a node reports about itself; the others are computed by the viewer.
SELF_REPORTED = ST_STAY | ST_LSTAY | ST_BLOCK
ST_OFF = 1 << 14  # our extension: "mossetpe -off" — MOSIX disabled on that node

STANDARD_SPEED = 10000
PAGE_SIZE = 4096


@attrs.frozen
class NodeStatus:
    """One node's resources as it reported them (the gossip payload entry)."""

    ip: IPv4Address
    load: int = 0  # 100 = one standard load unit
    speed: int = STANDARD_SPEED
    ncpus: int = 1
    frozen: int = 0
    mem_avail_pages: int = 0
    mem_total_pages: int = 0
    swap_free_tenths: int = 0  # 0.1 GB units
    swap_total_tenths: int = 0
    nprocs: int = 0  # MOSIX processes (local + guests)
    guests: int = 0
    availability: int = 65535
    privileged_pages: int = 0
    state: int = 0  # SELF_REPORTED bits and ST_OFF

    @property
    def mem_avail_mb(self) -> int:
        return self.mem_avail_pages * PAGE_SIZE // (1024 * 1024)

    @property
    def mem_total_mb(self) -> int:
        return self.mem_total_pages * PAGE_SIZE // (1024 * 1024)


# ip, age_ms, load, speed, ncpus, frozen, mem avail, mem total, swap free, swap total,
# nprocs, guests, availability, privileged, state
_ENTRY = struct.Struct("!4sIIIHHIIHHHHHIH")
_COUNT = struct.Struct("!H")
ENTRY_SIZE = _ENTRY.size


def _clamp(value: int, bits: int) -> int:
    return max(0, min(int(value), (1 << bits) - 1))


def encode_entries(entries: Iterable[tuple[NodeStatus, float]]) -> bytes:
    """Encode ``(status, age_seconds)`` pairs into a gossip payload."""
    parts = []
    for st, age in entries:
        parts.append(
            _ENTRY.pack(
                st.ip.packed,
                _clamp(age * 1000, 32),
                _clamp(st.load, 32),
                _clamp(st.speed, 32),
                _clamp(st.ncpus, 16),
                _clamp(st.frozen, 16),
                _clamp(st.mem_avail_pages, 32),
                _clamp(st.mem_total_pages, 32),
                _clamp(st.swap_free_tenths, 16),
                _clamp(st.swap_total_tenths, 16),
                _clamp(st.nprocs, 16),
                _clamp(st.guests, 16),
                _clamp(st.availability, 16),
                _clamp(st.privileged_pages, 32),
                _clamp(st.state, 16),
            )
        )
    return _COUNT.pack(len(parts)) + b"".join(parts)


def decode_entries(payload: bytes) -> list[tuple[NodeStatus, float]]:
    """Decode a gossip payload; ProtocolError if it is truncated or inconsistent."""
    if len(payload) < _COUNT.size:
        raise ProtocolError("gossip payload truncated")
    (count,) = _COUNT.unpack_from(payload)
    if len(payload) != _COUNT.size + count * _ENTRY.size:
        raise ProtocolError(f"gossip payload of {len(payload)} bytes does not hold {count} entries")
    out = []
    for i in range(count):
        (ip, age_ms, load, speed, ncpus, frozen, mav, mtot, sfree, stot, nprocs, guests, avail, priv, state) = (
            _ENTRY.unpack_from(payload, _COUNT.size + i * _ENTRY.size)
        )
        if speed == 0 or ncpus == 0:
            raise ProtocolError("gossip entry with zero speed or CPUs")
        out.append(
            (
                NodeStatus(
                    IPv4Address(ip),
                    load,
                    speed,
                    ncpus,
                    frozen,
                    mav,
                    mtot,
                    sfree,
                    stot,
                    nprocs,
                    guests,
                    avail,
                    priv,
                    state,
                ),
                age_ms / 1000.0,
            )
        )
    return out


def window_for(max_datagram: int, overhead: int) -> int:
    """How many entries fit in one datagram of ``max_datagram`` bytes."""
    return max(1, (max_datagram - overhead - _COUNT.size) // _ENTRY.size)


@attrs.define
class NodeEntry:
    """What this node currently believes about one other node."""

    status: NodeStatus
    fresh_at: float  # our clock: when the information was current
    alive: bool = True
    reserved: int = 0  # processes "about to start" there (mosbestnode)
    reserved_at: float = 0.0
    reserved_base: int = 0  # its process count when the first promise was made


class ClusterView:
    """This node's view of the cluster: the newest information about each node.

    ``accept`` decides which addresses may enter the view (the map and partners);
    information about anyone else is dropped.

    Change ``entries`` through these methods: small caches keep ``freshest`` and
    ``sweep`` from rescanning every entry on each call (with 10,000 nodes a full scan
    per message would dominate), and they are maintained here. Adding or removing
    entries behind the view's back is noticed (a full rescan follows); replacing an
    entry, or making one younger or alive, behind its back is not.
    """

    def __init__(self, local_ip: IPv4Address, accept=None, dead_after: float = 10.0) -> None:
        self.local_ip = local_ip
        self.entries: dict[IPv4Address, NodeEntry] = {}
        self.accept = accept or (lambda ip: True)
        self.dead_after = dead_after
        self.reserve_hold = 5.0  # seconds a mosbestnode promise lasts at most
        self._reserved: dict[int, NodeEntry] = {}
        # freshest(): the entries that can be among the youngest live ones — the last
        # ranking plus every entry made younger or alive since — by id() (hashing an
        # IPv4Address runs Python code). Every live entry outside is no younger than
        # _hot_floor.
        self._hot: dict[int, NodeEntry] = {}
        self._hot_size = 0  # how many the last ranking kept
        self._hot_floor = -math.inf  # fresh_at of the last one kept (-inf: all kept)
        self._known = 0  # len(entries) as of the last ranking, plus ours since
        # sweep(): every live entry other than ours is in _doomed or no older than
        # _sweep_floor (-inf: unknown, scan everything).
        self._sweep_floor = -math.inf
        self._doomed: list[NodeEntry] = []
        self._swept = 0  # len(entries) as of the last full scan, plus ours since

    # -- updating -------------------------------------------------------------------------
    def update_local(self, status: NodeStatus, now: float) -> None:
        entry = self.entries.get(status.ip)
        if entry is None:
            entry = self.entries[status.ip] = NodeEntry(status, now)
            self._known += 1
            self._swept += 1
        else:
            entry.status, entry.fresh_at, entry.alive = status, now, True
        self._hot[id(entry)] = entry
        if now < self._sweep_floor and status.ip != self.local_ip:
            self._doomed.append(entry)

    def merge(self, received: Iterable[tuple[NodeStatus, float]], now: float) -> list[IPv4Address]:
        """Take in received entries; return the addresses that came (back) to life."""
        revived = []
        entries, hot, accept = self.entries, self._hot, self.accept
        local = entries.get(self.local_ip)
        dead_after, floor, doomed = self.dead_after, self._sweep_floor, self._doomed
        for status, age in received:
            ip = status.ip
            entry = entries.get(ip)
            if entry is None:
                if ip == self.local_ip or not accept(ip):
                    continue
                fresh_at = now - age
                entry = entries[ip] = NodeEntry(status, fresh_at)
                self._known += 1
                self._swept += 1
                if age <= dead_after:
                    revived.append(ip)
                    hot[id(entry)] = entry
                    if fresh_at < floor:
                        doomed.append(entry)
                else:
                    entry.alive = False
            elif entry is not local:
                fresh_at = now - age
                if fresh_at > entry.fresh_at and accept(ip):
                    entry.status, entry.fresh_at = status, fresh_at
                    if entry.reserved and status.nprocs > entry.reserved_base:
                        # its own report now counts (some of) the processes we promised it
                        entry.reserved = max(0, entry.reserved - (status.nprocs - entry.reserved_base))
                        entry.reserved_base = status.nprocs
                    if not entry.alive and age <= dead_after:
                        entry.alive = True
                        revived.append(ip)
                        if fresh_at < floor:
                            doomed.append(entry)
                    hot[id(entry)] = entry
        return revived

    def sweep(self, now: float) -> list[IPv4Address]:
        """Mark nodes whose information grew too old as dead; return the newly dead."""
        dead_after, entries, dead = self.dead_after, self.entries, []
        floor = self._sweep_floor
        if now - floor <= dead_after and self._swept == len(entries):
            # Only the entries that were already old at the last full scan can die yet.
            doomed = []
            for entry in self._doomed:
                if entry.alive:
                    if now - entry.fresh_at > dead_after:
                        entry.alive = False
                        dead.append(entry.status.ip)
                    elif entry.fresh_at < floor:
                        doomed.append(entry)
            self._doomed = doomed
            return dead
        # Full scan; set aside those that may die before another half of dead_after passes.
        local = entries.get(self.local_ip)
        floor = now - dead_after / 2
        doomed = []
        for ip, entry in entries.items():
            if entry.alive and entry.fresh_at < floor and entry is not local:
                if now - entry.fresh_at > dead_after:
                    entry.alive = False
                    dead.append(ip)
                else:
                    doomed.append(entry)
        self._sweep_floor, self._doomed, self._swept = floor, doomed, len(entries)
        return dead

    def forget_unaccepted(self) -> None:
        """After a configuration change: drop nodes that are no longer in the map."""
        for ip in [ip for ip in self.entries if ip != self.local_ip and not self.accept(ip)]:
            del self.entries[ip]
        self._known = self._swept = -1  # rank and scan afresh

    def reserve(self, ip: IPv4Address, now: float) -> None:
        """A process is about to start on ``ip``: count it until that node's own report
        shows more processes, or until ``reserve_hold`` seconds pass without that."""
        entry = self.entries.get(ip)
        if entry is not None:
            if not entry.reserved:
                entry.reserved_base = entry.status.nprocs
            entry.reserved += 1
            entry.reserved_at = now
            self._reserved[id(entry)] = entry

    def expire_reservations(self, now: float) -> None:
        for key, entry in list(self._reserved.items()):
            if not entry.reserved or now - entry.reserved_at > self.reserve_hold:
                entry.reserved = 0
                del self._reserved[key]

    # -- reading ---------------------------------------------------------------------------------
    def suspects(self, count: int, now: float, older_than: float) -> list[IPv4Address]:
        """Up to ``count`` live nodes (not us) whose information is older than
        ``older_than`` seconds, oldest first: the ones to probe before they are taken for dead."""
        limit = now - older_than
        old = (e for ip, e in self.entries.items() if e.alive and e.fresh_at < limit and ip != self.local_ip)
        return [e.status.ip for e in heapq.nsmallest(count, old, key=lambda e: e.fresh_at)]

    def age(self, ip: IPv4Address, now: float) -> float | None:
        entry = self.entries.get(ip)
        return None if entry is None else now - entry.fresh_at

    def alive_nodes(self) -> Iterator[NodeEntry]:
        return (e for e in self.entries.values() if e.alive)

    def freshest(
        self,
        count: int,
        now: float,
        exclude: IPv4Address | None = None,
    ) -> list[tuple[NodeStatus, float]]:
        """Up to ``count`` of the youngest live entries, as ``(status, age)``; ours first."""
        if count <= 0:
            return []
        best = self._youngest(count + 1)  # one spare in case ``exclude`` is among them
        skip = None if exclude is None else self.entries.get(exclude)
        return [(e.status, max(0.0, now - e.fresh_at)) for e in best if e is not skip][:count]

    def _youngest(self, want: int) -> list[NodeEntry]:
        """At least ``want`` of the youngest live entries, youngest first, ours first on ties."""
        entries = self.entries
        local = entries.get(self.local_ip)
        if want <= self._hot_size and self._known == len(entries):
            ranked = [e for e in self._hot.values() if e.alive and e is not local]
            if local is not None and local.alive:
                ranked.insert(0, local)  # stable sort: ours wins ties
            ranked.sort(key=_fresh_at, reverse=True)
            keep = self._hot_size
            if len(ranked) >= keep and ranked[keep - 1].fresh_at >= self._hot_floor:
                del ranked[keep:]
                self._remember(ranked, keep)
                return ranked
            if len(ranked) < keep and self._hot_floor == -math.inf:
                self._remember(ranked, keep)
                return ranked
        # Full ranking: the first call, a larger count, or changes we could not follow.
        others = (e for e in entries.values() if e.alive and e is not local)
        ranked = heapq.nlargest(want, others, key=_fresh_at)
        if local is not None and local.alive:
            i = 0
            while i < len(ranked) and ranked[i].fresh_at > local.fresh_at:
                i += 1
            ranked.insert(i, local)
            del ranked[want:]
        self._known = len(entries)
        self._remember(ranked, want)
        return ranked

    def _remember(self, ranked: list[NodeEntry], keep: int) -> None:
        self._hot = {id(e): e for e in ranked}
        self._hot_size = keep
        self._hot_floor = ranked[-1].fresh_at if len(ranked) >= keep else -math.inf


def _fresh_at(entry: NodeEntry) -> float:
    return entry.fresh_at


def choose_targets(candidates: list[IPv4Address], fanout: int, rng: random.Random) -> list[IPv4Address]:
    """Pick ``fanout`` distinct random gossip targets."""
    if len(candidates) <= fanout:
        return list(candidates)
    return rng.sample(candidates, fanout)
