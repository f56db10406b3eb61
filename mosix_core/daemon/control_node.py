"""The control operations on the node itself: reading it (everyone), changing it (root).

``ping``, ``view`` (every node as the tools see it, :func:`node_json`), ``status``
and ``localstatus`` (one node; this one in detail), ``listpe`` (the map),
``bestnode`` (where a new process should start, ``mosix_select_node``), ``pending``
(processes that must move because of the configuration); root only: ``setstate``
(``mosctl stay|lstay|block``), ``setpe`` (a new map), ``off`` (``mossetpe -off``),
``stop``.
"""

from __future__ import annotations

import os
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from mosix_core import __version__
from mosix_core.cluster import gossip
from mosix_core.contract.plugins import first_answer
from mosix_core.contract.records import NodeContext, PlacementRequest, PlacementView
from mosix_core.daemon import protocol as p
from mosix_core.daemon.balancer import disallowed
from mosix_core.daemon.control_base import Operations
from mosix_core.errors import NotInMap

if TYPE_CHECKING:
    from mosix_core.daemon.node import Node

STATE_FLAGS = {p.StateFlag.STAY: gossip.ST_STAY, p.StateFlag.LSTAY: gossip.ST_LSTAY, p.StateFlag.BLOCK: gossip.ST_BLOCK}


def node_json(node: Node, ip: IPv4Address, now: float) -> dict[str, Any]:
    """One node as the tools see it, including the computed ``rstatus`` bits."""
    cfg = node.config
    entry = node.entry(ip)
    partner = cfg.partner_of(ip)
    in_cluster = cfg.cluster.contains(ip)
    is_local = ip == node.our_ip
    data: dict[str, Any] = {
        "ip": str(ip),
        "number": cfg.node_number(ip),
        "local": is_local,
        "in_cluster": in_cluster,
        "partner": partner.name if partner else None,
        "proximate": cfg.is_proximate(ip),
        "known": entry is not None,
        "alive": bool(entry and entry.alive) and not (is_local and node.off),
        "age": None if entry is None else round(max(0.0, now - entry.fresh_at), 3),
    }
    bits = gossip.ST_CONFIGURED if (in_cluster or partner) else 0
    st = entry.status if entry else gossip.NodeStatus(ip, load=0, speed=0, ncpus=0)
    if data["alive"]:
        bits |= gossip.ST_INFO | (st.state & gossip.SELF_REPORTED)
        if data["age"] is not None and data["age"] <= node.dead_after:
            bits |= gossip.ST_FRESH
        accepts = not st.state & (gossip.ST_BLOCK | gossip.ST_OFF)
        if partner is not None and not in_cluster and not partner.cango:
            accepts = False
        if accepts:
            bits |= gossip.ST_ACCEPTS
    data.update(
        {
            "status": bits,
            "state": st.state,
            "off": bool(st.state & gossip.ST_OFF),
            "load": st.load,
            "availability": st.availability,
            "speed": st.speed,
            "ncpus": st.ncpus,
            "frozen": st.frozen,
            "mem_avail_pages": st.mem_avail_pages,
            "mem_total_pages": st.mem_total_pages,
            "swap_free_tenths": st.swap_free_tenths,
            "swap_total_tenths": st.swap_total_tenths,
            "privileged_pages": st.privileged_pages,
            "nprocs": st.nprocs,
            "guests": st.guests,
            "reserved": entry.reserved if entry else 0,
        }
    )
    return data


