"""mosmon's model: what each key does and what the screen shows, on hand-built views
(the dicts mosd's ``view`` answer holds, see ``mosix_core.daemon.control_node.node_json``)."""

from __future__ import annotations

import curses
import re

import pytest
from typer.testing import CliRunner

from mosix_core.cli import mosmon
from mosix_core.cluster.monitor import ENTER, HELP, LEFT, MODES, NUMBERINGS, RIGHT, MonitorState, handle_key, render

PAGES_PER_MB = 256  # 4 KiB pages


def node(
    k: int,
    *,
    number: int | None | str = "k",
    alive: bool = True,
    load: int = 0,
    speed: int = 10000,
    ncpus: int = 1,
    frozen: int = 0,
    mem_total_mb: int = 4096,
    mem_used_mb: int = 0,
    swap_total_tenths: int = 0,
    swap_free_tenths: int = 0,
    off: bool = False,
) -> dict:
    return {
        "ip": f"10.0.{k // 250}.{k % 250 + 1}",
        "number": k if number == "k" else number,
        "local": k == 1,
        "in_cluster": True,
        "partner": None,
        "proximate": True,
        "known": True,
        "alive": alive,
        "age": 0.2 if alive else 30.0,
        "status": 0,
        "state": 0,
        "off": off,
        "load": load,
        "availability": 65535,
        "speed": speed,
        "ncpus": ncpus,
        "frozen": frozen,
        "mem_avail_pages": (mem_total_mb - mem_used_mb) * PAGES_PER_MB,
        "mem_total_pages": mem_total_mb * PAGES_PER_MB,
        "swap_free_tenths": swap_free_tenths,
        "swap_total_tenths": swap_total_tenths,
        "privileged_pages": 0,
        "nprocs": 0,
        "guests": 0,
        "reserved": 0,
    }


def view(*nodes: dict) -> dict:
    return {"local": nodes[0]["ip"] if nodes else "10.0.0.1", "dead_after": 3.0, "interval": 1.0, "nodes": list(nodes)}


def many(count: int, **kw) -> dict:
    return view(*(node(k, load=100, **kw) for k in range(1, count + 1)))


def state_after(*keys: str, **kw) -> MonitorState:
    state = MonitorState(**kw)
    for key in keys:
        handle_key(state, key)
    return state


# ------------------------------------------------------------ reading the screen back


def axis_index(lines: list[str]) -> int:
    return next(i for i, line in enumerate(lines) if re.match(r"^\s*0 \+-", line))


def chart_rows(lines: list[str]) -> list[str]:
    a = axis_index(lines)
    first = next(i for i, line in enumerate(lines) if re.match(r"^\s*[\d.]* \|", line))
    return lines[first:a]


def axis_x(lines: list[str]) -> int:
    return lines[axis_index(lines)].index("+")


def columns(lines: list[str], label_rows: int = 1) -> dict[str, str]:
    """Each node's column, bottom-up, keyed by the number written under it."""
    a = axis_index(lines)
    labels = lines[a + 1 : a + 1 + label_rows]
    rows = chart_rows(lines)
    width = max(len(line) for line in labels)
    out: dict[str, str] = {}
    if label_rows == 1:
        spans = [(m.group(), m.end() - 1) for m in re.finditer(r"\d+", labels[0])]
    else:
        spans = []
        for x in range(axis_x(lines) + 1, width):
            text = "".join(line[x] if x < len(line) else " " for line in labels).strip()
            if text:
                spans.append((text, x))
    for text, x in spans:
        out[text] = "".join(row[x] if x < len(row) else " " for row in reversed(rows))
    return out


def heights(lines: list[str], label_rows: int = 1) -> dict[str, tuple[int, int]]:
    return {k: (col.count("#"), col.count("+")) for k, col in columns(lines, label_rows).items()}


def axis_labels(lines: list[str]) -> list[str]:
    return [line.split("|")[0].strip() for line in chart_rows(lines) if line.split("|")[0].strip()]


def fits(lines: list[str], width: int, height: int) -> bool:
    return len(lines) <= height and all(len(line) <= width for line in lines)


