"""Record mosrun invocations and migrations in the system log when
``/etc/mosix/.log_mosrun`` exists (mosix(7))."""

from __future__ import annotations

import syslog
from typing import Any

from mosix_core.hookspecs import hookimpl

_enabled = {"on": False}


@hookimpl
def mosix_node_started(node: Any) -> None:
    _enabled["on"] = bool(node.config.log_mosrun)


@hookimpl
def mosix_process_event(event: Any) -> None:
    if _enabled["on"]:
        syslog.openlog("mosix", syslog.LOG_PID, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_INFO, f"{event.kind} pid={event.pid} uid={event.uid} {event.detail}".rstrip())
