"""Record mosrun invocations and migrations in the system log while
``/etc/mosix/.log_mosrun`` exists (mosix(7)).

The file is looked for at each event, so creating or removing it takes effect at
once, without restarting mosd.
"""

from __future__ import annotations

import syslog
from pathlib import Path

from mosix_core.cluster.proctable import ProcessEvent
from mosix_core.contract.hookspecs import hookimpl
from mosix_core.contract.records import NodeContext

_etc: dict[str, Path] = {}


@hookimpl
def mosix_node_started(node: NodeContext) -> None:
    _etc["path"] = node.etc


@hookimpl
def mosix_process_event(event: ProcessEvent) -> None:
    etc = _etc.get("path")
    if etc is not None and (etc / ".log_mosrun").exists():
        syslog.openlog("mosix", syslog.LOG_PID, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_INFO, f"{event.kind} pid={event.pid} uid={event.uid} {event.detail}".rstrip())