# ------------------------------------------------------------ keys


def test_defaults_are_load_automatic_numbering_no_dead_nodes():
    state = MonitorState()
    assert (state.mode, state.numbering, state.show_dead, state.show_count, state.offset) == (
        "load",
        "a",
        False,
        False,
        0,
    )


@pytest.mark.parametrize("key, mode", [("l", "load"), ("s", "speed"), ("m", "mem"), ("f", "frozen"), ("c", "cores")])
def test_mode_keys(key, mode):
    assert state_after("s" if key != "s" else "l", key).mode == mode


def test_m_twice_is_swap_and_a_third_m_memory_again():
    assert state_after("m").mode == "mem"
    assert state_after("m", "m").mode == "swap"
    assert state_after("m", "m", "m").mode == "mem"
    assert state_after("m", "l", "m").mode == "mem"


def test_numbering_keys():
    for key in "wvVa":
        assert state_after(key).numbering == key


def test_dead_and_count_keys():
    assert state_after("d").show_dead
    assert not state_after("d", "D").show_dead
    assert state_after("t").show_count
    assert not state_after("t", "t").show_count


def test_enter_redraws_q_quits_unknown_keys_change_nothing():
    assert state_after(ENTER).redraw
    assert state_after("\n").redraw and state_after("KEY_ENTER").redraw
    assert state_after("q").quit
    assert state_after("z", "!", "KEY_F1") == MonitorState()


def test_bad_mode_is_refused():
    with pytest.raises(ValueError):
        MonitorState(mode="temperature")


# ------------------------------------------------------------ the values shown


def test_load_bars_are_scaled_to_the_largest_load():
    lines = render(MonitorState(), view(node(1, load=200), node(2, load=100), node(3, load=50), node(4)), 80, 24)
    assert fits(lines, 80, 24)
    assert "Load" in lines[0]
    rows = chart_rows(lines)
    h = heights(lines)
    assert h["1"] == (len(rows), 0)
    assert abs(h["2"][0] - len(rows) / 2) <= 1
    assert abs(h["3"][0] - len(rows) / 4) <= 1
    assert h["4"] == (0, 0)
    assert axis_labels(lines)[0] == "2.00"
    assert "1.00" in axis_labels(lines)


def test_a_small_load_still_shows():
    lines = render(MonitorState(), view(node(1, load=1000), node(2, load=1)), 80, 24)
    assert heights(lines)["2"] == (1, 0)


def test_speed_mode_shows_speeds_and_cpu_counts():
    lines = render(
        state_after("s"), view(node(1, speed=10000), node(2, speed=20000, ncpus=4), node(3, speed=5000)), 80, 24
    )
    assert "speed" in lines[0] and "10000" in lines[0]
    h = heights(lines)
    full = len(chart_rows(lines))
    assert h["2"][0] == full and abs(h["1"][0] - full / 2) <= 1 and abs(h["3"][0] - full / 4) <= 1
    assert axis_labels(lines)[0] == "20000"
    cpus = next(line for line in lines if line.strip().startswith("cpus"))
    assert re.fullmatch(r"\s*cpus\s+4", cpus)  # only where there is more than one CPU
    label_row = lines[axis_index(lines) + 1]
    assert cpus.index("4") == label_row.index("2")  # under node 2's column


def test_memory_is_used_solid_and_total_extended_with_plus_in_megabytes():
    lines = render(
        state_after("m"),
        view(node(1, mem_total_mb=8192, mem_used_mb=2048), node(2, mem_total_mb=4096, mem_used_mb=4096)),
        80,
        24,
    )
    assert "Memory in MB" in lines[0]
    full = len(chart_rows(lines))
    used1, plus1 = heights(lines)["1"]
    used2, plus2 = heights(lines)["2"]
    assert used1 + plus1 == full and abs(used1 - full / 4) <= 1
    assert abs(used2 - full / 2) <= 1 and plus2 == 0
    assert axis_labels(lines)[0] == "8192"
    col = columns(lines)["1"]
    assert col == "#" * used1 + "+" * plus1  # solid used part first, then the '+' extension


