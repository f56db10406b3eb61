"""Where a new MOSIX process starts (mosrun's location options).

The program always starts at home and, when its place is elsewhere, migrates there
at its first ``exec`` (DESIGN §1): ``-r{host}``, ``-{n}`` and ``-{a.b.c.d}`` name the
node; ``-b`` asks mosd for the best one (the ``mosix_select_node`` hook over the
gossip view, ``-m`` honoured: with it, mosrun waits until some node has the memory);
``-h`` or no option keeps it home.
"""

from __future__ import annotations

import time
from pathlib import Path

from mosix_core.errors import MosixError
from mosix_core.mosrun import options as mosopts

WAIT_FOR_MEMORY = 1.0           # seconds between asks, while no node has the memory -b -m wants


def start_node(opts: mosopts.MosrunOptions, etc: Path) -> str | None:
    """The node the program should start on, as mosd resolves it; None: at home."""
    if opts.location == "node":
        return opts.location_node
    if opts.location != "best":
        return None
    from mosix_core.client import Client

    try:
        client = Client(etc)
        here = client.call("ping")["ip"]
        while True:
            chosen = client.call("bestnode", memory_mb=opts.memory_mb or 0)
            if chosen.get("ip") is not None or not opts.memory_mb:
                break
            # -b -m{mb}: "will not begin until at least one such node is found" (mosrun(1))
            time.sleep(WAIT_FOR_MEMORY)
    except MosixError:
        return None
    ip = chosen.get("ip")
    return None if ip in (None, here) else ip
