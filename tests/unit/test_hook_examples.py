"""The examples of the hook contract are real: each one in the hookspecs' docstrings and
in docs/hooks.md is run, registered on a real plugin manager and called with the real
records the kernel passes."""

from __future__ import annotations

import inspect
import re
import textwrap
import time
from ipaddress import IPv4Address
from pathlib import Path
from types import ModuleType

import attrs
import pytest
import typer

from mosix_core.cluster.gossip import ClusterView, NodeEntry, NodeStatus
from mosix_core.cluster.proctable import ProcessEvent, ProcessRecord
from mosix_core.cluster.resources import ResourceSample
from mosix_core.config import DaemonSettings
from mosix_core.contract import hookspecs
from mosix_core.contract.balancing import BalanceView, MigrationDecision, NodeFacts, ProcessFacts
from mosix_core.contract.plugins import build_plugin_manager
from mosix_core.contract.records import (
    Admission,
    AdmissionRequest,
    FreezeChoice,
    FreezeSituation,
    MosrunRequest,
    NodeContext,
    OpeningProcess,
    PlacementRequest,
    PlacementView,
    SpecialPathResult,
)
from mosix_core.errors import PolicyRefused

A, B, C = (IPv4Address(f"10.0.0.{i}") for i in (1, 2, 3))
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("mosix_"))
HOOKS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "hooks.md"


def code_blocks(doc: str) -> list[str]:
    """The literal blocks of a docstring: the indented lines after a line ending in '::'."""
    lines = inspect.cleandoc(doc).splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].rstrip().endswith("::"):
            i += 1
            block = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("    ")):
                block.append(lines[i])
                i += 1
            blocks.append(textwrap.dedent("\n".join(block)).strip() + "\n")
        else:
            i += 1
    return blocks


def examples() -> list[tuple[str, int, str]]:
    """(the hooks it is an example of, its number, its code): docstrings, then the page."""
    found = [(name, k, code) for name in HOOKS for k, code in enumerate(code_blocks(getattr(hookspecs, name).__doc__))]
    found += [("module", k, code) for k, code in enumerate(code_blocks(hookspecs.__doc__))]
    return found + page_examples()


def page_examples() -> list[tuple[str, int, str]]:
    """docs/hooks.md: each ``## mosix_...`` section's python blocks."""
    found = []
    for section in re.split(r"^## ", HOOKS_PAGE.read_text(), flags=re.M)[1:]:
        title, _, body = section.partition("\n")
        if title.startswith("mosix_"):
            hooks = "+".join(name.strip() for name in title.split(","))
            blocks = re.findall(r"```python\n(.*?)```", body, re.S)
            found += [(f"page:{hooks}", k, code) for k, code in enumerate(blocks)]
    return found


def documented_hooks(documented: str) -> list[str] | None:
    """The hooks an example must implement (None: any, for the module's example)."""
    if documented == "module":
        return None
    return documented.removeprefix("page:").split("+")


def status(ip, load=0, speed=10000, free_mb=4096):
    return NodeStatus(ip, load=load, speed=speed, ncpus=2, mem_avail_pages=free_mb * 256, mem_total_pages=8192 * 256)


@pytest.fixture
def node(mosix_etc):
    from mosix_core.daemon.node import Node

    running = Node(mosix_etc, pm=build_plugin_manager())
    running.proctable.add(ProcessRecord(pid=4242, uid=65534, command="x", home=B, origpid=7))
    return NodeContext.of(running)


@pytest.fixture
def cluster_view():
    view = ClusterView(A, dead_after=10)
    now = time.monotonic()
    view.update_local(status(A, load=300), now)
    view.merge([(status(B, speed=20000), 0.0), (status(C, load=50), 0.0)], now)
    return view