def test_swap_in_gigabytes_to_a_tenth():
    lines = render(
        state_after("m", "m"),
        view(node(1, swap_total_tenths=20, swap_free_tenths=15), node(2, swap_total_tenths=10, swap_free_tenths=0)),
        80,
        24,
    )
    assert "Swap space in GB" in lines[0]
    assert axis_labels(lines)[0] == "2.0"
    assert all(re.fullmatch(r"\d+\.\d", label) for label in axis_labels(lines))
    full = len(chart_rows(lines))
    used1, plus1 = heights(lines)["1"]
    used2, plus2 = heights(lines)["2"]
    assert used1 + plus1 == full and abs(used1 - full / 4) <= 1
    assert abs(used2 - full / 2) <= 1 and plus2 == 0


def test_frozen_and_cores():
    v = view(node(1, frozen=3, ncpus=8), node(2, frozen=0, ncpus=2))
    lines = render(state_after("f"), v, 80, 24)
    assert "Frozen processes" in lines[0]
    assert heights(lines)["1"][0] == len(chart_rows(lines)) and heights(lines)["2"] == (0, 0)
    assert axis_labels(lines)[0] == "3"
    lines = render(state_after("c"), v, 80, 24)
    assert "cores" in lines[0]
    assert axis_labels(lines)[0] == "8"
    assert abs(heights(lines)["2"][0] - len(chart_rows(lines)) / 4) <= 1


def test_an_idle_cluster_draws_an_empty_chart():
    for mode in MODES:
        lines = render(MonitorState(mode=mode), view(node(1), node(2)), 80, 24)
        assert fits(lines, 80, 24)
        assert set(columns(lines)) == {"1", "2"}


# ------------------------------------------------------------ which nodes


def test_dead_nodes_are_hidden_by_default_and_shown_with_d():
    v = view(node(1, load=100), node(2, alive=False), node(3, load=100))
    assert set(columns(render(MonitorState(), v, 80, 24))) == {"1", "3"}
    state = state_after("d")
    lines = render(state, v, 80, 24)
    cols = columns(lines)
    assert set(cols) == {"1", "2", "3"}
    assert cols["2"][:4] == "DAED"  # "DEAD" written top-down, read here bottom-up
    handle_key(state, "D")
    assert set(columns(render(state, v, 80, 24))) == {"1", "3"}


def test_count_of_operational_nodes_and_cpus():
    v = view(node(1, ncpus=4), node(2, ncpus=2), node(3, alive=False, ncpus=16), node(4, off=True, ncpus=8))
    assert not any("Operational" in line for line in render(MonitorState(), v, 80, 24))
    lines = render(state_after("t"), v, 80, 24)
    assert "Operational nodes: 2   CPUs: 6" in lines[1]


def test_nodes_are_those_numbered_in_userview_sorted_by_number():
    v = view(node(1, number=3, load=300), node(2, number=None, load=900), node(3, number=1, load=100))
    cols = columns(render(MonitorState(), v, 80, 24))
    assert list(cols) == ["1", "3"]  # the unnumbered node is not shown


def test_without_userview_all_nodes_show_in_order():
    v = view(*(node(k, number=None, load=100 * k) for k in (1, 2, 3)))
    h = heights(render(MonitorState(), v, 80, 24))
    assert list(h) == ["1", "2", "3"]
    assert h["1"][0] < h["2"][0] < h["3"][0]


def test_no_operational_node():
    lines = render(MonitorState(), view(node(1, alive=False)), 80, 24)
    assert any("no operational nodes" in line for line in lines)


# ------------------------------------------------------------ numbering and paging


def test_horizontal_numbering_writes_numbers_across():
    lines = render(MonitorState(numbering="w"), many(12), 80, 24)
    label_row = lines[axis_index(lines) + 1]
    assert re.search(r"\b9 +10 +11 +12$", label_row)
    assert set(heights(lines)) == {str(k) for k in range(1, 13)}


