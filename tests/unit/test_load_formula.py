"""One formula for MOSIX load: what a node reports (``standard_load``) and what best-node
selection expects one more process to add (``bestnode.expected_load``) are both
``resources.load_of``."""

from __future__ import annotations

from ipaddress import IPv4Address

from mosix_core.cluster.gossip import NodeEntry, NodeStatus
from mosix_core.cluster.resources import load_of, standard_load
from mosix_plugins.bestnode import expected_load


def test_a_node_reports_its_load_in_whole_hundredths():
    assert load_of(1, 3, 10000) == 100 / 3
    assert standard_load(1, 3, 10000) == 33
    assert standard_load(2.5, 2, 20000) == round(load_of(2.5, 2, 20000)) == 62


def test_best_node_adds_one_process_per_promised_start_and_the_newcomer():
    status = NodeStatus(ip=IPv4Address("10.0.0.2"), load=40, speed=20000, ncpus=2)
    entry = NodeEntry(status=status, fresh_at=0.0, reserved=2)
    assert expected_load(entry) == 40 + 3 * load_of(1, 2, 20000) == 40 + 3 * 25
