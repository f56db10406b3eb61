"""The built-in decision plugins, through the hook bus as the daemon calls them."""

from __future__ import annotations

import subprocess
import sys
import time
from ipaddress import IPv4Address

import attrs
import pytest

from mosix_core.cluster.gossip import ST_BLOCK, ClusterView, NodeStatus
from mosix_core.cluster.proctable import ProcessRecord
from mosix_core.cluster.resources import LoadSmoother, VirtualMeter, measure_host, standard_load
from mosix_core.contract.hookspecs import hookimpl
from mosix_core.contract.plugins import build_plugin_manager
from mosix_core.contract.records import (
    TOO_BUSY,
    AdmissionRequest,
    FreezeChoice,
    FreezeSituation,
    NodeContext,
    PlacementRequest,
    PlacementView,
)
from mosix_core.mosrun.migration import failed_migrating

A, B, C, D = (IPv4Address(f"10.0.0.{i}") for i in range(1, 5))
PAGES_PER_MB = 256


def status(ip, load=0, speed=10000, ncpus=1, free_mb=4096, state=0):
    return NodeStatus(
        ip,
        load=load,
        speed=speed,
        ncpus=ncpus,
        mem_avail_pages=free_mb * PAGES_PER_MB,
        mem_total_pages=8192 * PAGES_PER_MB,
        state=state,
    )


def make_view(*statuses, local=A, cluster=(A, B, C)):
    view = ClusterView(local, dead_after=10)
    now = time.monotonic()
    for st in statuses:
        view.update_local(st, now) if st.ip == local else view.merge([(st, 0.0)], now)
    return PlacementView(view, lambda ip: ip in cluster)


@pytest.fixture(scope="module")
def pm():
    return build_plugin_manager()


def test_best_node_is_the_least_loaded_after_adding_one_process(pm):
    view = make_view(status(A, load=150), status(B, load=90), status(C, load=100, speed=40000))
    chosen = pm.hook.mosix_select_node(request=PlacementRequest(), view=view)
    assert chosen.status.ip == C  # 100 + 25 beats 90 + 100
    # memory, block and the local-cluster rule filter candidates
    view = make_view(status(A, load=500), status(B, free_mb=100), status(C, state=ST_BLOCK), status(D))
    assert pm.hook.mosix_select_node(request=PlacementRequest(memory_mb=200), view=view).status.ip == A
    assert pm.hook.mosix_select_node(request=PlacementRequest(memory_mb=9000), view=view) is None
    # ties go home
    view = make_view(status(A), status(B))
    assert pm.hook.mosix_select_node(request=PlacementRequest(), view=view).status.ip == A
    # promised starts count
    view.view.reserve(A, time.monotonic())
    assert pm.hook.mosix_select_node(request=PlacementRequest(), view=view).status.ip == B


def test_a_site_policy_wins_over_the_builtin():
    class KeepHome:
        @hookimpl
        def mosix_select_node(self, request, view):
            return view.local

    pm = build_plugin_manager(extra=[("keep_home", KeepHome())])
    view = make_view(status(A, load=900), status(B))
    assert pm.hook.mosix_select_node(request=PlacementRequest(), view=view).status.ip == A


def test_freeze_choice(pm):
    procs = [ProcessRecord(pid=i, uid=1000, command="x", started=100 + i) for i in range(1, 5)]
    situation = dict(red=6.0, blue=4.0, min_keep=1, max_procs=-1)
    choice = pm.hook.mosix_choose_freeze(
        candidates=procs, situation=FreezeSituation(load=7.0, running=4, frozen=0, **situation)
    )
    assert choice.freeze == (4,)  # the newest first
    choice = pm.hook.mosix_choose_freeze(
        candidates=procs,
        situation=FreezeSituation(load=2.0, running=4, frozen=0, red=6.0, blue=4.0, min_keep=0, max_procs=2),
    )
    assert choice.freeze == (4, 3)
    procs[0].frozen = "A"
    choice = pm.hook.mosix_choose_freeze(
        candidates=procs, situation=FreezeSituation(load=1.0, running=3, frozen=1, **situation)
    )
    assert choice.unfreeze == (1,) and choice.freeze == ()
    one = [ProcessRecord(pid=9, uid=0, command="x")]
    assert (
        pm.hook.mosix_choose_freeze(
            candidates=one, situation=FreezeSituation(load=9.0, running=1, frozen=0, **situation)
        ).freeze
        == ()
    )  # min-keep


def test_freeze_time_slices(pm):
    procs = [ProcessRecord(pid=i, uid=1000, command="x", started=100 + i, frozen_since=1000.0 + i) for i in range(1, 4)]
    procs[2].frozen = "A"
    slices = dict(load=2.0, running=2, frozen=1, red=-1, blue=0.5, min_keep=0, max_procs=2, slice_seconds=60.0)
    choose = pm.hook.mosix_choose_freeze
    assert choose(candidates=procs, situation=FreezeSituation(now=1050.0, **slices)) == FreezeChoice()
    # pid 1 has run a whole slice since it last changed: it changes places with pid 3
    choice = choose(candidates=procs, situation=FreezeSituation(now=1061.5, **slices))
    assert choice == FreezeChoice(freeze=(1,), unfreeze=(3,))
    assert (
        choose(candidates=procs, situation=FreezeSituation(now=5000.0, **{**slices, "slice_seconds": 0.0}))
        == FreezeChoice()
    )
    # room under max-procs and a load below BLUE: unfreeze, no rotation needed
    choice = choose(candidates=procs, situation=FreezeSituation(now=1061.5, **{**slices, "load": 0.2, "running": 1}))
    assert choice == FreezeChoice(unfreeze=(3,))