def test_vertical_numbering_writes_digits_under_each_column():
    lines = render(MonitorState(numbering="v"), many(12), 80, 24)
    a = axis_index(lines)
    assert lines[a + 1].split() == ["1", "1", "1"]  # tens of 10, 11, 12
    assert lines[a + 2].split() == [str(k % 10) for k in range(1, 13)]
    assert set(heights(lines, label_rows=2)) == {str(k) for k in range(1, 13)}
    assert lines[a + 2].strip() == " ".join(str(k % 10) for k in range(1, 13))  # one space apart


def test_tight_vertical_numbering_has_no_space_between_nodes():
    lines = render(MonitorState(numbering="V"), many(12), 80, 24)
    a = axis_index(lines)
    assert lines[a + 2].strip() == "123456789012"
    assert set(heights(lines, label_rows=2)) == {str(k) for k in range(1, 13)}
    assert all("#" * 12 in row for row in chart_rows(lines))


def test_tight_vertical_fits_the_most_nodes():
    shown = {}
    for numbering in "wvV":
        state = MonitorState(numbering=numbering)
        render(state, many(200), 80, 24)
        shown[numbering] = state.per_page
    assert shown["w"] < shown["v"] < shown["V"]


def test_automatic_numbering_is_vertical_only_when_that_makes_all_nodes_fit():
    for count, expected_rows in ((12, 1), (30, 2), (200, 1)):
        state = MonitorState()
        lines = render(state, many(count), 80, 24)
        a = axis_index(lines)
        label_rows = [line for line in lines[a + 1 :] if line.strip() and "nodes" not in line]
        if expected_rows == 1:
            assert re.search(r"\d\d", label_rows[0]), count  # numbers across
        else:
            assert state.per_page >= count and not re.search(r"\d\d", "".join(label_rows))


def test_paging_thirty_nodes_on_eighty_columns():
    state = MonitorState(numbering="w")
    v = many(30)
    lines = render(state, v, 80, 24)
    shown = list(columns(lines))
    assert shown[0] == "1" and len(shown) == state.per_page < 30
    assert "of 30" in lines[-1] and ">>" in lines[-1]
    assert all(len(line) <= 80 for line in lines)

    handle_key(state, "n")
    lines = render(state, v, 80, 24)
    assert list(columns(lines))[-1] == "30"  # the last screen ends at the last node
    assert "<<" in lines[-1] and ">>" not in lines[-1]
    handle_key(state, "n")
    assert list(columns(render(state, v, 80, 24)))[-1] == "30"

    handle_key(state, "p")
    handle_key(state, "p")
    assert state.offset == 0 and list(columns(render(state, v, 80, 24)))[0] == "1"

    handle_key(state, RIGHT)
    handle_key(state, "KEY_RIGHT")
    lines = render(state, v, 80, 24)
    assert list(columns(lines))[0] == "3"
    handle_key(state, LEFT)
    assert list(columns(render(state, v, 80, 24)))[0] == "2"
    for _ in range(5):
        handle_key(state, LEFT)
    assert state.offset == 0
    for _ in range(50):
        handle_key(state, RIGHT)
    lines = render(state, v, 80, 24)
    assert list(columns(lines))[-1] == "30" and state.offset == 30 - state.per_page


def test_arrows_do_nothing_when_all_nodes_fit():
    state = MonitorState()
    v = many(4)
    render(state, v, 80, 24)
    for key in (RIGHT, "n", LEFT, "p"):
        handle_key(state, key)
        assert state.offset == 0
    assert not any("of 4" in line for line in render(state, v, 80, 24))


def test_paging_keeps_the_scale_of_the_visible_nodes():
    v = view(*(node(k, load=100 if k < 30 else 800) for k in range(1, 31)))
    state = MonitorState(numbering="w")
    assert axis_labels(render(state, v, 80, 24))[0] == "1.00"
    handle_key(state, "n")
    assert axis_labels(render(state, v, 80, 24))[0] == "8.00"


# ------------------------------------------------------------ help, messages, sizes


