"""The contract between the mosix-py kernel and its plugins (docs/hooks.md).

Every feature of MOSIX that a site may want to change is a hook here, and the kernel
calls every hook declared here (tests/cluster/test_hooks_called.py proves it in a
real run of the daemons). The built-in behaviour lives in ``mosix_plugins`` (the
repository's ``plugins/``) and is registered through the same ``mosix.plugins``
entry-point group a third party uses; built-in defaults are ``trylast`` so a site
plugin answering the same ``firstresult`` hook wins without any configuration.

Kinds of hooks:
* "Who decides?" hooks are ``firstresult``: the first plugin that returns
  something other than ``None`` decides (placement, admission, freezing choice,
  special paths, transport, resource measurement). The kernel calls them through
  :func:`mosix_core.contract.plugins.first_answer`, which says what happens when none answers.
* A chained policy (:data:`CHAINED_HOOKS`): every implementation runs, each seeing
  the request as the previous one left it; wrappers are refused there.
* "Everyone adds" hooks return lists (status fields, CLI commands).
* Notifications return nothing (node started, view changed, process events).

Hooks receive read-only things: records made for the call, or Protocols naming the
attributes of the kernel's objects that a plugin may read (``mosix_core.contract.records``),
never the daemon itself. Every hook name starts with ``mosix_``; a plugin
implementing a name that is not declared here is rejected when the plugin manager
is built. The examples below are run by tests/unit/test_hook_examples.py.

Example site plugin (``hooks/prefer_fast.py``): the least loaded of the fast nodes,
or let the built-in decide::

    from mosix_core.contract.hookspecs import hookimpl

    @hookimpl
    def mosix_select_node(request, view):
        fast = [n for n in view.candidates(request) if n.status.speed >= 20000]
        return min(fast, key=lambda n: n.status.load, default=None)
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # only for the signatures: every mosrun loads this module, keep it light
    import typer

    from mosix_core.cluster.gossip import NodeEntry
    from mosix_core.cluster.proctable import ProcessEvent
    from mosix_core.cluster.resources import ResourceSample
    from mosix_core.config.daemon import DaemonSettings
    from mosix_core.contract.balancing import BalanceView, MigrationDecision, ProcessFacts
    from mosix_core.contract.records import (
        Admission,
        AdmissionRequest,
        FreezeChoice,
        FreezeSituation,
        MosrunRequest,
        NodeContext,
        NodesView,
        OpeningProcess,
        PlacementRequest,
        PlacementView,
        ProcessRow,
        SpecialPathResult,
    )
    from mosix_core.net.transport import DatagramTransport

PROJECT = "mosix"
ENTRY_POINT_GROUP = "mosix.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: hooks whose implementations run one after another, each seeing the request as the
#: previous one left it (:func:`mosix_core.contract.plugins.apply_policies`); no wrappers there
CHAINED_HOOKS = frozenset({"mosix_check_mosrun"})


# --- placement ---------------------------------------------------------------------------------


@hookspec(firstresult=True)
def mosix_select_node(request: PlacementRequest, view: PlacementView) -> NodeEntry | None:
    """Choose the node a new process should start on (``mosrun -b``, ``mosbestnode``).

    Called by mosd for each ``mosbestnode`` and each ``mosrun -b``. ``request`` is a
    :class:`mosix_core.contract.records.PlacementRequest` (memory needed, whether the local
    node may be chosen, ...); ``view`` a :class:`mosix_core.contract.records.PlacementView`,
    whose ``candidates(request)`` are the live nodes the request may go to. Return
    one of them (a :class:`mosix_core.cluster.gossip.NodeEntry`: ``.status`` has its ``ip``,
    ``load``, ``speed``, ``ncpus``, ``mem_avail_mb`` ...), or ``None`` to let the next
    plugin decide; when none does, no node qualifies. The built-in picks the node with
    the lowest load after adding one process.

    Example (keep everything at home)::

        from mosix_core.contract.hookspecs import hookimpl

        @hookimpl
        def mosix_select_node(request, view):
            return view.local
    """


@hookspec(firstresult=True)
def mosix_migration_decision(candidates: Sequence[ProcessFacts], view: BalanceView) -> MigrationDecision | None:
    """Decide whether one of this node's processes should move by itself, and where
    (automatic load balancing, memory ushering, I/O pulling a process home).

    Called by mosd's balancer about once a second (jittered), and at once for a process
    that writes -1 to ``/proc/self/migrate``, while no move it decided is under way.
    ``candidates`` are the MOSIX processes running on this node that could move (not frozen,
    not moving): :class:`mosix_core.contract.balancing.ProcessFacts` (``pid``, ``home`` —
    ``None`` at home —, ``cpu_share``, ``cpu_seconds``, ``image_mb``, ``needmem_mb``, the
    decayed ``io_calls``/``io_bytes``, ``cpujob``, ``locked``, ``since_move``). ``view`` is a
    :class:`mosix_core.contract.balancing.BalanceView`: ``local`` (this node's
    :class:`~mosix_core.contract.balancing.NodeFacts`: ``load`` now, ``speed``, ``ncpus``,
    ``mem_avail_mb``, ``state`` with the stay/lstay/block bits), ``nodes`` (the others, best
    first), ``now``, ``settings``, ``sent``. Return a
    :class:`mosix_core.contract.balancing.MigrationDecision` (one ``pid``, its ``target``,
    the ``reason`` the daemon logs, the expected ``gain`` in seconds), or
    ``MigrationDecision.stay(reason)`` to keep everything where it is, or ``None`` to let the
    next plugin decide; when none answers, nothing moves. The built-in (``balancing``,
    docs/balancing.md) moves a process where it would run fastest, counting itself, when
    that saves more than the move costs.

    Example (keep the processes of a node's owner at home; the built-in decides the rest)::

        from mosix_core.contract.hookspecs import hookimpl
        from mosix_core.contract.balancing import MigrationDecision

        @hookimpl
        def mosix_migration_decision(candidates, view):
            if any(p.home is None for p in candidates) and view.local.load < 100:
                return MigrationDecision.stay("the owner's processes stay while the load is low")
            return None
    """


# --- guests ---------------------------------------------------------------------------------


@hookspec(firstresult=True)
def mosix_admit_guest(request: AdmissionRequest, node: NodeContext) -> Admission | None:
    """Decide whether this node accepts a process that wants to move here.

    Called by mosd when another node asks to send a process. ``request`` is a
    :class:`mosix_core.contract.records.AdmissionRequest` (origin node, memory needed,
    whether the origin is in our cluster); ``node`` this node's
    :class:`mosix_core.contract.records.NodeContext`. Return an
    :class:`mosix_core.contract.records.Admission`: accepted, or refused with the reason
    the user sees (``"other node refused"``; :data:`mosix_core.contract.records.TOO_BUSY`
    reads "{node} is too busy to receive now"). When no plugin answers, the node
    refuses.

    Example (no guest needing more than 4 GB)::

        from mosix_core.contract.hookspecs import hookimpl
        from mosix_core.contract.records import Admission

        @hookimpl
        def mosix_admit_guest(request, node):
            if request.memory_mb > 4096:
                return Admission.refuse("other node refused")
            return None
    """


# --- freezing ---------------------------------------------------------------------------------


@hookspec(firstresult=True)
def mosix_choose_freeze(candidates: Sequence[ProcessRow], situation: FreezeSituation) -> FreezeChoice | None:
    """Choose which local processes to freeze (or unfreeze) under the freezing policy.

    Called by mosd about once a second while a freezing policy is set (freeze.conf).
    ``candidates`` are the freezable process-table rows
    (:class:`mosix_core.contract.records.ProcessRow`: ``frozen`` is ``"-"`` running or
    ``"A"`` frozen by this policy); ``situation`` is a
    :class:`mosix_core.contract.records.FreezeSituation` (load, marks, counts). Return a
    :class:`mosix_core.contract.records.FreezeChoice` listing pids to freeze and to
    unfreeze, or ``None``; when none answers, nothing changes.

    Example (when above the RED mark, freeze the largest first)::

        from mosix_core.contract.hookspecs import hookimpl
        from mosix_core.contract.records import FreezeChoice

        @hookimpl
        def mosix_choose_freeze(candidates, situation):
            running = [p for p in candidates if p.frozen == "-"]
            if situation.red < 0 or situation.load <= situation.red or not running:
                return None
            return FreezeChoice(freeze=(max(running, key=lambda p: p.started).pid,))
    """


# --- the programming interface ------------------------------------------------------------------


@hookspec(firstresult=True)
def mosix_special_path(path: str, process: OpeningProcess) -> SpecialPathResult | None:
    """Answer an ``open()`` of a ``/proc/self/{name}`` that neither mosix(7) nor Linux
    defines: the site's own addition to the programming interface.

    Called by the supervisor of a MOSIX process (``mosrun``) when the program opens
    such a name with the interface's flags (0, 1, 2, perhaps with ``O_CREAT``).
    ``process`` is a :class:`mosix_core.contract.records.OpeningProcess` (flags, the value
    written, where it runs, ...). Return a
    :class:`mosix_core.contract.records.SpecialPathResult` (the value ``open`` returns, or
    -1 and an errno), or ``None`` if the name is not yours; when none answers, the
    open fails with ENOENT as under Linux. The manual's names and Linux's own
    (``status``, ``maps``, ``fd/``...) are never asked about.

    Example::

        from mosix_core.contract.hookspecs import hookimpl
        from mosix_core.contract.records import SpecialPathResult

        @hookimpl
        def mosix_special_path(path, process):
            if path == "/proc/self/site_quota" and process.reading:
                return SpecialPathResult.value(42)
            return None
    """


# --- mosrun site policy -----------------------------------------------------------------------------


@hookspec
def mosix_check_mosrun(request: MosrunRequest) -> MosrunRequest | None:
    """Check (and possibly adjust) a ``mosrun`` invocation before anything starts.

    Called for every ``mosrun``: by mosd when it runs on the node, else by mosrun
    itself. A chained policy: the kernel calls the implementations one after another,
    each seeing the request as the previous one left it (see
    :func:`mosix_core.contract.plugins.apply_policies`). Return ``None`` to accept the
    request as it is, a new :class:`mosix_core.contract.records.MosrunRequest` to replace
    it (e.g. with ``-b`` forced), or raise :class:`mosix_core.errors.PolicyRefused`
    to refuse it. ``wrapper=True`` is refused on this hook.

    Example::

        from mosix_core.errors import PolicyRefused
        from mosix_core.contract.hookspecs import hookimpl

        @hookimpl
        def mosix_check_mosrun(request):
            if request.uid != 0 and request.memory_mb is None:
                raise PolicyRefused("mosrun: -m{mb} is mandatory on this cluster")
            return None

    ``request.strict_limitations`` starts as mosd.conf's ``strict_limitations``; a
    policy that sets it gives the program (and its children) the manual's
    LIMITATIONS exactly, or lifts them, for this invocation::

        import attrs

        from mosix_core.contract.hookspecs import hookimpl

        AUDITED_USERS = {"alice"}

        @hookimpl
        def mosix_check_mosrun(request):
            if request.user in AUDITED_USERS:
                return attrs.evolve(request, strict_limitations=True)
            return None
    """


# --- node resources, transport --------------------------------------------------------------------


@hookspec(firstresult=True)
def mosix_measure_resources(settings: DaemonSettings, processes: Sequence[ProcessRow]) -> ResourceSample | None:
    """Measure this node's resources for gossip.

    Called by mosd four times a second. ``settings`` is mosd.conf's
    :class:`mosix_core.config.daemon.DaemonSettings`; ``processes`` the rows of the
    local process table. Return a :class:`mosix_core.cluster.resources.ResourceSample`. The
    built-in measures the whole machine ("host") or only the processes this node
    hosts ("virtual", for several nodes sharing one machine). mosd cannot run
    without an answer.

    Example (lend the cluster at most 4 of this machine's CPUs)::

        import attrs

        from mosix_core.contract.hookspecs import hookimpl
        from mosix_core.cluster.resources import measure_host

        @hookimpl
        def mosix_measure_resources(settings, processes):
            sample = measure_host()
            return attrs.evolve(sample, ncpus=min(sample.ncpus, 4))
    """


@hookspec(firstresult=True)
def mosix_gossip_transport(node: NodeContext) -> DatagramTransport | None:
    """Provide the transport that carries gossip datagrams between nodes.

    Called by mosd when it starts and whenever its address or configuration changes.
    Return an object with ``async start(on_datagram)``, ``send(ip, data)`` and
    ``close()`` (:class:`mosix_core.net.transport.DatagramTransport`). Messages are
    already authenticated when they reach the transport; a transport only moves
    bytes. The built-in is UDP unicast. mosd cannot run without an answer.

    Example (gossip on another UDP port)::

        from mosix_core.contract.hookspecs import hookimpl
        from mosix_plugins.udp_gossip import UdpTransport

        @hookimpl
        def mosix_gossip_transport(node):
            return UdpTransport(node.ip, 5253)
    """


# --- "everyone adds" -----------------------------------------------------------------------------------


@hookspec
def mosix_status_fields(node: NodeContext) -> list[tuple[str, str]]:
    """Add ``(label, value)`` lines to ``mosctl localstatus``.

    Called by mosd for each ``mosctl localstatus``, with this node's
    :class:`mosix_core.contract.records.NodeContext`.

    Example::

        from mosix_core.contract.hookspecs import hookimpl

        @hookimpl
        def mosix_status_fields(node):
            return [("Rack", "7"), ("Guests", str(len(node.guest_homes)))]
    """


@hookspec
def mosix_cli_commands() -> list[tuple[str, typer.Typer]]:
    """Add sub-commands to ``mosctl``: return a list of ``(name, typer.Typer)`` pairs.

    Called by ``mosctl`` when it starts.

    Example (``mosctl rack``)::

        import typer

        from mosix_core.contract.hookspecs import hookimpl

        rack_app = typer.Typer()

        @rack_app.command()
        def show():
            typer.echo("rack 7")

        @hookimpl
        def mosix_cli_commands():
            return [("rack", rack_app)]
    """


# --- notifications -----------------------------------------------------------------------------------------


@hookspec
def mosix_node_started(node: NodeContext) -> None:
    """The daemon is up (sockets bound, configuration loaded).

    Called by mosd once, with this node's :class:`mosix_core.contract.records.NodeContext`.

    Example::

        import logging

        from mosix_core.contract.hookspecs import hookimpl

        @hookimpl
        def mosix_node_started(node):
            logging.getLogger("site").info("MOSIX node %s is up (%s)", node.ip, node.etc)
    """


@hookspec
def mosix_node_stopping(node: NodeContext) -> None:
    """The daemon is about to stop.

    Called by mosd once, as it stops (``mosd stop``, SIGTERM).

    Example::

        import logging

        from mosix_core.contract.hookspecs import hookimpl

        @hookimpl
        def mosix_node_stopping(node):
            logging.getLogger("site").info("MOSIX node %s stops", node.ip)
    """


@hookspec
def mosix_view_changed(view: NodesView, alive: list[IPv4Address], dead: list[IPv4Address]) -> None:
    """Nodes came alive or were declared dead in this node's view of the cluster.

    Called by mosd when its view changes. ``view`` is its
    :class:`mosix_core.contract.records.NodesView` (``local_ip``, ``entries`` by address);
    ``alive`` and ``dead`` are the addresses that changed.

    Example::

        import logging

        from mosix_core.contract.hookspecs import hookimpl

        @hookimpl
        def mosix_view_changed(view, alive, dead):
            for ip in dead:
                logging.getLogger("site").warning("%s sees %s dead", view.local_ip, ip)
    """


@hookspec
def mosix_process_event(event: ProcessEvent) -> None:
    """A MOSIX process event (started, migrated, frozen, unfrozen, exited) — for
    logging and accounting.

    Called by mosd as its process table changes. ``event`` is a
    :class:`mosix_core.cluster.proctable.ProcessEvent` (``kind``, ``pid``, ``uid``,
    ``detail``). The built-in writes it to the system log when
    ``/etc/mosix/.log_mosrun`` exists.

    Example (counting the programs each user starts)::

        from collections import Counter

        from mosix_core.contract.hookspecs import hookimpl

        STARTS = Counter()

        @hookimpl
        def mosix_process_event(event):
            if event.kind == "started":
                STARTS[event.uid] += 1
    """
