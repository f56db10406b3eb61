"""mosmon's model: what the monitor shows and how keys change it — no curses here.

``MonitorState`` is the user's choices (what value, which numbering, dead nodes or not,
which node is first on the screen); ``handle_key`` applies one key of mosmon(1) to it;
``render`` turns a cluster view (the ``view`` reply of mosd, see
``mosix_core.daemon.control_node.node_json``) into the screen as plain text lines, never
wider than ``width`` nor more than ``height`` lines. The curses loop in
``mosix_core.cli.mosmon`` only fetches, calls these two and paints.

The screen is a bar chart: one column per node, a value axis on the left, the node
numbers of ``userview.map`` along the bottom (across, or digit under digit so that
more nodes fit). Memory and swap draw the used part solid (``#``) and extend it to
the total with ``+``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs

from mosix_core.cluster.gossip import PAGE_SIZE, STANDARD_SPEED

MODES = ("load", "speed", "mem", "swap", "frozen", "cores")
NUMBERINGS = ("w", "v", "V", "a")  # horizontal, vertical, tight vertical, automatic

# Key names for what is not a character (the curses loop maps its key codes to these).
RIGHT, LEFT, ENTER = "RIGHT", "LEFT", "ENTER"
_KEY_ALIASES = {"KEY_RIGHT": RIGHT, "KEY_LEFT": LEFT, "KEY_ENTER": ENTER, "\n": ENTER, "\r": ENTER}

MODE_KEYS = {"l": "load", "s": "speed", "f": "frozen", "c": "cores"}

TITLES = {
    "load": "Load (1.00 = one CPU-bound process on a standard CPU)",
    "speed": "CPU speed (10000 = a standard 3GHz CPU)",
    "mem": "Memory in MB: used '#', total '+'",
    "swap": "Swap space in GB: used '#', total '+'",
    "frozen": "Frozen processes",
    "cores": "Number of cores",
}

HELP = [
    "mosmon - MOSIX monitor: keys",
    "",
    "  l      display loads (default)",
    "  s      display CPU speeds (10000 = standard 3GHz) and CPUs if more than 1",
    "  m      display used vs. total memory (MB)",
    "  m m    (m twice) display used vs. total swap space (GB)",
    "  f      display the number of frozen processes",
    "  c      display the number of cores",
    "  d      display also dead (not responding) nodes",
    "  D      stop displaying dead nodes",
    "  t      toggle the count of operational nodes and CPUs",
    "  w      horizontal numbering",
    "  v      vertical numbering",
    "  V      tight vertical numbering",
    "  a      automatic numbering",
    "  Right  move one node to the right",
    "  Left   move one node to the left",
    "  n      move one screen to the right",
    "  p      move one screen to the left",
    "  Enter  redraw the screen",
    "  h      this help",
    "  q      quit",
    "Press any key to return (q quits).",
]

MB = 1024 * 1024


@attrs.define
class MonitorState:
    """What the user chose to see. ``per_page`` and ``total`` are what the last
    ``render`` could fit and had to show: the paging keys move by them."""

    mode: str = attrs.field(default="load", validator=attrs.validators.in_(MODES))
    numbering: str = attrs.field(default="a", validator=attrs.validators.in_(NUMBERINGS))
    show_dead: bool = False
    show_count: bool = False
    offset: int = 0
    help: bool = False
    quit: bool = False
    redraw: bool = False
    per_page: int = 0
    total: int = 0


def handle_key(state: MonitorState, key: str) -> MonitorState:
    """Apply one key of mosmon(1); returns the (same, updated) state."""
    key = _KEY_ALIASES.get(key, key)
    if key == "q":
        state.quit = True
        return state
    if state.help:  # the help screen goes away with any key
        state.help = False
        state.redraw = True
        return state
    page = max(1, state.per_page)
    last = max(0, state.total - page)
    if key in MODE_KEYS:
        state.mode = MODE_KEYS[key]
    elif key == "m":
        state.mode = "swap" if state.mode == "mem" else "mem"
    elif key in ("w", "v", "V", "a"):
        state.numbering = key
    elif key == "d":
        state.show_dead = True
    elif key == "D":
        state.show_dead = False
    elif key == "t":
        state.show_count = not state.show_count
    elif key == RIGHT:
        state.offset = min(state.offset + 1, last)
    elif key == LEFT:
        state.offset = max(state.offset - 1, 0)
    elif key == "n":
        state.offset = min(state.offset + page, last)
    elif key == "p":
        state.offset = max(state.offset - page, 0)
    elif key == "h":
        state.help = True
    elif key == ENTER:
        state.redraw = True
    return state


# ---------------------------------------------------------------- the values


def shown_nodes(view: dict[str, Any], show_dead: bool) -> list[dict[str, Any]]:
    """The nodes of the display: those numbered in userview.map, by number (all nodes in
    mosd's order if none is numbered); dead ones only if asked for."""
    nodes = list(view.get("nodes") or [])
    numbered = [n for n in nodes if n.get("number") is not None]
    if numbered:
        nodes = sorted(numbered, key=lambda n: n["number"])
    if not show_dead:
        nodes = [n for n in nodes if n.get("alive")]
    return nodes


def node_labels(view: dict[str, Any], nodes: Sequence[dict[str, Any]]) -> list[str]:
    """What is written under each column: the node number (position if unnumbered)."""
    every = list(view.get("nodes") or [])
    labels = []
    for n in nodes:
        if n.get("number") is not None:
            labels.append(str(n["number"]))
        else:
            labels.append(str(next((i for i, m in enumerate(every, 1) if m is n), len(labels) + 1)))
    return labels


def values(mode: str, node: dict[str, Any]) -> tuple[float, float | None]:
    """(value, total) of a node in display units; total only for memory and swap."""
    if mode == "load":
        return node.get("load", 0) / 100, None
    if mode == "speed":
        return float(node.get("speed", 0)), None
    if mode == "mem":
        total = node.get("mem_total_pages", 0) * PAGE_SIZE / MB
        avail = node.get("mem_avail_pages", 0) * PAGE_SIZE / MB
        return max(0.0, total - avail), total
    if mode == "swap":
        total = node.get("swap_total_tenths", 0) / 10
        free = node.get("swap_free_tenths", 0) / 10
        return max(0.0, total - free), total
    if mode == "frozen":
        return float(node.get("frozen", 0)), None
    return float(node.get("ncpus", 0)), None


def fmt(mode: str, value: float) -> str:
    if mode == "load":
        return f"{value:.2f}"
    if mode == "swap":
        return f"{value:.1f}"
    return f"{value:.0f}"


_MIN_STEP = {"load": 0.01, "speed": 1, "mem": 1, "swap": 0.1, "frozen": 1, "cores": 1}
_EMPTY_TOP = {"load": 1.0, "speed": float(STANDARD_SPEED), "mem": 1.0, "swap": 1.0, "frozen": 1.0, "cores": 1.0}


def _ticks(mode: str, top: float, rows: int) -> list[tuple[int, float]]:
    """(row from the bottom, value) pairs to label on the axis: round steps, and the top."""
    if rows < 1:
        return []
    wanted = max(1, rows // 3)
    raw = top / wanted
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw - 1e-12)
    step = max(step, _MIN_STEP[mode])
    ticks: dict[int, float] = {rows: top}
    k = 1
    while k * step < top - 1e-9:
        row = round(k * step / top * rows)
        if 1 <= row < rows and abs(row - rows) >= 2:
            ticks.setdefault(row, k * step)
        k += 1
    return sorted(ticks.items())


def _top(pair: tuple[float, float | None]) -> float:
    value, total = pair
    return value if total is None else max(value, total)


def _height(value: float, top: float, rows: int) -> int:
    if value <= 0 or top <= 0:
        return 0
    return max(1, min(rows, round(value / top * rows)))


# ---------------------------------------------------------------- the layout


WIDE_BAR = 5  # the widest bar, when few nodes leave room to spare


@attrs.frozen
class Columns:
    """How node columns are laid out: ``bar`` characters of bar, ``gap`` spaces between."""

    bar: int
    gap: int

    @property
    def width(self) -> int:
        return self.bar + self.gap

    def fit(self, room: int) -> int:
        """How many columns fit in ``room`` characters (the last needs no gap after it)."""
        return max(0, (room + self.gap) // self.width)

    def span(self, count: int) -> int:
        return max(0, count * self.width - self.gap)


def columns_for(numbering: str, label_width: int, count: int = 0, room: int = 0) -> Columns:
    """Horizontal numbering needs bars as wide as the numbers, and widens them (up to
    WIDE_BAR) when all ``count`` nodes fit anyway; vertical numbering needs one character
    and a space; tight vertical just one character."""
    if numbering == "v":
        return Columns(1, 1)
    if numbering == "V":
        return Columns(1, 0)
    narrow = Columns(label_width, 1)
    for bar in range(max(WIDE_BAR, label_width), label_width, -1):
        wide = Columns(bar, 2)
        if count and wide.fit(room) >= count:
            return wide
    return narrow


def effective_numbering(numbering: str, count: int, label_width: int, room: int) -> str:
    """Automatic numbering: vertical only if that makes the difference between seeing
    all nodes or not."""
    if numbering != "a":
        return numbering
    if columns_for("w", label_width).fit(room) >= count:
        return "w"
    if columns_for("v", label_width).fit(room) >= count:
        return "v"
    return "w"


def render(
    state: MonitorState, view: dict[str, Any] | None, width: int, height: int, message: str | None = None
) -> list[str]:
    """The whole screen as lines of plain text (at most ``height``, none wider than ``width``).
    ``message`` (e.g. "mosd is not reachable") goes on the last line."""
    if width <= 0 or height <= 0:
        return []
    if state.help:
        return _clip(HELP, width, height)
    lines = _screen(state, view, width, height, message)
    return _clip(lines, width, height)


def _clip(lines: Sequence[str], width: int, height: int) -> list[str]:
    return [line[:width].rstrip() for line in lines[:height]]


def _title(state: MonitorState, width: int) -> str:
    title = "MOSIX " + TITLES[state.mode]
    hint = "h:help q:quit"
    if len(title) + 2 + len(hint) <= width:
        return title + " " * (width - len(title) - len(hint)) + hint
    return title


def _screen(
    state: MonitorState, view: dict[str, Any] | None, width: int, height: int, message: str | None
) -> list[str]:
    lines = [_title(state, width)]
    nodes = shown_nodes(view, state.show_dead) if view else []
    if state.show_count and view:
        operational = [n for n in view.get("nodes") or [] if n.get("alive") and not n.get("off")]
        cpus = sum(int(n.get("ncpus", 0)) for n in operational)
        lines.append(f"Operational nodes: {len(operational)}   CPUs: {cpus}")
    footer: list[str] = []
    if message:
        footer.append(message)
    if view is None:
        state.per_page, state.total = 0, 0
        return lines + [""] * max(0, height - len(lines) - len(footer)) + footer
    if not nodes:
        state.per_page, state.total, state.offset = 0, 0, 0
        what = "no nodes" if state.show_dead else "no operational nodes (d: show dead nodes)"
        body = [f"({what} to display)"]
        return lines + body + [""] * max(0, height - len(lines) - len(body) - len(footer)) + footer

    labels = node_labels(view, nodes)
    label_width = max(len(s) for s in labels)
    extra_rows = 1 if state.mode == "speed" else 0
    # The axis is as wide as the largest value of any page needs (the labels of a page
    # are never wider), so it stays put while paging.
    top_all = max([_top(values(state.mode, n)) for n in nodes if n.get("alive")] + [_EMPTY_TOP[state.mode]])
    lw = max(len(fmt(state.mode, top_all)), 4 if extra_rows else 1)
    room = width - lw - 2
    numbering = effective_numbering(state.numbering, len(nodes), label_width, room)
    cols = columns_for(numbering, label_width, len(nodes), room)
    per_page = max(1, cols.fit(room))
    paged = per_page < len(nodes)
    if paged:
        footer.insert(0, "")  # the paging line, filled below
    label_rows = 1 if numbering == "w" else label_width
    chart_rows = height - len(lines) - 1 - label_rows - extra_rows - len(footer)
    if chart_rows < 1:
        state.per_page, state.total = per_page, len(nodes)
        return lines[:1] + ["(window too small)"] + [f for f in footer if f]

    state.offset = max(0, min(state.offset, len(nodes) - per_page))
    state.per_page, state.total = per_page, len(nodes)
    first = state.offset
    visible = nodes[first : first + per_page]
    vis_labels = labels[first : first + per_page]

    pairs = [values(state.mode, n) for n in visible]
    alive = [bool(n.get("alive")) for n in visible]
    top = max((_top(p) for p, a in zip(pairs, alive) if a), default=0.0)
    if top <= 0:
        top = _EMPTY_TOP[state.mode]
    ticks = dict(_ticks(state.mode, top, chart_rows))
    axis_labels = {row: fmt(state.mode, v) for row, v in ticks.items()}
    bar = cols.bar

    columns: list[list[str]] = []  # per node, chart cells bottom-up
    for _node, (value, total), is_alive in zip(visible, pairs, alive):
        if not is_alive:
            word = "DEAD" if chart_rows >= 4 else "X" * chart_rows
            cells = [" "] * chart_rows
            for i, ch in enumerate(word):  # top-to-bottom, ending on the axis
                cells[len(word) - 1 - i] = ch
            columns.append([c.center(bar) for c in cells])
            continue
        used = _height(value, top, chart_rows)
        whole = _height(total, top, chart_rows) if total is not None else used
        cells = ["#"] * used + ["+"] * max(0, whole - used) + [" "] * (chart_rows - max(used, whole))
        columns.append([c * bar for c in cells])

    sep = " " * cols.gap
    indent = " " * (lw + 2)
    for row in range(chart_rows, 0, -1):
        label = axis_labels.get(row, "")
        lines.append(f"{label:>{lw}} |" + sep.join(col[row - 1] for col in columns))
    lines.append(f"{'0':>{lw}} +" + "-" * cols.span(len(visible)))
    if numbering == "w":
        lines.append(indent + sep.join(s.center(bar) if bar > label_width else s.rjust(bar) for s in vis_labels))
    else:
        padded = [s.rjust(label_width) for s in vis_labels]
        for i in range(label_width):
            lines.append(indent + sep.join(p[i] for p in padded))
    if extra_rows and any(n.get("alive") and int(n.get("ncpus", 0)) > 1 for n in visible):
        lines.append(f"{'cpus':>{lw}}  " + sep.join(_cpus(n, bar) for n in visible))
    if paged:
        last = first + len(visible)
        footer[0] = (
            ("<< " if first > 0 else "") + f"nodes {vis_labels[0]}-{vis_labels[-1]}"
            f" ({first + 1}-{last} of {len(nodes)})"
            + (" >>" if last < len(nodes) else "")
            + "   n/p: screen  Left/Right: node"
        )
    while len(lines) + len(footer) < height:
        lines.append("")
    return lines + footer


def _cpus(node: dict[str, Any], room: int) -> str:
    n = int(node.get("ncpus", 0))
    if not node.get("alive") or n <= 1:
        return " " * room
    text = str(n)
    return text.center(room) if len(text) <= room else "+" * room