def test_the_policy_sees_only_processes_at_home():
    from mosix_core.config.freeze import FreezePolicy
    from mosix_core.daemon.autofreeze import policy_load, situation_of

    rows = [
        ProcessRecord(pid=1, uid=0, command="a"),
        ProcessRecord(pid=2, uid=0, command="b", freezable=False),
        ProcessRecord(pid=3, uid=0, command="c", frozen="A"),
        ProcessRecord(pid=4, uid=0, command="d", frozen="M"),
        ProcessRecord(pid=5, uid=0, command="e", queue="3/1/0"),
        ProcessRecord(pid=6, uid=0, command="f", where="10.0.0.2"),
        ProcessRecord(pid=7, uid=0, command="g", home=IPv4Address("10.0.0.3"), origpid=9),
    ]
    policy = FreezePolicy(units=1, red=6.0, blue=4.0, min_keep=1, max_procs=3, slice_minutes=2)
    situation, candidates = situation_of(policy, rows, load=5.0, now=7.0)
    assert [r.pid for r in candidates] == [1, 3]  # -g rows, manual, queues, away, guests: no
    assert (situation.running, situation.frozen, situation.slice_seconds) == (2, 1, 120.0)
    assert policy_load(policy, processes=3.0, standard=250) == 2.5
    assert policy_load(attrs.evolve(policy, units=0), processes=3.0, standard=250) == 3.0


def test_guest_admission(mosix_etc, pm):
    from mosix_core.daemon.node import Node

    node = Node(mosix_etc, pm=pm)
    node.sample = measure_host()
    home = node.our_ip

    def admit(request, node):
        return pm.hook.mosix_admit_guest(request=request, node=NodeContext.of(node))

    assert admit(request=AdmissionRequest(origin=home), node=node).accepted
    too_big = AdmissionRequest(origin=home, memory_mb=10**7)
    assert admit(request=too_big, node=node).reason.startswith("did not complete")
    node.state_bits |= ST_BLOCK
    assert admit(request=AdmissionRequest(origin=home), node=node).reason == "other node refused"
    node.state_bits = 0
    outsider = AdmissionRequest(origin=IPv4Address("10.200.0.1"), from_local_cluster=False)
    assert not admit(request=outsider, node=node).accepted  # not a partner
    # a partner that may send us guests, up to maxguests of them at once
    (mosix_etc / "partners" / "physics").write_text("The physics cluster\n50 1 1\n10.200.0.1 4 1 1 1\n")
    (mosix_etc / "maxguests").write_text("1\n")
    node = Node(mosix_etc, pm=pm)
    node.sample = measure_host()
    assert admit(request=outsider, node=node).accepted
    node.proctable.add(ProcessRecord(pid=4242, uid=65534, command="x", home=IPv4Address("10.200.0.2"), origpid=7))
    assert admit(request=outsider, node=node).reason == TOO_BUSY
    assert failed_migrating("10.0.0.9", TOO_BUSY) == "10.0.0.9 is too busy to receive now"
    assert failed_migrating("10.0.0.9", "other node refused") == "failed migrating to 10.0.0.9: other node refused"


def test_resource_measurement(pm):
    import attrs

    from mosix_core.config import DaemonSettings

    host = pm.hook.mosix_measure_resources(settings=DaemonSettings.default(), processes=[])
    assert host.ncpus >= 1 and host.mem_total_mb > 0 and 0 <= host.mem_avail_mb <= host.mem_total_mb
    virtual = attrs.evolve(DaemonSettings.default(), resources="virtual", virtual_cpus=3, virtual_memory_mb=1000)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen(["sleep", "30"])
    try:
        rows = [ProcessRecord(pid=busy.pid, uid=0, command="busy"), ProcessRecord(pid=idle.pid, uid=0, command="idle")]
        pm.hook.mosix_measure_resources(settings=virtual, processes=rows)
        time.sleep(0.5)
        sample = pm.hook.mosix_measure_resources(settings=virtual, processes=rows)
    finally:
        for proc in (busy, idle):
            proc.kill()
            proc.wait()
    assert sample.ncpus == 3 and sample.mem_total_mb == 1000
    # a CPU-bound loop wants a whole CPU, whatever share of the machine it got meanwhile;
    # the sleeping process wants none
    assert 0.95 <= sample.runnable <= 1.05
    assert sample.mem_avail_mb < 1000  # the processes' resident memory is used


def test_load_units():
    assert standard_load(1, 1, 10000) == 100
    assert standard_load(2, 2, 10000) == 100
    assert standard_load(1, 1, 20000) == 50
    smoother = LoadSmoother(tau=1.0)
    smoother.add(0, 0.0)
    assert 0.6 < smoother.add(1, 1.0) < 0.65
    assert VirtualMeter().sample([999999999], 0.0, 1, 100, 0).runnable == 0


def test_contributed_memory_first_placement():
    import mosix_contrib.memory_first as memory_first

    pm = build_plugin_manager(extra=[("memory_first", memory_first)])
    view = make_view(status(A, load=0, free_mb=1000), status(B, load=300, free_mb=6000), status(C, free_mb=3000))
    assert pm.hook.mosix_select_node(request=PlacementRequest(), view=view).status.ip == B
    # the memory filter still applies; nothing fits: no answer, the built-in decides (also nothing)
    assert pm.hook.mosix_select_node(request=PlacementRequest(memory_mb=7000), view=view) is None
