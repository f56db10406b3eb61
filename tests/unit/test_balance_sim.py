"""The policy simulator (bench/balance.py) runs the real plugin and its small scenarios meet
the targets loosely: makespan near the ideal, far better than no migration and than
round-robin placement where round-robin is blind (heterogeneous speeds), few moves per job."""

from __future__ import annotations

import importlib.util
import random
import statistics
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "balance.py"


@pytest.fixture(scope="module")
def sim():
    spec = importlib.util.spec_from_file_location("balance_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["balance_bench"] = module
    spec.loader.exec_module(module)
    return module


def run(sim, scenario, way, seed):
    placement, balance = sim.WAYS[way]
    nodes, jobs = sim.SCENARIOS[scenario](random.Random(seed))
    runner = sim.Sim(nodes, jobs, seed, placement, balance, sim.the_plugin()).run()
    assert all(j.finish == j.finish for j in jobs)  # every job ran to its end (no NaN)
    return sim.measure(nodes, jobs, runner)


def test_the_simulator_calls_the_registered_plugin(sim):
    from mosix_plugins.balancing import mosix_migration_decision

    assert sim.the_plugin() is mosix_migration_decision


def test_64_jobs_started_on_one_node_spread(sim):
    policy = [run(sim, "one_node_64", "policy", seed) for seed in (1, 2)]
    alone = run(sim, "one_node_64", "no_migration", 1)
    assert statistics.median(r["makespan_over_ideal"] for r in policy) <= 1.15
    assert statistics.median(r["migrations_per_job"] for r in policy) <= 2.5
    assert alone["makespan_over_ideal"] > 10  # all on one node: 16 times the ideal


def test_heterogeneous_speeds_beat_round_robin(sim):
    policy = run(sim, "hetero_speeds", "policy", 1)
    blind = run(sim, "hetero_speeds", "round_robin", 1)
    assert policy["makespan_over_ideal"] <= 1.2
    assert policy["mean_slowdown"] <= 0.8 * blind["mean_slowdown"]
    assert policy["migrations_per_job"] <= 2.0


def test_one_decision_at_1000_nodes_is_timed(sim):
    timing = sim.time_decision(sim.the_plugin(), n=1000, candidates=4, repeat=50)
    assert timing["nodes"] == 1000 and timing["decision_ms_median"] < 5.0  # target 1 ms; shared machine