def arguments(name: str, node: NodeContext, view: ClusterView) -> dict:
    """What the kernel passes to ``name``, chosen so that the examples answer."""
    rows = [ProcessRecord(pid=pid, uid=1000, command="x", started=100 + pid) for pid in (1, 2, 3)]
    return {
        "mosix_select_node": dict(request=PlacementRequest(), view=PlacementView(view, lambda ip: True)),
        "mosix_admit_guest": dict(
            request=AdmissionRequest(origin=B, memory_mb=8192, from_local_cluster=False),
            node=attrs.evolve(node, status=attrs.evolve(node.status, load=300)),
        ),
        "mosix_choose_freeze": dict(
            candidates=rows,
            situation=FreezeSituation(load=8.0, running=3, frozen=0, red=6.0, blue=4.0, min_keep=1, max_procs=-1),
        ),
        "mosix_special_path": dict(path="/proc/self/site_quota", process=OpeningProcess(flags=0)),
        "mosix_check_mosrun": dict(request=MosrunRequest(uid=1000, user="alice", argv=("prog",))),
        "mosix_measure_resources": dict(settings=DaemonSettings.default(), processes=tuple(rows)),
        "mosix_gossip_transport": dict(node=node),
        "mosix_status_fields": dict(node=node),
        "mosix_cli_commands": dict(),
        "mosix_node_started": dict(node=node),
        "mosix_node_stopping": dict(node=node),
        "mosix_view_changed": dict(view=view, alive=[B], dead=[C]),
        "mosix_process_event": dict(event=ProcessEvent("started", 4242, 1000, "prog")),
        "mosix_migration_decision": dict(
            candidates=(ProcessFacts(pid=1, image_mb=9000), ProcessFacts(pid=2, home=B, image_mb=9000)),
            view=BalanceView.of(NodeFacts(ip=A, load=50, mem_avail_mb=4096), [NodeFacts(ip=C, load=0)], now=0.0),
        ),
    }[name]


def is_answer(name: str, answer) -> bool:
    """Is ``answer`` what the contract says ``name`` returns (the examples all answer)?"""
    pairs = lambda kinds: (  # noqa: E731
        isinstance(answer, list)
        and all(
            isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], kinds) for p in answer
        )
    )
    return {
        "mosix_select_node": lambda: isinstance(answer, NodeEntry),
        "mosix_admit_guest": lambda: isinstance(answer, Admission),
        "mosix_choose_freeze": lambda: isinstance(answer, FreezeChoice) and answer.freeze,
        "mosix_special_path": lambda: isinstance(answer, SpecialPathResult),
        "mosix_migration_decision": lambda: isinstance(answer, MigrationDecision),
        "mosix_check_mosrun": lambda: isinstance(answer, (MosrunRequest, PolicyRefused)),
        "mosix_measure_resources": lambda: isinstance(answer, ResourceSample),
        "mosix_gossip_transport": lambda: all(callable(getattr(answer, m, None)) for m in ("start", "send", "close")),
        "mosix_status_fields": lambda: pairs(str) and answer,
        "mosix_cli_commands": lambda: pairs(typer.Typer) and answer,
        "mosix_node_started": lambda: answer is None,
        "mosix_node_stopping": lambda: answer is None,
        "mosix_view_changed": lambda: answer is None,
        "mosix_process_event": lambda: answer is None,
    }[name]()


def test_every_hook_has_an_example_in_its_docstring_and_on_the_page():
    found = {name for name, _, _ in examples()}
    assert {*HOOKS, "module"} <= found
    on_page = {hook for name in found if name.startswith("page:") for hook in documented_hooks(name)}
    assert on_page == set(HOOKS)


@pytest.mark.parametrize("documented, k, code", examples(), ids=[f"{name}-{k}" for name, k, _ in examples()])
def test_the_example_runs_against_the_real_records(documented, k, code, node, cluster_view):
    example = ModuleType(f"example_{documented}_{k}")
    exec(compile(code, f"<{documented} example {k}>", "exec"), example.__dict__)
    implemented = [name for name in HOOKS if hasattr(getattr(example, name, None), "mosix_impl")]
    assert implemented and implemented == (documented_hooks(documented) or implemented)
    build_plugin_manager(extra=[("example", example)])  # the contract's names and arguments
    for name in implemented:
        try:
            answer = getattr(example, name)(**arguments(name, node, cluster_view))
        except PolicyRefused as refused:
            answer = refused
        assert is_answer(name, answer), (name, answer)
