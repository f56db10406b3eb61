"""Placement for memory-hungry workloads: among the nodes that can hold the process,
prefer the one with the most free memory, breaking ties by expected load.

The built-in placement (``mosix_plugins.bestnode``) minimises load; on clusters whose
jobs are limited by memory rather than CPU, spreading by free memory avoids swapping.
Enable it by copying this file into the site ``hooks_dir``: it then answers
``mosix_select_node`` before the built-in.
"""

from __future__ import annotations

from mosix_core.contract.hookspecs import hookimpl
from mosix_plugins.bestnode import expected_load


@hookimpl
def mosix_select_node(request, view):
    candidates = view.candidates(request)
    if not candidates:
        return None
    return max(candidates, key=lambda e: (e.status.mem_avail_mb, -expected_load(e)))