def test_help_lists_every_key_and_any_key_returns():
    state = state_after("h")
    lines = render(state, many(3), 80, 24)
    assert lines == HELP
    text = "\n".join(lines)
    for key in (
        "l",
        "s",
        "m",
        "m m",
        "f",
        "c",
        "d",
        "D",
        "t",
        "w",
        "v",
        "V",
        "a",
        "Right",
        "Left",
        "n",
        "p",
        "Enter",
        "h",
        "q",
    ):
        assert re.search(rf"^  {re.escape(key)}\s", text, re.M), key
    handle_key(state, "s")  # closes the help only
    assert not state.help and state.mode == "load"
    assert "Load" in render(state, many(3), 80, 24)[0]
    assert state_after("h", "q").quit


def test_message_when_mosd_is_unreachable():
    lines = render(MonitorState(), None, 80, 24, message="MOSIX is not running on this node - retrying")
    assert len(lines) == 24
    assert "Load" in lines[0] and lines[-1].startswith("MOSIX is not running")


def test_message_goes_to_the_bottom_with_a_view_too():
    lines = render(MonitorState(), many(3), 80, 24, message="stale")
    assert lines[-1] == "stale" and fits(lines, 80, 24)


@pytest.mark.parametrize("count", [0, 1, 4, 30, 250])
def test_no_size_overflows_or_crashes(count):
    v = view(
        *(
            node(
                k,
                load=37 * k,
                alive=k % 7 != 3,
                ncpus=k % 5 + 1,
                mem_used_mb=k,
                frozen=k % 3,
                swap_total_tenths=k % 40,
                swap_free_tenths=k % 20,
            )
            for k in range(1, count + 1)
        )
    )
    for width in (0, 1, 2, 5, 9, 14, 23, 40):
        for height in (0, 1, 2, 3, 4, 6, 9):
            for mode in MODES:
                for numbering in NUMBERINGS:
                    for extra in ({}, {"show_dead": True, "show_count": True}, {"help": True}):
                        state = MonitorState(mode=mode, numbering=numbering, **extra)
                        lines = render(state, v, width, height, message="mosd is not reachable")
                        assert fits(lines, width, height), (width, height, mode, numbering, extra)
                        handle_key(state, "n")
                        handle_key(state, RIGHT)


def test_large_terminal_and_many_nodes():
    v = many(1000)
    for numbering in NUMBERINGS:
        state = MonitorState(numbering=numbering, show_count=True)
        lines = render(state, v, 300, 100)
        assert fits(lines, 300, 100) and len(lines) == 100
        assert 0 < state.per_page < 1000


def test_a_screen_is_readable_on_80x24():
    lines = render(state_after("t"), view(*(node(k, load=50 * k, ncpus=2) for k in range(1, 9))), 80, 24)
    assert len(lines) == 24 and all(len(line) <= 80 for line in lines)
    assert "h:help q:quit" in lines[0]


# ------------------------------------------------------------ the command's own parts


def test_options_give_the_initial_state():
    assert mosmon.initial_state(memory=2).mode == "swap"
    assert mosmon.initial_state(memory=1).mode == "mem"
    assert mosmon.initial_state(tight=True, count=True, dead=True) == MonitorState(
        numbering="V", show_count=True, show_dead=True
    )
    with pytest.raises(Exception, match="only one"):
        mosmon.initial_state(vertical=True, horizontal=True)
    with pytest.raises(Exception, match="only one"):
        mosmon.initial_state(speed=True, frozen=True)


def test_curses_keys_map_to_monitor_keys():
    assert mosmon.key_name(curses.KEY_RIGHT) == RIGHT
    assert mosmon.key_name(curses.KEY_LEFT) == LEFT
    assert mosmon.key_name(10) == ENTER and mosmon.key_name(curses.KEY_ENTER) == ENTER
    assert mosmon.key_name(ord("m")) == "m" and mosmon.key_name(ord("V")) == "V"
    assert mosmon.key_name(-1) is None


def test_once_without_mosd_says_so(tmp_path):
    result = CliRunner().invoke(mosmon.app, ["--etc", str(tmp_path), "--once", "-m", "-m"])
    assert result.exit_code == 1
    assert "not running" in result.output


def test_conflicting_options_are_a_usage_error(tmp_path):
    result = CliRunner().invoke(mosmon.app, ["--etc", str(tmp_path), "-v", "-V"])
    assert result.exit_code == 2
