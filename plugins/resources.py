"""Resource measurement: the whole machine, or a virtual node of a local cluster."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from mosix_core.cluster.resources import ResourceSample, VirtualMeter, measure_host
from mosix_core.config.daemon import DaemonSettings
from mosix_core.contract.hookspecs import hookimpl
from mosix_core.contract.records import ProcessRow
from mosix_core.linux import procfs

_meter = VirtualMeter()


def hosted_pids(processes: Sequence[ProcessRow]) -> Iterator[int]:
    """The processes whose CPU a virtual node carries: its rows' and, for a guest, the
    guest process its guest host traces (the row is the host's, idle while it computes)."""
    for p in processes:
        yield p.pid
        if p.is_guest and (program := procfs.traced_child(p.pid)) is not None:
            yield program


@hookimpl(trylast=True)
def mosix_measure_resources(settings: DaemonSettings, processes: Sequence[ProcessRow]) -> ResourceSample:
    if settings.resources == "virtual":
        return _meter.sample(
            hosted_pids(processes),
            time.monotonic(),
            settings.virtual_cpus,
            settings.virtual_memory_mb,
            settings.virtual_swap_mb,
        )
    return measure_host()
