"""The local control socket: how the ``mos*`` tools talk to mosd.

A Unix stream socket (``etc/mosix/var/mosd.sock``), one JSON object per line each
way: ``{"op": "...", ...}`` → ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
The caller's uid comes from ``SO_PEERCRED``: everyone may read, only root may
change the node (as with ``mosctl`` and ``mossetpe``), and a user may register
only their own processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Callable

from mosix_core import __version__, gossip
from mosix_core.errors import MosixError, NotInMap, PermissionDenied, ProtocolError
from mosix_core.placement import PlacementRequest, PlacementView
from mosix_core.proctable import ProcessEvent, ProcessRecord

MAX_REQUEST = 1024 * 1024
STATE_FLAGS = {"stay": gossip.ST_STAY, "lstay": gossip.ST_LSTAY, "block": gossip.ST_BLOCK}


def peer_uid(writer: asyncio.StreamWriter) -> int:
    sock = writer.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def node_json(node, ip: IPv4Address, now: float) -> dict[str, Any]:
    """One node as the tools see it, including the computed ``rstatus`` bits."""
    cfg = node.config
    entry = node.entry(ip)
    partner = cfg.partner_of(ip)
    in_cluster = cfg.cluster.contains(ip)
    is_local = ip == node.our_ip
    data: dict[str, Any] = {
        "ip": str(ip), "number": cfg.node_number(ip), "local": is_local, "in_cluster": in_cluster,
        "partner": partner.name if partner else None, "proximate": cfg.is_proximate(ip),
        "known": entry is not None, "alive": bool(entry and entry.alive) and not (is_local and node.off),
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
    data.update({
        "status": bits, "state": st.state, "off": bool(st.state & gossip.ST_OFF),
        "load": st.load, "availability": st.availability, "speed": st.speed, "ncpus": st.ncpus,
        "frozen": st.frozen, "mem_avail_pages": st.mem_avail_pages, "mem_total_pages": st.mem_total_pages,
        "swap_free_tenths": st.swap_free_tenths, "swap_total_tenths": st.swap_total_tenths,
        "privileged_pages": st.privileged_pages, "nprocs": st.nprocs, "guests": st.guests,
        "reserved": entry.reserved if entry else 0,
    })
    return data


class ControlServer:
    def __init__(self, node, path: Path) -> None:
        self.node = node
        self.path = path
        self._server: asyncio.base_events.Server | None = None
        self.on_reconfigure: Callable[[], Any] | None = None
        self.on_stop: Callable[[], Any] | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST)
        os.chmod(self.path, 0o666)  # every user may ask; SO_PEERCRED decides what they may change

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        try:
            self.path.unlink()
        except OSError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            uid = peer_uid(writer)
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await self._reply(writer, {"ok": False, "error": "request too long"})
                    break
                if not line:
                    break
                reply = await self.handle_line(line, uid)
                await self._reply(writer, reply)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _reply(self, writer: asyncio.StreamWriter, reply: dict) -> None:
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()

    async def handle_line(self, line: bytes, uid: int) -> dict:
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise ProtocolError("a request is a JSON object with an 'op'")
            handler = getattr(self, "op_" + request["op"], None)
            if handler is None:
                raise ProtocolError(f"unknown operation '{request['op']}'")
            result = handler(request, uid)
            if asyncio.iscoroutine(result):
                result = await result
            return {"ok": True, **result}
        except (MosixError, ValueError, TypeError, KeyError) as err:
            message = str(err) if isinstance(err, MosixError) else f"bad request: {err}"
            return {"ok": False, "error": message}
        except Exception as err:  # the daemon must survive any request
            self.node.log.error("control request failed", error=f"{type(err).__name__}: {err}")
            return {"ok": False, "error": f"internal error: {type(err).__name__}"}

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def require_root(uid: int) -> None:
        if uid != 0:
            raise PermissionDenied("Permission denied: only the Super-User may do this")

    def resolve(self, text: Any) -> IPv4Address:
        if text in (None, ""):
            return self.node.our_ip
        return self.node.config.resolve_node(str(text))

    # -- reading -----------------------------------------------------------------------------------
    def op_ping(self, req: dict, uid: int) -> dict:
        return {"ip": str(self.node.our_ip), "version": __version__, "pid": os.getpid(), "off": self.node.off}

    def op_view(self, req: dict, uid: int) -> dict:
        node, now = self.node, time.monotonic()
        node.refresh_local(now)
        addresses = list(dict.fromkeys([*node.config.cluster.nodes(), *node.view.entries.keys()]))
        return {"local": str(node.our_ip), "dead_after": node.dead_after, "interval": node.interval,
                "nodes": [node_json(node, ip, now) for ip in addresses]}

    def op_status(self, req: dict, uid: int) -> dict:
        node, now = self.node, time.monotonic()
        node.refresh_local(now)
        ip = self.resolve(req.get("node"))
        if not node.is_known_address(ip):
            raise NotInMap(f"{req.get('node')}: not in map")
        return {"node": node_json(node, ip, now)}

    def op_localstatus(self, req: dict, uid: int) -> dict:
        node, now = self.node, time.monotonic()
        node.refresh_local(now)
        extra = [list(pair) for fields in node.pm.hook.mosix_status_fields(node=node) for pair in fields]
        return {
            "node": node_json(node, node.our_ip, now),
            "daemon": {"pid": os.getpid(), "uptime": round(time.time() - node.started, 1),
                       "udp_port": node.settings.udp_port, "tcp_port": node.settings.tcp_port,
                       "gossip_interval": node.interval, "dead_after": node.dead_after,
                       "window": node.window, "stats": dict(node.stats),
                       "peer_server": getattr(node, "peer_server_up", False),
                       "plugins": [p.name for p in node.pm.plugins_info()]},
            "processes": {"local": len(node.proctable.local()), "guests": len(node.proctable.guests()),
                          "frozen": node.proctable.frozen_count()},
            "maxguests": node.config.maxguests.limit if node.config.maxguests else None,
            "extra": extra,
        }

    def op_listpe(self, req: dict, uid: int) -> dict:
        cfg = self.node.config
        ranges = [{"first": str(r.first), "count": r.count, "proximate": r.proximate} for r in cfg.cluster.ranges]
        aliases = [{"alias": str(a.alias), "target": str(a.target)} for a in cfg.cluster.aliases]
        partners = []
        if req.get("multi"):
            partners = [{"name": p.name, "description": p.description, "priority": p.priority,
                         "cango": p.cango, "cantake": p.cantake,
                         "ranges": [{"first": str(r.first), "count": r.count, "proximate": r.proximate}
                                    for r in p.ranges]} for p in cfg.partners]
        return {"ip": str(self.node.our_ip), "number": cfg.node_number(self.node.our_ip), "off": self.node.off,
                "ranges": ranges, "aliases": aliases, "partners": partners}

    def op_bestnode(self, req: dict, uid: int) -> dict:
        node, now = self.node, time.monotonic()
        node.refresh_local(now)
        request = PlacementRequest(memory_mb=int(req.get("memory_mb") or 0))
        view = PlacementView(node.view, node.config.is_local_cluster)
        chosen = node.pm.hook.mosix_select_node(request=request, view=view)
        if chosen is None:
            return {"ip": None, "number": None}
        ip = chosen.status.ip
        if req.get("reserve", True):
            node.view.reserve(ip, now)
        return {"ip": str(ip), "number": node.config.node_number(ip)}

    def op_processes(self, req: dict, uid: int) -> dict:
        return {"processes": [p.to_json() for p in self.node.proctable]}

    # -- changing ------------------------------------------------------------------------------------
    def op_setstate(self, req: dict, uid: int) -> dict:
        self.require_root(uid)
        flag = STATE_FLAGS.get(req.get("flag"))
        if flag is None:
            raise ProtocolError("flag must be stay, lstay or block")
        if req.get("value"):
            self.node.state_bits |= flag
        else:
            self.node.state_bits &= ~flag
        self.node.refresh_local(time.monotonic())
        self.node.log.info("state changed", flag=req.get("flag"), value=bool(req.get("value")))
        return {"state": self.node.state_bits}

    async def op_setpe(self, req: dict, uid: int) -> dict:
        self.require_root(uid)
        node = self.node
        map_override = Path(req["map"]) if req.get("map") else None
        changed = node.reload(map_override=map_override, ip_override=req.get("ip") or None)
        if changed and self.on_reconfigure is not None:
            await self.on_reconfigure()
        return {"ip": str(node.our_ip), "nodes": len(node.config.cluster), "pending": self.pending_moves()}

    def op_pending(self, req: dict, uid: int) -> dict:
        return {"pending": self.pending_moves()}

    def pending_moves(self) -> int:
        """Processes that must move because of the configuration: guests from nodes no
        longer accepted, and our processes running where we no longer may send them."""
        node = self.node
        bad_guests = sum(1 for p in node.proctable.guests() if not node.is_known_address(p.home))
        bad_away = 0
        for p in node.proctable.local():
            try:
                where = IPv4Address(p.where)
            except ValueError:
                continue  # "here", "leaving", "starting"
            if not node.is_known_address(where):
                bad_away += 1
        return bad_guests + bad_away

    def op_off(self, req: dict, uid: int) -> dict:
        self.require_root(uid)
        self.node.off = True
        self.node.log.warning("MOSIX disabled (mossetpe -off)")
        return {"pending": self.pending_moves()}

    def op_stop(self, req: dict, uid: int) -> dict:
        self.require_root(uid)
        if self.on_stop is not None:
            self.on_stop()
        return {}

    def op_register(self, req: dict, uid: int) -> dict:
        pid = int(req["pid"])
        try:
            owner = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            raise ProtocolError(f"no such process {pid}") from None
        if uid != 0 and owner != uid:
            raise PermissionDenied(f"process {pid} is not yours")
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            command = "?"
        record = ProcessRecord(pid=pid, uid=owner, command=command)
        self.node.watch_process(record)
        self.node.pm.hook.mosix_process_event(event=ProcessEvent("started", pid, owner, command))
        return {"pid": pid}
