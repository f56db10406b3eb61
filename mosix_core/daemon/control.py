"""The local control socket: how the ``mos*`` tools talk to mosd.

A Unix stream socket (``etc/mosix/var/mosd.sock``), one JSON object per line each
way: ``{"op": "...", ...}`` → ``{"ok": true, ...}``, or ``{"ok": false, "error": "..."}``
(refused: the manual's message), or that with ``"fault"`` (a bad request, a failure).
Every operation's request and reply are records of :mod:`mosix_core.daemon.protocol`:
a request is decoded (every field checked) before its operation runs, which returns
its reply record or raises :class:`~mosix_core.errors.Refused`.
The caller's uid comes from ``SO_PEERCRED``: everyone may read, only root may
change the node (as with ``mosctl`` and ``mossetpe``), and a user may register
only their own processes. Guests' rows belong to mosd: each guest runs as a uid of
its own (``guest_uids`` in mosd.conf), and a caller running as a guest uid — a guest
that got round its system-call filter, since a guest's calls are made at home — may
only read (:data:`GUEST_OPS`), never change a row, its own or another guest's.

A request carrying ``"noreply": true`` gets no reply line at all (a failure is only
logged): ``mosrun``'s supervisor streams its process-table changes that way
without ever waiting (``mosix_core.daemon.client.Session``).

Process-table operations:

``register``    ``pid`` and optionally ``command``, ``where``, ``frozen``, ``nmigs``,
                ``queue``, ``options``, ``remote_utime`` (see ``mosix_core.cluster.proctable``);
                root only: ``home`` and ``origpid`` (a guest). Re-registering a pid
                replaces its row (only the row's owner or root; a guest's row: root).
``update``      ``pid`` and any of those fields; only the row's owner or root (a
                guest's row: root only, see below).
``unregister``  ``pid``; the same; ``removed`` says whether a row was there.
``supervise``   marks the connection as a supervisor's: every row registered over it
                from then on is removed when the connection closes (the supervisor died).
``processes``   every row (``to_json``), and ``ip``, this node's address.

A row always goes when its process exits (the daemon holds a pidfd per row).

Getting rid of guests, calling our own processes back (all root only):

``out``         ``pid``: send that guest home (``mosmigrate {pid} out``). ``pid`` is the
                guest as listed here — its row, the guest host's pid (``mosps -V``) —
                or the guest process itself (traced by its host). Returns at once, as
                mosmigrate(1) says. The guest host is signalled (:data:`SEND_HOME`);
                one that was not listening yet (still receiving its guest: the signal
                is ignored, not fatal) is signalled again every second until its
                ``SigCgt`` shows it heard.
``expel``       every guest here goes home (``mosctl expel``); returns once all those
                present when it was asked have gone, or fails after ``timeout`` seconds
                naming those left. Each is signalled every second while it is here (a
                move home that failed is tried again). Guests that arrive meanwhile
                are not waited for: as the manual says, ``mosctl block`` first.
``bring``       every process whose home is here and that runs elsewhere (or is
                leaving) is asked home through its mosrun supervisor (as ``mosmigrate
                {pid} home`` does); returns once all are back (or ended), or fails after
                ``timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import signal
import socket
import struct
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Callable

import attrs

from mosix_core import __version__
from mosix_core.cluster import gossip
from mosix_core.daemon import protocol as p
from mosix_core.daemon import handshake
from mosix_core.errors import MosixError, NotInMap, PermissionDenied, ProtocolError, Refused
from mosix_core.linux import procfs
from mosix_core.mosrun import control_socket as supervisors
from mosix_core.contract.records import MosrunRequest, NodeContext, PlacementRequest, PlacementView
from mosix_core.contract.plugins import apply_policies, first_answer
from mosix_core.users import user_name
from mosix_core.cluster.proctable import ProcessEvent, ProcessRecord
from mosix_core.remote import SEND_HOME

MAX_REQUEST = 1024 * 1024
#: all that a caller running as a guest uid (a guest that got round its system-call
#: filter: a guest's own calls go home) may ask: to read, as everyone may
GUEST_OPS = frozenset({"ping", "view", "status", "localstatus", "listpe", "processes", "pending"})
STATE_FLAGS = {p.StateFlag.STAY: gossip.ST_STAY, p.StateFlag.LSTAY: gossip.ST_LSTAY,
               p.StateFlag.BLOCK: gossip.ST_BLOCK}
MOVE_TIMEOUT = p.MOVE_TIMEOUT    # how long expel / bring wait for the processes to move, by default
NUDGE_EVERY = 1.0           # asking again (a lost signal, a move home that failed)
POLL_EVERY = 0.05


class Connection:
    """One client of the control socket, as the process-table operations see it."""

    def __init__(self, uid: int) -> None:
        self.uid = uid
        self.supervisor = False
        self.rows: dict[int, ProcessRecord] = {}   # registered here while supervising
        self.handing_over: socket.socket | None = None   # sent with the reply (SCM_RIGHTS)


_connection: contextvars.ContextVar[Connection | None] = contextvars.ContextVar("mosd_connection", default=None)


def _hand_over(writer: asyncio.StreamWriter, sock: socket.socket) -> None:
    """Pass ``sock`` to the client after its reply (one byte carries the descriptor)."""
    raw = writer.get_extra_info("socket")
    carrier = socket.socket(fileno=os.dup(raw.fileno()))
    try:
        socket.send_fds(carrier, [b"\0"], [sock.fileno()])
    except OSError:
        pass                                   # the client went away: so does the move
    finally:
        carrier.close()
        sock.close()


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


def present(table, records: list[ProcessRecord]) -> list[ProcessRecord]:
    """Those of ``records`` still in the process table (a row replaced since is gone)."""
    return [r for r in records if table.get(r.pid) is r]


class HomeSender:
    """Signals guest hosts :data:`SEND_HOME`, each through a pidfd of its own (opened
    while its row is here, so a pid used again is never signalled)."""

    def __init__(self, table, records: list[ProcessRecord], *, insist: bool) -> None:
        self.table = table
        self.records = records
        self.insist = insist
        self.pidfds: dict[int, int] = {}
        self.heard: set[int] = set()      # hosts that were listening when signalled

    def left(self) -> list[ProcessRecord]:
        return present(self.table, self.records)

    def nudge(self) -> None:
        for record in self.left():
            if record.pid in self.heard and not self.insist:
                continue
            try:
                if record.pid not in self.pidfds:
                    self.pidfds[record.pid] = os.pidfd_open(record.pid)
                caught = procfs.signal_set(procfs.status_fields(record.pid).get("SigCgt", "0"))
                signal.pidfd_send_signal(self.pidfds[record.pid], SEND_HOME)
            except OSError:
                continue                          # it has just ended
            if SEND_HOME in caught:
                self.heard.add(record.pid)

    def done(self) -> bool:
        """Nothing more to do but wait: every host left has heard (and we do not insist)."""
        return not self.insist and all(r.pid in self.heard for r in self.left())

    def close(self) -> None:
        for fd in self.pidfds.values():
            os.close(fd)
        self.pidfds.clear()


class ControlServer:
    def __init__(self, node, path: Path) -> None:
        self.node = node
        self.path = path
        self._server: asyncio.base_events.Server | None = None
        self.on_reconfigure: Callable[[], Any] | None = None
        self.on_stop: Callable[[], Any] | None = None
        self._background: set[asyncio.Task] = set()   # mosmigrate out's nudging, kept alive

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST)
        os.chmod(self.path, 0o666)  # every user may ask; SO_PEERCRED decides what they may change

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._background):
            task.cancel()
        try:
            self.path.unlink()
        except OSError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn: Connection | None = None
        try:
            uid = peer_uid(writer)
            conn = Connection(uid)
            _connection.set(conn)  # each client is served in a task (and a context) of its own
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await self._reply(writer, p.fault("protocol", "request too long"))
                    break
                if not line:
                    break
                reply = await self.handle_line(line, uid)
                if reply is not None:
                    await self._reply(writer, reply)
                    if conn.handing_over is not None:
                        _hand_over(writer, conn.handing_over)
                        conn.handing_over = None
        except (ConnectionError, OSError):
            pass
        finally:
            if conn is not None:
                self.release_connection(conn)
            writer.close()

    async def _reply(self, writer: asyncio.StreamWriter, reply: dict) -> None:
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()

    async def handle_line(self, line: bytes, uid: int) -> dict | None:
        """The reply to one request line; None when the request asked for no reply."""
        noreply = False
        try:
            fields = json.loads(line)
            if not isinstance(fields, dict) or not isinstance(fields.get("op"), str):
                raise ProtocolError("a request is a JSON object with an 'op'")
            op = fields["op"]
            noreply = fields.get("noreply") is True
            request = p.decode(op, fields)
            if op not in GUEST_OPS and handshake.is_guest_uid(self.node, uid):
                raise PermissionDenied("Permission denied: a guest process may not do this")
            result = getattr(self, "op_" + op)(request, uid)
            if asyncio.iscoroutine(result):
                result = await result
            reply = p.answer(result)
        except (ProtocolError, ValueError) as err:
            reply = p.fault("protocol", str(err) if isinstance(err, MosixError) else f"bad request: {err}")
        except MosixError as err:      # Refused; or ConfigError, a policy's error...: an answer all the same
            reply = p.refusal(str(err), getattr(err, "details", None))
        except Exception as err:  # the daemon must survive any request
            self.node.log.error("control request failed", error=f"{type(err).__name__}: {err}")
            reply = p.fault("internal", f"internal error: {type(err).__name__}")
        if not noreply:
            return reply
        if not reply["ok"]:
            self.node.log.debug("no-reply request failed", uid=uid, error=reply["error"])
        return None

    def release_connection(self, conn: Connection) -> None:
        """A supervisor's connection closed: its rows go (unless registered anew since)."""
        for record in conn.rows.values():
            if self.node.proctable.discard(record):
                self.node.pm.hook.mosix_process_event(
                    event=ProcessEvent("exited", record.pid, record.uid, "supervisor gone"))
        conn.rows.clear()

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
    def op_ping(self, req: p.PingRequest, uid: int) -> p.PingReply:
        return p.PingReply(ip=str(self.node.our_ip), version=__version__, pid=os.getpid(), off=self.node.off)

    def op_view(self, req: p.ViewRequest, uid: int) -> p.ViewReply:
        node, now = self.node, time.monotonic()
        node.refresh_local(now)
        addresses = list(dict.fromkeys([*node.config.cluster.nodes(), *node.view.entries.keys()]))
        return p.ViewReply(local=str(node.our_ip), dead_after=node.dead_after, interval=node.interval,
                           nodes=[node_json(node, ip, now) for ip in addresses])

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
        extra = [list(pair) for fields in added for pair in fields]
        return p.LocalStatusReply(
            node=node_json(node, node.our_ip, now),
            daemon={"pid": os.getpid(), "uptime": round(time.time() - node.started, 1),
                    "udp_port": node.settings.udp_port, "tcp_port": node.settings.tcp_port,
                    "gossip_interval": node.interval, "dead_after": node.dead_after,
                    "window": node.window, "stats": dict(node.stats),
                    "peer_server": getattr(node, "peer_server_up", False),
                    "plugins": [plugin.name for plugin in node.pm.plugins_info()]},
            processes={"local": len(node.proctable.local()), "guests": len(node.proctable.guests()),
                       "frozen": node.proctable.frozen_count(),
                       "automatic": {"on": node.settings.automatic_migration, **attrs.asdict(node.balancer.counters)}},
            maxguests=node.config.maxguests.limit if node.config.maxguests else None,
            extra=extra,
        )

    def op_listpe(self, req: p.ListpeRequest, uid: int) -> p.ListpeReply:
        cfg = self.node.config
        ranges = [{"first": str(r.first), "count": r.count, "proximate": r.proximate} for r in cfg.cluster.ranges]
        aliases = [{"alias": str(a.alias), "target": str(a.target)} for a in cfg.cluster.aliases]
        partners = []
        if req.multi:
            partners = [{"name": p.name, "description": p.description, "priority": p.priority,
                         "cango": p.cango, "cantake": p.cantake,
                         "ranges": [{"first": str(r.first), "count": r.count, "proximate": r.proximate}
                                    for r in p.ranges]} for p in cfg.partners]
        return p.ListpeReply(ip=str(self.node.our_ip), number=cfg.node_number(self.node.our_ip), off=self.node.off,
                             ranges=ranges, aliases=aliases, partners=partners)

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

    def op_processes(self, req: p.ProcessesRequest, uid: int) -> p.ProcessesReply:
        return p.ProcessesReply(ip=str(self.node.our_ip), processes=[row.to_json() for row in self.node.proctable])

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
        longer accepted, and our processes running where we no longer may send them."""
        node = self.node
        bad_guests = sum(1 for row in node.proctable.guests() if not node.is_known_address(row.home))
        bad_away = 0
        for row in node.proctable.local():
            try:
                where = IPv4Address(row.where)
            except ValueError:
                continue  # "here", "leaving", "starting"
            if not node.is_known_address(where):
                bad_away += 1
        return bad_guests + bad_away

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

    # -- the process table ----------------------------------------------------------------------------
    def op_register(self, req: p.RegisterRequest, uid: int) -> p.PidReply:
        pid = req.pid
        fields = req.changes.present()
        home, origpid = req.home, req.origpid
        if home is not None or origpid is not None:
            self.require_root(uid)  # guests are the daemon's business, not a user's
            home = IPv4Address(home) if home is not None else None
            if home is None or origpid is None:
                raise ProtocolError("a guest needs both home and origpid")
            if home == self.node.our_ip:
                home = None
            if home is not None:
                fields.setdefault("frozen", "N/A")
        owner = self.process_owner(pid, uid)
        self.may_change(self.node.proctable.get(pid), uid)     # re-registering replaces the row
        if "command" not in fields:
            fields["command"] = procfs.command_line(pid) or "?"
        record = ProcessRecord(pid=pid, uid=owner, command=fields.pop("command"), home=home, origpid=origpid)
        record.apply(fields)
        self.node.watch_process(record)
        conn = _connection.get()
        if conn is not None and conn.supervisor:
            conn.rows[pid] = record
            if len(conn.rows) > 2 * len(self.node.proctable) + 64:  # forget rows that went since
                table = self.node.proctable
                conn.rows = {p: r for p, r in conn.rows.items() if table.get(p) is r}
        self.node.pm.hook.mosix_process_event(event=ProcessEvent("started", pid, owner, record.command))
        return p.PidReply(pid=pid)

    @staticmethod
    def process_owner(pid: int, uid: int) -> int:
        """The owner of live process ``pid``, which caller ``uid`` must be (or root)."""
        try:
            owner = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            raise Refused(f"no such process {pid}") from None
        if uid != 0 and owner != uid:
            raise PermissionDenied(f"process {pid} is not yours")
        return owner

    def owned_row(self, pid: int, uid: int) -> ProcessRecord | None:
        record = self.node.proctable.get(pid)
        self.may_change(record, uid)
        return record

    @staticmethod
    def may_change(record: ProcessRecord | None, uid: int) -> None:
        """May caller ``uid`` change (or replace, or remove) ``record``? A row of ours is
        its owner's; a guest's row is mosd's own (its uid is the guest's, which only the
        guest and its host run as): only root may touch it, or ``mosctl expel`` would
        miss a guest that removed itself."""
        if record is None or uid == 0:
            return
        if record.is_guest or record.uid != uid:
            raise PermissionDenied(f"process {record.pid} is not yours")

    def op_update(self, req: p.UpdateRequest, uid: int) -> p.UpdateReply:
        record = self.owned_row(req.pid, uid)
        if record is None:
            raise Refused(f"{req.pid}: not a MOSIX process")
        changed = record.apply(req.changes.present())
        event = self.node.pm.hook.mosix_process_event
        if "where" in changed:
            event(event=ProcessEvent("migrated", record.pid, record.uid, record.where))
        if "frozen" in changed:
            kind = "unfrozen" if record.frozen in ("-", "N/A") else "frozen"
            event(event=ProcessEvent(kind, record.pid, record.uid, record.frozen))
        return p.UpdateReply(pid=record.pid, changed=sorted(changed))

    def op_unregister(self, req: p.UnregisterRequest, uid: int) -> p.UnregisterReply:
        record = self.owned_row(req.pid, uid)
        removed = record is not None and self.node.proctable.discard(record)
        if removed:
            self.node.pm.hook.mosix_process_event(
                event=ProcessEvent("exited", record.pid, record.uid, "unregistered"))
        return p.UnregisterReply(pid=req.pid, removed=removed)

    def op_consider(self, req: p.ConsiderRequest, uid: int) -> p.NoFields:
        """``/proc/self/migrate`` = -1: the balancer decides about the caller's process now."""
        self.process_owner(req.pid, uid)
        self.node.balancer.consider(req.pid)
        return p.NoFields()

    def op_check_mosrun(self, req: p.CheckMosrunRequest, uid: int) -> p.CheckMosrunReply:
        """The site's mosrun policy (``mosix_check_mosrun``), applied here for the caller.

        mosrun asks the daemon rather than loading every plugin itself: the hooks are
        loaded already (a start-up of ~0.1 s less for every program), they see the
        caller's real uid (SO_PEERCRED), the node's own configuration directory and a
        log only root can write. A refusal (PolicyRefused, or a broken mosrun.conf) is an
        answer: Refused, with the policy's message."""
        request = MosrunRequest.from_fields(req.request, uid=uid, user=user_name(uid), etc=str(self.node.etc))
        # the site's default is this node's mosd.conf, whatever the caller sent
        request = attrs.evolve(request, strict_limitations=self.node.settings.strict_limitations)
        request = apply_policies(self.node.pm, "mosix_check_mosrun", request)
        if not isinstance(request, MosrunRequest):
            raise MosixError("a site policy returned something that is not a MosrunRequest")
        return p.CheckMosrunReply(request=request.policy_fields())

    def target_node(self, text: str | None) -> IPv4Address | None:
        """The node of the map ``text`` names (a number, address or host); None if none."""
        try:
            return self.node.canonical(self.resolve(text))
        except MosixError:
            return None

    async def op_migrate_out(self, req: p.MigrateOutRequest, uid: int) -> p.MigrateOutReply:
        """Open the way for the caller's process ``pid`` to move to node ``to``: the
        authenticated handshake with the target's mosd, whose accepted connection comes
        back with the reply (SCM_RIGHTS). Refused with the manual's reason."""
        node, conn = self.node, _connection.get()
        owner = self.process_owner(req.pid, uid)
        target = self.target_node(req.to)
        if target is None:
            raise Refused(handshake.NOT_IN_MAP)
        if target == node.our_ip or str(target) == req.now_at:
            raise Refused(handshake.ALREADY_THERE)
        row = node.proctable.get(req.pid)
        request = p.MigrateInRequest(uid=owner, user=user_name(owner), pid=req.pid, memory_mb=req.memory_mb or 0,
                                     command=req.command[:p.MAX_PEER_COMMAND], nmigs=req.nmigs,
                                     automatic=req.automatic, locked=bool(row and row.locked),
                                     cpujob=bool(row and row.cpujob),
                                     decayrate=row.decayrate if row else p.DEFAULT_DECAY)
        loop = asyncio.get_running_loop()
        try:
            sock = await loop.run_in_executor(None, handshake.open_migration, node.sealer, node.key, target,
                                              node.settings.tcp_port, request)
        except handshake.MigrationRefused as err:
            raise Refused(err.reason, target=str(target)) from None
        conn.handing_over = sock
        return p.MigrateOutReply(target=str(target), proximate=node.config.is_proximate(target))

    async def op_reattach(self, req: p.ReattachRequest, uid: int) -> p.ReattachReply:
        """Make the cut link of the caller's process ``pid``, away on node ``to``, again:
        the authenticated handshake with that node's mosd, which hands the connection to
        the guest host waiting there for the guest ``token`` names. The connection comes
        back with the reply; refused with why not (``no such guest``: none waits)."""
        node, conn = self.node, _connection.get()
        self.process_owner(req.pid, uid)
        target = self.target_node(req.to)
        if target is None:
            raise Refused(handshake.NOT_IN_MAP)
        loop = asyncio.get_running_loop()
        try:
            sock = await loop.run_in_executor(None, handshake.open_migration, node.sealer, node.key, target,
                                              node.settings.tcp_port, p.PeerReattachRequest(token=req.token, pid=req.pid))
        except handshake.MigrationRefused as err:
            raise Refused(err.reason, target=str(target)) from None
        conn.handing_over = sock
        return p.ReattachReply(target=str(target))

    def op_supervise(self, req: p.SuperviseRequest, uid: int) -> p.NoFields:
        conn = _connection.get()
        if conn is None:
            raise ProtocolError("supervise needs a connection")
        conn.supervisor = True
        return p.NoFields()

    # -- getting rid of guests, calling our processes back ----------------------------------------------
    def guest_row(self, pid: int) -> ProcessRecord:
        """The guest ``pid`` names here: the guest host's row (the pid ``mosps -V``
        lists), or the row of the host tracing the guest process ``pid``."""
        table = self.node.proctable
        record = table.get(pid)
        if record is None:
            try:
                tracer = int(procfs.status_fields(pid).get("TracerPid", "0"))
            except (OSError, ValueError):
                raise Refused(f"{pid}: No such process") from None
            record = table.get(tracer) if tracer else None
            if record is None or not record.is_guest:
                raise Refused(f"{pid}: not a MOSIX process")
        if not record.is_guest:
            raise Refused(f"{pid}: not a guest process (its home is this node)")
        return record

    def op_out(self, req: p.OutRequest, uid: int) -> p.OutReply:
        """``mosmigrate {pid} out``: the guest goes home; no waiting (mosmigrate(1))."""
        self.require_root(uid)
        record = self.guest_row(req.pid)
        self.node.log.info("guest sent out", pid=record.pid, home=str(record.home), origpid=record.origpid)
        task = asyncio.get_running_loop().create_task(self.send_guests_home([record], MOVE_TIMEOUT, insist=False))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return p.OutReply(pid=record.pid, home=str(record.home), origpid=record.origpid)

    async def op_expel(self, req: p.ExpelRequest, uid: int) -> p.ExpelReply:
        """``mosctl expel``: every guest goes home; the reply once they all have."""
        self.require_root(uid)
        timeout = req.timeout
        guests = self.node.proctable.guests()
        self.node.log.info("expelling guests", count=len(guests))
        left = await self.send_guests_home(guests, timeout, insist=True)
        if left:
            raise MosixError(f"{len(left)} guest process(es) did not leave within {timeout:g} seconds "
                             f"(pid {', '.join(str(r.pid) for r in left)})")
        return p.ExpelReply(expelled=len(guests))

    async def op_bring(self, req: p.BringRequest, uid: int) -> p.BringReply:
        """``mosctl bring``: every process of ours running elsewhere comes home; the
        reply once they all have (or ended)."""
        self.require_root(uid)
        timeout = req.timeout
        away = [r for r in self.node.proctable.local() if r.is_away or r.where == "leaving"]
        self.node.log.info("bringing processes home", count=len(away))
        left = await self.bring_home(away, timeout)
        if left:
            raise MosixError(f"{len(left)} process(es) did not come back within {timeout:g} seconds "
                             f"(pid {', '.join(str(r.pid) for r in left)})")
        return p.BringReply(brought=len(away))

    async def send_guests_home(self, records: list[ProcessRecord], timeout: float, *,
                               insist: bool) -> list[ProcessRecord]:
        """Signal the guests' hosts to send them home; those still here after
        ``timeout`` seconds. A host that was not listening yet (still receiving its
        guest) is signalled again every NUDGE_EVERY seconds; one that was is left
        alone unless ``insist`` (then a move home that failed is tried again)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sender = HomeSender(self.node.proctable, records, insist=insist)
        try:
            next_nudge = loop.time()
            while (left := sender.left()) and loop.time() < deadline and not sender.done():
                if loop.time() >= next_nudge:
                    sender.nudge()
                    next_nudge = loop.time() + NUDGE_EVERY
                await asyncio.sleep(POLL_EVERY)
            return left
        finally:
            sender.close()

    async def bring_home(self, records: list[ProcessRecord], timeout: float) -> list[ProcessRecord]:
        """Ask each process's supervisor to bring it home (again every NUDGE_EVERY
        seconds while it is still elsewhere); those not back after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        asking: dict[int, asyncio.Future] = {}
        next_ask = loop.time()

        def coming(records: list[ProcessRecord]) -> list[ProcessRecord]:
            return [r for r in present(self.node.proctable, records) if r.where != "here"]

        while (left := coming(records)) and loop.time() < deadline:
            if loop.time() >= next_ask:
                for record in left:
                    pending = asking.get(record.pid)
                    if record.is_away and (pending is None or pending.done()):
                        asking[record.pid] = loop.run_in_executor(None, self._ask_home, record.pid)
                next_ask = loop.time() + NUDGE_EVERY
            await asyncio.sleep(POLL_EVERY)
        return left

    def _ask_home(self, pid: int) -> None:
        """``mosmigrate {pid} home`` from the daemon (blocking: run in a thread)."""
        try:
            supervisors.request(pid, "home", timeout=NUDGE_EVERY * 5)
        except MosixError as err:               # ended meanwhile, or its supervisor is busy
            self.node.log.debug("bring: asking a process home failed", pid=pid, error=str(err))
