"""Where a new MOSIX process starts (mosrun's location options).

The program always starts at home and, when its place is elsewhere, migrates there
at its first ``exec`` (DESIGN §1): ``-r{host}``, ``-{n}`` and ``-{a.b.c.d}`` name the
node; ``-b`` asks mosd for the best one (the ``mosix_select_node`` hook over the
gossip view, ``-m`` honoured: with it, mosrun waits until some node has the memory);
``-h`` or no option keeps it home.

Without a mosd on this node (:func:`without_daemon`) the same rule holds as far as it
can: a node that is not in the map is refused at once, as mosd would refuse it; a node
that is cannot be reached (moving is mosd's work), so the program runs at home only
with ``-F``, the manual's "run even if the requested node is unavailable"; ``-b``
starts at home with a note, since the best node this node can know of is itself.
"""

from __future__ import annotations

import time
from pathlib import Path

from mosix_core.errors import MosixError
from mosix_core.mosrun import options as mosopts

WAIT_FOR_MEMORY = 1.0  # seconds between asks, while no node has the memory -b -m wants


def start_node(opts: mosopts.MosrunOptions, etc: Path) -> str | None:
    """The node the program should start on, as mosd resolves it; None: at home."""
    if opts.location == "node":
        return opts.location_node
    if opts.location != "best":
        return None
    from mosix_core.daemon import protocol as p
    from mosix_core.daemon.client import Client

    try:
        client = Client(etc)
        here = client.request(p.PingRequest()).ip
        while True:
            chosen = client.request(p.BestnodeRequest(memory_mb=opts.memory_mb or 0))
            if chosen.ip is not None or not opts.memory_mb:
                break
            # -b -m{mb}: "will not begin until at least one such node is found" (mosrun(1))
            time.sleep(WAIT_FOR_MEMORY)
    except MosixError:
        return None
    return None if chosen.ip in (None, here) else chosen.ip


def start_target(opts: mosopts.MosrunOptions, etc: Path):
    """:func:`start_node` resolved (:func:`mosix_core.mosrun.targets.resolve`): a
    :class:`~mosix_core.mosrun.targets.MoveTarget`, or None to start at home. Raises
    :class:`~mosix_core.mosrun.targets.UnknownTarget` for a node not in the map."""
    from mosix_core.config import load_config_if_present
    from mosix_core.mosrun import targets

    named = start_node(opts, etc)
    if named is None:
        return None
    target = targets.resolve(load_config_if_present(etc), named)
    return None if target.home else target


NOT_RUNNING = "MOSIX is not running on this node"


def without_daemon(opts: mosopts.MosrunOptions, etc: Path) -> tuple[list[str], bool]:
    """Where no mosd runs here: (the messages to print, whether the program may run —
    at home). Messages starting ``MOSRUN:`` are the manual's failure; others notes."""
    from mosix_core.config import load_config_if_present
    from mosix_core.mosrun import targets
    from mosix_core.mosrun.rules import PREFIX

    where = mosopts.location_word(opts)
    if opts.location == "node":
        node = opts.location_node or ""
        try:
            targets.resolve(load_config_if_present(etc), node)
            reason = NOT_RUNNING
        except targets.UnknownTarget:
            reason = targets.NOT_IN_MAP
        return [PREFIX + targets.failed_migrating(node, reason)], opts.force
    if where not in (None, "-h"):
        return [f"note: {where} needs MOSIX running on this node (mosd); starting at home"], True
    return [], True
