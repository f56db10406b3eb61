"""The control operations on the process table (and the site's mosrun policy).

``register``    ``pid`` and optionally ``command``, ``where``, ``frozen``, ``nmigs``,
                ``queue``, ``options``, ``remote_utime`` (see ``mosix_core.cluster.proctable``);
                root only: ``home`` and ``origpid`` (a guest). Re-registering a pid
                replaces its row (only the row's owner or root; a guest's row: root).
``update``      ``pid`` and any of those fields; only the row's owner or root (a
                guest's row: root only, see :meth:`ProcessOperations.may_change`).
``unregister``  ``pid``; the same; ``removed`` says whether a row was there.
``supervise``   marks the connection as a supervisor's: every row registered over it
                from then on is removed when the connection closes (the supervisor died).
``processes``   every row (``to_json``), and ``ip``, this node's address.
``consider``    ``pid``: the balancer decides about the caller's process now.
``check_mosrun`` the site's mosrun policy, applied for the caller.

A row always goes when its process exits (the daemon holds a pidfd per row).
"""

from __future__ import annotations

from ipaddress import IPv4Address

import attrs

from mosix_core.cluster.proctable import ProcessEvent, ProcessRecord
from mosix_core.contract.plugins import apply_policies
from mosix_core.contract.records import MosrunRequest
from mosix_core.daemon import protocol as p
from mosix_core.daemon.control_base import Operations, connection_for, current_connection
from mosix_core.errors import MosixError, PermissionDenied, ProtocolError, Refused
from mosix_core.linux import procfs
from mosix_core.users import user_name


class ProcessOperations(Operations):
    def op_processes(self, req: p.ProcessesRequest, uid: int) -> p.ProcessesReply:
        return p.ProcessesReply(ip=str(self.node.our_ip), processes=tuple(self.node.proctable))

    def op_register(self, req: p.RegisterRequest, uid: int) -> p.PidReply:
        pid = req.pid
        fields = req.changes.present()
        home: IPv4Address | None = None
        origpid = req.origpid
        if req.home is not None or origpid is not None:
            self.require_root(uid)  # guests are the daemon's business, not a user's
            home = IPv4Address(req.home) if req.home is not None else None
            if home is None or origpid is None:
                raise ProtocolError("a guest needs both home and origpid")
            if home == self.node.our_ip:
                home = None
            if home is not None:
                fields.setdefault("frozen", "N/A")
        owner = self.process_owner(pid, uid)
        self.may_change(self.node.proctable.get(pid), uid)  # re-registering replaces the row
        if "command" not in fields:
            fields["command"] = procfs.command_line(pid) or "?"
        record = ProcessRecord(pid=pid, uid=owner, command=fields.pop("command"), home=home, origpid=origpid)
        record.apply(fields)
        self.node.watch_process(record)
        conn = current_connection.get()
        if conn is not None and conn.supervisor:
            conn.rows[pid] = record
            if len(conn.rows) > 2 * len(self.node.proctable) + 64:  # forget rows that went since
                table = self.node.proctable
                conn.rows = {p: r for p, r in conn.rows.items() if table.get(p) is r}
        self.node.pm.hook.mosix_process_event(event=ProcessEvent("started", pid, owner, record.command))
        return p.PidReply(pid=pid)

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
        return p.UpdateReply(pid=record.pid, changed=tuple(sorted(changed)))

    def op_unregister(self, req: p.UnregisterRequest, uid: int) -> p.UnregisterReply:
        record = self.owned_row(req.pid, uid)
        removed = record is not None and self.node.proctable.discard(record)
        if record is not None and removed:
            self.node.pm.hook.mosix_process_event(event=ProcessEvent("exited", record.pid, record.uid, "unregistered"))
        return p.UnregisterReply(pid=req.pid, removed=removed)

    def op_supervise(self, req: p.SuperviseRequest, uid: int) -> p.NoFields:
        connection_for("supervise").supervisor = True
        return p.NoFields()

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
