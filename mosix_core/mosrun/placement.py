"""Where a new MOSIX process starts (mosrun's location options).

The program always starts at home and, when its place is elsewhere, migrates there
at its first ``exec`` (DESIGN §1): ``-r{host}``, ``-{n}`` and ``-{a.b.c.d}`` name the
node; ``-b`` asks mosd for the best one (the ``mosix_select_node`` hook over the
gossip view, ``-m`` honoured); ``-h`` or no option keeps it home.
"""

from __future__ import annotations

from pathlib import Path

from mosix_core.errors import MosixError
from mosix_core.mosrun import options as mosopts


def start_node(opts: mosopts.MosrunOptions, etc: Path) -> str | None:
    """The node the program should start on, as mosd resolves it; None: at home."""
    if opts.location == "node":
        return opts.location_node
    if opts.location != "best":
        return None
    from mosix_core.client import Client

    try:
        client = Client(etc)
        chosen = client.call("bestnode", memory_mb=opts.memory_mb or 0)
        here = client.call("ping")["ip"]
    except MosixError:
        return None
    ip = chosen.get("ip")
    return None if ip in (None, here) else ip
