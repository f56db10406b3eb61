"""The contract between the mosix-py kernel and its plugins.

Every feature of MOSIX that a site may want to change is a hook here. The
built-in behaviour lives in ``mosix_plugins`` (the repository's ``plugins/``)
and is registered through the same ``mosix.plugins`` entry-point group a third
party uses; built-in defaults are ``trylast`` so a site plugin answering the
same ``firstresult`` hook wins without any configuration.

Kinds of hooks:
* "Who decides?" hooks are ``firstresult``: the first plugin that returns
  something other than ``None`` decides (placement, migration, admission,
  freezing choice, special paths, transport, resource measurement).
* "Everyone adds" hooks return lists (status fields, CLI commands).
* Notifications return nothing (node started, view changed, process events).

Every hook name starts with ``mosix_``; a plugin implementing a name that is not
declared here is rejected when the plugin manager is built.

Example site plugin (``hooks/prefer_fast.py``)::

    from mosix_core.hookspecs import hookimpl

    @hookimpl
    def mosix_select_node(request, view):
        fast = [n for n in view.candidates(request) if n.speed >= 20000]
        return min(fast, key=lambda n: n.load, default=None) and ...
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "mosix"
ENTRY_POINT_GROUP = "mosix.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: hooks whose implementations run one after another, each seeing the request as the
#: previous one left it (:func:`mosix_core.plugins.apply_policies`); no wrappers there
CHAINED_HOOKS = frozenset({"mosix_check_mosrun"})


# --- placement and load balancing ---------------------------------------------------------

@hookspec(firstresult=True)
def mosix_select_node(request: Any, view: Any) -> Any:
    """Choose the node a new process should start on (``mosrun -b``, ``mosbestnode``).

    ``request`` is a :class:`mosix_core.placement.PlacementRequest` (memory needed,
    whether the local node may be chosen, ...); ``view`` is the daemon's
    :class:`mosix_core.gossip.ClusterView`. Return the chosen
    :class:`mosix_core.gossip.NodeStatus`, or ``None`` to let the next plugin decide.
    The built-in answer picks the node with the lowest load after adding one process.

    Example::

        @hookimpl
        def mosix_select_node(request, view):
            return view.local  # keep everything at home
    """


# --- guests ---------------------------------------------------------------------------------

@hookspec(firstresult=True)
def mosix_admit_guest(request: Any, node: Any) -> Any:
    """Decide whether this node accepts an incoming process.

    ``request`` is a :class:`mosix_core.placement.AdmissionRequest` (origin node,
    memory needed, whether the origin is in our cluster); ``node`` is the daemon's
    local state. Return an :class:`mosix_core.placement.Admission` (accepted, or
    refused with the reason the user sees, e.g. "other node refused").

    Example::

        @hookimpl
        def mosix_admit_guest(request, node):
            if request.memory_mb > 4096:
                return Admission.refuse("other node refused")
    """


# --- freezing ---------------------------------------------------------------------------------

@hookspec(firstresult=True)
def mosix_choose_freeze(candidates: Any, situation: Any) -> Any:
    """Choose which local processes to freeze (or unfreeze) under the freezing policy.

    ``candidates`` are the freezable process-table rows; ``situation`` is a
    :class:`mosix_core.placement.FreezeSituation` (load, marks, counts). Return a
    :class:`mosix_core.placement.FreezeChoice` listing pids to freeze and to
    unfreeze, or ``None``.

    Example::

        @hookimpl
        def mosix_choose_freeze(candidates, situation):
            return FreezeChoice(freeze=(max(candidates, key=lambda p: p.memory_mb).pid,))
    """


# --- the programming interface and private files ------------------------------------------------

@hookspec(firstresult=True)
def mosix_special_path(path: str, process: Any) -> Any:
    """Handle an ``open()`` of a path MOSIX intercepts (``/proc/self/*``, ``/proc/mosix/*``,
    private temporary directories).

    Return a :class:`mosix_core.placement.SpecialPathResult` (value to return from
    ``open``, or an errno), or ``None`` if the path is not yours.

    Example::

        @hookimpl
        def mosix_special_path(path, process):
            if path == "/proc/self/site_quota":
                return SpecialPathResult.value(42)
    """


# --- mosrun site policy -----------------------------------------------------------------------------

@hookspec
def mosix_check_mosrun(request: Any) -> Any:
    """Check (and possibly adjust) a ``mosrun`` invocation before anything starts.

    The kernel calls the implementations one after another, each seeing the
    request as the previous one left it (see :func:`mosix_core.plugins.apply_policies`).
    Return ``None`` to accept the request as it is, a new
    :class:`mosix_core.placement.MosrunRequest` to replace it (e.g. with ``-b``
    forced), or raise :class:`mosix_core.errors.PolicyRefused` to refuse it.

    Example::

        @hookimpl
        def mosix_check_mosrun(request):
            if request.memory_mb is None:
                raise PolicyRefused("mosrun: -m{mb} is mandatory on this cluster")

    ``request.strict_limitations`` starts as mosd.conf's ``strict_limitations``; a
    policy that sets it gives the program (and its children) the manual's
    LIMITATIONS exactly, or lifts them, for this invocation::

        @hookimpl
        def mosix_check_mosrun(request):
            if request.user in AUDITED_USERS:
                return attrs.evolve(request, strict_limitations=True)
    """


# --- node resources, transport --------------------------------------------------------------------

@hookspec(firstresult=True)
def mosix_measure_resources(settings: Any, processes: Any) -> Any:
    """Measure this node's resources for gossip.

    ``settings`` is the daemon's :class:`mosix_core.config.DaemonSettings`;
    ``processes`` is the local process table. Return a
    :class:`mosix_core.resources.ResourceSample`. The built-in measures the whole
    machine ("host") or only the processes this node hosts ("virtual", for
    several nodes sharing one machine).

    Example::

        @hookimpl
        def mosix_measure_resources(settings, processes):
            return ResourceSample(runnable=0.0, ncpus=64, mem_total_mb=..., ...)
    """


@hookspec(firstresult=True)
def mosix_gossip_transport(daemon: Any) -> Any:
    """Provide the transport that carries gossip datagrams between nodes.

    Return an object with ``async start(on_datagram)``, ``send(ip, data)`` and
    ``close()`` (see :class:`mosix_core.net.transport.DatagramTransport`).
    Messages are already authenticated when they reach the transport; a transport
    only moves bytes. The built-in is UDP unicast.

    Example::

        @hookimpl
        def mosix_gossip_transport(daemon):
            return MulticastTransport(daemon.our_ip, group="239.1.2.3")
    """


# --- "everyone adds" -----------------------------------------------------------------------------------

@hookspec
def mosix_status_fields(node: Any) -> list[tuple[str, str]]:
    """Add ``(label, value)`` lines to ``mosctl localstatus``.

    Example::

        @hookimpl
        def mosix_status_fields(node):
            return [("Site", "rack 7")]
    """


@hookspec
def mosix_cli_commands() -> list[Any]:
    """Add sub-commands to ``mosctl``: return a list of ``(name, typer.Typer)`` pairs.

    Example::

        @hookimpl
        def mosix_cli_commands():
            return [("rack", rack_app)]
    """


# --- notifications -----------------------------------------------------------------------------------------

@hookspec
def mosix_node_started(node: Any) -> None:
    """The daemon is up (sockets bound, configuration loaded).

    Example::

        @hookimpl
        def mosix_node_started(node):
            open("/run/mosix.up", "w").close()
    """


@hookspec
def mosix_node_stopping(node: Any) -> None:
    """The daemon is about to stop.

    Example::

        @hookimpl
        def mosix_node_stopping(node):
            os.unlink("/run/mosix.up")
    """


@hookspec
def mosix_view_changed(view: Any, alive: list[Any], dead: list[Any]) -> None:
    """Nodes came alive or were declared dead in this node's view of the cluster.

    Example::

        @hookimpl
        def mosix_view_changed(view, alive, dead):
            for node in dead:
                page_operator(f"{node.ip} is dead")
    """


@hookspec
def mosix_process_event(event: Any) -> None:
    """A MOSIX process event (started, migrated, frozen, exited) — for logging and accounting.

    ``event`` is a :class:`mosix_core.proctable.ProcessEvent`. The built-in writes
    it to the system log when ``/etc/mosix/.log_mosrun`` exists.

    Example::

        @hookimpl
        def mosix_process_event(event):
            accounting.record(event.uid, event.kind)
    """
