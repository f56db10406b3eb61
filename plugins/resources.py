"""Resource measurement: the whole machine, or a virtual node of a local cluster."""

from __future__ import annotations

import time
from typing import Any

from mosix_core.hookspecs import hookimpl
from mosix_core.resources import ResourceSample, VirtualMeter, measure_host

_meter = VirtualMeter()


@hookimpl(trylast=True)
def mosix_measure_resources(settings: Any, processes: Any) -> ResourceSample:
    if settings.resources == "virtual":
        return _meter.sample((p.pid for p in processes), time.monotonic(), settings.virtual_cpus,
                             settings.virtual_memory_mb, settings.virtual_swap_mb)
    return measure_host()