class NodeOperations(Operations):
    # -- reading -----------------------------------------------------------------------------------
    def op_ping(self, req: p.PingRequest, uid: int) -> p.PingReply:
        return p.PingReply(ip=str(self.node.our_ip), version=__version__, pid=os.getpid(), off=self.node.off)

    def op_view(self, req: p.ViewRequest, uid: int) -> p.ViewReply:
        node, now = self.node, time.monotonic()
        node.refresh_local(now)
        addresses = list(dict.fromkeys([*node.config.cluster.nodes(), *node.view.entries.keys()]))
        return p.ViewReply(
            local=str(node.our_ip),
            dead_after=node.dead_after,
            interval=node.interval,
            nodes=tuple(node_json(node, ip, now) for ip in addresses),
        )

    def op_status(self, req: p.StatusRequest, uid: int) -> p.StatusReply:
        node, now = self.node, time.monotonic()
        node.refresh_local(now)
        ip = self.resolve(req.node)
        if not node.is_known_address(ip):
            raise NotInMap(f"{req.node}: not in map")
        return p.StatusReply(node=node_json(node, ip, now))

    def op_localstatus(self, req: p.LocalStatusRequest, uid: int) -> p.LocalStatusReply:
        node, now = self.node, time.monotonic()
        node.refresh_local(now)
        added = node.pm.hook.mosix_status_fields(node=NodeContext.of(node))
        extra = tuple(list(pair) for fields in added for pair in fields)
        return p.LocalStatusReply(
            node=node_json(node, node.our_ip, now),
            daemon={
                "pid": os.getpid(),
                "uptime": round(time.time() - node.started, 1),
                "udp_port": node.settings.udp_port,
                "tcp_port": node.settings.tcp_port,
                "gossip_interval": node.interval,
                "dead_after": node.dead_after,
                "window": node.window,
                "stats": dict(node.stats),
                "peer_server": getattr(node, "peer_server_up", False),
                "plugins": [plugin.name for plugin in node.pm.plugins_info()],
            },
            processes={
                "local": len(node.proctable.local()),
                "guests": len(node.proctable.guests()),
                "frozen": node.proctable.frozen_count(),
                "automatic": {"on": node.settings.automatic_migration, **attrs.asdict(node.balancer.counters)},
            },
            maxguests=node.config.maxguests.limit if node.config.maxguests else None,
            extra=extra,
        )

    def op_listpe(self, req: p.ListpeRequest, uid: int) -> p.ListpeReply:
        cfg = self.node.config
        ranges = tuple({"first": str(r.first), "count": r.count, "proximate": r.proximate} for r in cfg.cluster.ranges)
        aliases = tuple({"alias": str(a.alias), "target": str(a.target)} for a in cfg.cluster.aliases)
        partners: tuple[dict[str, Any], ...] = ()
        if req.multi:
            partners = tuple(
                {
                    "name": p.name,
                    "description": p.description,
                    "priority": p.priority,
                    "cango": p.cango,
                    "cantake": p.cantake,
                    "ranges": [{"first": str(r.first), "count": r.count, "proximate": r.proximate} for r in p.ranges],
                }
                for p in cfg.partners
            )
        return p.ListpeReply(
            ip=str(self.node.our_ip),
            number=cfg.node_number(self.node.our_ip),
            off=self.node.off,
            ranges=ranges,
            aliases=aliases,
            partners=partners,
        )

    def op_bestnode(self, req: p.BestnodeRequest, uid: int) -> p.BestnodeReply:
        node, now = self.node, time.monotonic()
        node.refresh_local(now)
        request = PlacementRequest(memory_mb=req.memory_mb or 0)
        view = PlacementView(node.view, node.config.is_local_cluster)
        chosen = first_answer(node.pm.hook.mosix_select_node, default=None, request=request, view=view)
        if chosen is None:
            return p.BestnodeReply(ip=None, number=None)
        ip = chosen.status.ip
        if req.reserve:
            node.view.reserve(ip, now)
        return p.BestnodeReply(ip=str(ip), number=node.config.node_number(ip))

    # -- changing ------------------------------------------------------------------------------------
    def op_setstate(self, req: p.SetstateRequest, uid: int) -> p.SetstateReply:
        self.require_root(uid)
        flag = STATE_FLAGS[req.flag]
        if req.value:
            self.node.state_bits |= flag
        else:
            self.node.state_bits &= ~flag
        self.node.refresh_local(time.monotonic())
        self.node.log.info("state changed", flag=req.flag.value, value=req.value)
        return p.SetstateReply(state=self.node.state_bits)

    async def op_setpe(self, req: p.SetpeRequest, uid: int) -> p.SetpeReply:
        self.require_root(uid)
        node = self.node
        map_override = Path(req.map) if req.map else None
        changed = node.reload(map_override=map_override, ip_override=req.ip or None)
        if changed and self.on_reconfigure is not None:
            await self.on_reconfigure()
        return p.SetpeReply(ip=str(node.our_ip), nodes=len(node.config.cluster), pending=self.pending_moves())

    def op_pending(self, req: p.PendingRequest, uid: int) -> p.PendingReply:
        return p.PendingReply(pending=self.pending_moves())

    def pending_moves(self) -> int:
        """Processes that must move because of the configuration: guests from nodes no
        longer accepted, and our processes running where we no longer may send them (the
        balancer moves them: :meth:`mosix_core.daemon.balancer.Balancer.enforce_map`)."""
        guests, away = disallowed(self.node)
        return len(guests) + len(away)

    def op_off(self, req: p.OffRequest, uid: int) -> p.PendingReply:
        self.require_root(uid)
        self.node.off = True
        self.node.log.warning("MOSIX disabled (mossetpe -off)")
        return p.PendingReply(pending=self.pending_moves())

    def op_stop(self, req: p.StopRequest, uid: int) -> p.NoFields:
        self.require_root(uid)
        if self.on_stop is not None:
            self.on_stop()
        return p.NoFields()
