"""mosd's heart: one MOSIX node — its configuration, its view of the cluster, gossip.

The node owns no sockets itself; the gossip transport is a plugin
(``mosix_gossip_transport``), the peer TCP listener and the local control socket
live in ``mosix_core.daemon.peer`` and ``mosix_core.daemon.control``. Everything
time-dependent takes ``time.monotonic()`` readings so a wall-clock jump cannot
kill or revive nodes.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mosix_core import log
from mosix_core.cluster import gossip
from mosix_core.cluster.gossip import ClusterView, NodeEntry, NodeStatus
from mosix_core.cluster.proctable import ProcessEvent, ProcessRecord, ProcessTable
from mosix_core.cluster.resources import LoadSmoother, ResourceSample, standard_load
from mosix_core.config import MosixConfig, load_config, load_secret
from mosix_core.contract.plugins import MosixPluginManager, first_answer, plugin_manager_for
from mosix_core.daemon.autofreeze import AutoFreezer
from mosix_core.daemon.balancer import Balancer
from mosix_core.errors import AuthenticationError, ProtocolError
from mosix_core.net import wire

if TYPE_CHECKING:
    from mosix_core.daemon.control import ControlServer

SAMPLE_INTERVAL = 0.25
PROBES_PER_ROUND = 4  # suspects probed directly per gossip round
PROBE_ANSWER_SPACING = 0.05  # seconds between two answers to the same prober
SUSPECT_AFTER = 0.7  # probe a live node whose information is older than this share of dead_after
AUTH_LOG_EVERY = 10.0  # seconds: one "Authentication violation" line per source per period
# Anyone can send datagrams from many addresses, so the lines are limited in all too:
# a burst, then a trickle, and a line saying how many were held back.
AUTH_LOG_BURST = 20
AUTH_LOG_RATE = 0.2  # lines a second once the burst is spent
AUTH_LOG_SOURCES = 1024  # sources remembered for AUTH_LOG_EVERY (the oldest forgotten first)
AUTH_SUMMARY_EVERY = 10.0  # seconds between two "... suppressed" lines


class Node:
    """A running MOSIX node (the state behind one ``mosd``)."""

    def __init__(
        self,
        etc: Path,
        *,
        map_override: Path | None = None,
        ip_override: str | None = None,
        pm: MosixPluginManager | None = None,
    ) -> None:
        self.etc = etc
        self.map_override = map_override
        self.ip_override = ip_override
        self.log = log.get("mosd")
        self.config: MosixConfig = load_config(etc, map_override=map_override)
        self.key = wire.derive_key(load_secret(etc))
        self.our_ip: IPv4Address = self.config.our_ip(ip_override)
        self.pm = pm or plugin_manager_for(self.config.daemon, etc)
        self.state_bits = 0
        self.off = False
        self.started = time.time()
        self.rng = random.Random()
        self.proctable = ProcessTable()
        self.spare_guest_host = None  # daemon.migration.SpareGuestHost, ready for a guest
        self.autofreezer = AutoFreezer(self)
        self.balancer = Balancer(self)
        self.control: ControlServer | None = None  # set by the server
        self.smoother = LoadSmoother(tau=2.0, tau_up=0.5)
        self.sample: ResourceSample | None = None
        self.view = self.new_view()
        self.sealer = wire.Sealer(self.key, self.our_ip)
        self.replay = wire.ReplayGuard()
        self.transport: Any = None
        self.stats = {
            "sent": 0,
            "received": 0,
            "auth_failures": 0,
            "garbled": 0,
            "foreign": 0,
            "probes": 0,
            "auth_sources": 0,
        }
        self._answered: dict[IPv4Address, float] = {}
        self._auth_log = log.Throttle(
            burst=AUTH_LOG_BURST, rate=AUTH_LOG_RATE, per_key=AUTH_LOG_EVERY, keys=AUTH_LOG_SOURCES
        )
        self._auth_summary_due = False
        self._targets_cache: list[IPv4Address] | None = None
        log.bind(node=str(self.our_ip))

    # -- configuration ------------------------------------------------------------------------
    @property
    def settings(self):
        return self.config.daemon

    @property
    def interval(self) -> float:
        return self.settings.gossip_interval

    @property
    def window(self) -> int:
        if self.settings.gossip_window:
            return self.settings.gossip_window
        return gossip.window_for(self.settings.max_datagram, wire.OVERHEAD)

    @property
    def dead_after(self) -> float:
        """How old information may grow before its node is declared dead.

        With a bounded window, information about n nodes needs about n/window
        periods to cycle through a node's messages; allow four such cycles and
        never fewer than ten periods.
        """
        if self.settings.dead_after:
            return self.settings.dead_after
        cycles = math.ceil(max(1, self.node_count) / self.window)
        return self.interval * max(10, 4 * cycles)

    @property
    def reserve_hold(self) -> float:
        """How long a mosbestnode promise lasts without the node's report showing it."""
        return max(5.0, 3 * self.interval)

    def new_view(self) -> ClusterView:
        view = ClusterView(self.our_ip, accept=self.is_known_address, dead_after=self.dead_after)
        view.reserve_hold = self.reserve_hold
        return view

    @property
    def node_count(self) -> int:
        return len(self.config.cluster) + sum(sum(r.count for r in p.ranges) for p in self.config.partners)

    def is_known_address(self, ip: IPv4Address) -> bool:
        return self.config.cluster.contains(ip) or self.config.partner_of(ip) is not None

    def canonical(self, ip: IPv4Address) -> IPv4Address | None:
        found = self.config.cluster.canonical(ip)
        if found is not None:
            return found
        return ip if self.config.partner_of(ip) is not None else None

    def reload(self, *, map_override: Path | None = None, ip_override: str | None = None) -> bool:
        """Re-read the configuration (``mossetpe``); returns True if our address changed."""
        config = load_config(self.etc, map_override=map_override)
        our_ip = config.our_ip(ip_override)
        self.key = wire.derive_key(load_secret(self.etc))
        self.config, self.map_override, self.ip_override = config, map_override, ip_override
        self._targets_cache = None
        self.view.dead_after = self.dead_after
        self.view.reserve_hold = self.reserve_hold
        changed = our_ip != self.our_ip
        # A new sealer (and so a new epoch): peers accept our messages under the new key.
        self.sealer = wire.Sealer(self.key, our_ip)
        if changed:
            self.our_ip = our_ip
            self.view = self.new_view()
            log.bind(node=str(our_ip))
        else:
            self.view.forget_unaccepted()
        self.off = False
        self.log.info("configuration reloaded", nodes=len(config.cluster), ip=str(our_ip))
        return changed

    # -- local status ---------------------------------------------------------------------------
    def measure(self, now: float) -> None:
        sample = first_answer(
            self.pm.hook.mosix_measure_resources, settings=self.settings, processes=tuple(self.proctable)
        )
        self.sample = sample
        self.smoother.add(sample.runnable, now)

    def local_status(self) -> NodeStatus:
        s = self.sample or ResourceSample(0, 1, 0, 0, 0, 0)
        pages = 1024 * 1024 // gossip.PAGE_SIZE
        return NodeStatus(
            ip=self.our_ip,
            load=standard_load(self.smoother.value, s.ncpus, self.config.speed),
            speed=self.config.speed,
            ncpus=s.ncpus,
            frozen=self.proctable.frozen_count(),
            mem_avail_pages=s.mem_avail_mb * pages,
            mem_total_pages=s.mem_total_mb * pages,
            swap_free_tenths=round(s.swap_free_mb / 102.4),
            swap_total_tenths=round(s.swap_total_mb / 102.4),
            nprocs=len(self.proctable),
            guests=len(self.proctable.guests()),
            state=self.state_bits | (gossip.ST_OFF if self.off else 0),
        )

    def refresh_local(self, now: float) -> None:
        self.view.update_local(self.local_status(), now)

    # -- gossip ----------------------------------------------------------------------------------
    def gossip_targets(self) -> list[IPv4Address]:
        if self._targets_cache is None:
            nodes = self.config.cluster.nodes()
            for partner in self.config.partners:
                nodes.extend(partner.nodes())
            self._targets_cache = [ip for ip in dict.fromkeys(nodes) if ip != self.our_ip]
        return self._targets_cache

    def choose_targets(self) -> list[IPv4Address]:
        """Half of the time among nodes known alive (fast spreading where the map has
        holes), otherwise among every configured node (so newcomers are found)."""
        alive = [e.status.ip for e in self.view.alive_nodes() if e.status.ip != self.our_ip]
        pool = alive if alive and self.rng.random() < 0.5 else self.gossip_targets()
        return gossip.choose_targets(pool, self.settings.gossip_fanout, self.rng)

    def gossip_once(self, now: float) -> int:
        """Send one round of gossip; returns the number of datagrams sent.

        Besides the random targets, the round probes a few *suspects*: live nodes whose
        information has grown older than 70 % of ``dead_after``. Random gossip
        leaves a long tail of old entries in large clusters; a probe asks the suspect
        to answer at once, so only a node that really stopped answering is declared dead.
        """
        if self.off or self.transport is None:
            return 0
        self.refresh_local(now)
        sent = sum(self.send_gossip(target, now) for target in self.choose_targets())
        for suspect in self.view.suspects(PROBES_PER_ROUND, now, self.dead_after * SUSPECT_AFTER):
            sent += self.send_gossip(suspect, now, flags=wire.FLAG_ANSWER)
            self.stats["probes"] += 1
        return sent

    def send_gossip(self, target: IPv4Address, now: float, flags: int = 0) -> int:
        entries = self.view.freshest(self.window, now, exclude=target)
        data = self.sealer.seal(wire.GOSSIP, gossip.encode_entries(entries), flags=flags)
        try:
            self.transport.send(target, data)
        except OSError as err:  # unreachable target: normal for holes in the map
            self.log.debug("gossip send failed", target=str(target), error=str(err))
            return 0
        self.stats["sent"] += 1
        return 1

    def auth_violation(self, source: str, why: str) -> None:
        self.stats["auth_failures"] += 1
        if self._auth_log.allow(source, time.monotonic()):
            self._say_held_back()
            self.log.warning(f"Authentication violation with {source}", reason=why)
        elif self._auth_log.held_back and not self._auth_summary_due:
            # said later even if the flood stops now
            try:
                asyncio.get_running_loop().call_later(AUTH_SUMMARY_EVERY, self._auth_summary_due_now)
                self._auth_summary_due = True
            except RuntimeError:  # no event loop (a test driving the node by hand): said with the next line
                pass
        self.stats["auth_sources"] = len(self._auth_log)

    def _auth_summary_due_now(self) -> None:
        self._auth_summary_due = False
        self._say_held_back()

    def _say_held_back(self) -> None:
        held_back = self._auth_log.take_held_back()
        if held_back:
            self.log.warning(f"{held_back} more authentication violations suppressed")

    def on_datagram(self, data: bytes, source_ip: str) -> None:
        """Handle one received gossip datagram. Never raises: bad input is counted and logged."""
        if self.off:
            return
        now = time.monotonic()
        try:
            env = wire.open_envelope(self.key, data)
            if env.kind != wire.GOSSIP:
                raise ProtocolError(f"unexpected message kind {env.kind} on the gossip port")
            src = self.canonical(IPv4Address(source_ip))
            if src is None or self.canonical(env.sender) != src:
                self.stats["foreign"] += 1
                self.log.debug("gossip from outside the map dropped", source=source_ip, claims=str(env.sender))
                return
            self.replay.check(env)
            entries = gossip.decode_entries(env.payload)
        except AuthenticationError as err:
            self.auth_violation(source_ip, str(err))
            return
        except (ProtocolError, ValueError) as err:
            self.stats["garbled"] += 1
            self.log.debug("garbled datagram dropped", source=source_ip, error=str(err))
            return
        self.stats["received"] += 1
        revived = self.view.merge(entries, now)
        if revived:
            self.announce(revived, [])
        if env.flags & wire.FLAG_ANSWER:
            self.answer_probe(src, now)

    def answer_probe(self, prober: IPv4Address, now: float) -> None:
        # An answer is no larger than the probe, so probes cannot amplify traffic; the
        # spacing only bounds the work a misbehaving (but authenticated) peer can cause.
        if now - self._answered.get(prober, -math.inf) < PROBE_ANSWER_SPACING:
            return
        self._answered[prober] = now
        self.refresh_local(now)
        self.send_gossip(prober, now)

    def sweep(self, now: float) -> None:
        self.view.expire_reservations(now)
        dead = self.view.sweep(now)
        if dead:
            self.announce([], dead)

    def announce(self, alive: list[IPv4Address], dead: list[IPv4Address]) -> None:
        for ip in alive:
            self.log.info("node is alive", peer=str(ip))
        for ip in dead:
            self.log.warning("node is not responding", peer=str(ip))
        self.pm.hook.mosix_view_changed(view=self.view, alive=alive, dead=dead)

    def entry(self, ip: IPv4Address) -> NodeEntry | None:
        return self.view.entries.get(ip)

    # -- the process table -------------------------------------------------------------------------
    def watch_process(self, record: ProcessRecord) -> None:
        """Add a process to the table; its row goes away the moment it exits (pidfd).

        Re-registering a pid replaces its row and closes the old row's pidfd, so a
        stale watcher can never remove the new row.
        """
        try:
            pidfd = os.pidfd_open(record.pid)
        except OSError as err:
            raise ProtocolError(f"cannot watch process {record.pid}: {err.strerror}") from None
        loop = asyncio.get_running_loop()

        def release() -> None:  # called once, when this row leaves the table for any reason
            loop.remove_reader(pidfd)
            os.close(pidfd)

        def exited() -> None:
            # discard() calls release(); a replaced row's reader was already removed
            if self.proctable.discard(record):
                self.pm.hook.mosix_process_event(event=ProcessEvent("exited", record.pid, record.uid))

        self.proctable.add(record, release=release)
        loop.add_reader(pidfd, exited)

    # -- the run loop -------------------------------------------------------------------------------
    async def run_loops(self, stop: asyncio.Event) -> None:
        """Sampling, gossip and the dead-node sweep, until ``stop`` is set."""
        from mosix_core.daemon.handshake import keep_a_spare_guest_host

        await keep_a_spare_guest_host(self)
        next_gossip = time.monotonic() + self.rng.uniform(0, self.interval)
        while not stop.is_set():
            now = time.monotonic()
            try:
                self.measure(now)
                self.autofreezer.tick(now)
                self.balancer.tick(now)
                if now >= next_gossip:
                    self.gossip_once(now)
                    # Jitter keeps nodes from falling into lock-step.
                    next_gossip = now + self.interval * self.rng.uniform(0.8, 1.2)
                self.sweep(now)
            except Exception as err:  # one bad round must not stop the node
                self.log.error("gossip round failed", error=f"{type(err).__name__}: {err}")
            try:
                await asyncio.wait_for(stop.wait(), timeout=min(SAMPLE_INTERVAL, self.interval / 2))
            except TimeoutError:
                pass
