"""mosmon in a real terminal (tmux) against a real local cluster: keys in, screen out."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.cluster import run_tool, tool_argv

pytestmark = [pytest.mark.cluster, pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]


class Tmux:
    """One tmux server of our own (private socket) running one command in a pane."""

    def __init__(self, socket: Path, env: dict[str, str]) -> None:
        self.socket = socket
        self.env = env

    def __call__(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout

    def start(self, argv: list[str], width: int, height: int) -> None:
        # The shell records the program's exit status: tmux 3.3 sometimes marks a pane dead
        # (its terminal closed) without ever recording #{pane_dead_status}.
        self.status_file = self.socket.with_name("exit-status")
        self(
            "new-session",
            "-d",
            "-s",
            "mon",
            "-x",
            str(width),
            "-y",
            str(height),
            "-e",
            f"MOSIX_ETC={self.env['MOSIX_ETC']}",
            f"{shlex.join(argv)}; echo $? > {shlex.quote(str(self.status_file))}",
        )
        self("set-option", "-w", "-t", "mon", "remain-on-exit", "on")

    def keys(self, *keys: str) -> None:
        self("send-keys", "-t", "mon", *keys)

    def screen(self) -> list[str]:
        return self("capture-pane", "-p", "-t", "mon").splitlines()

    def pane(self, fmt: str) -> str:
        return self("display-message", "-p", "-t", "mon", fmt).strip()

    def wait_for(self, predicate, what: str, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while time.monotonic() < deadline:
            lines = self.screen()
            if predicate(lines):
                return lines
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; the screen was:\n" + "\n".join(lines))

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", str(self.socket), "kill-server"], capture_output=True, timeout=10)


def text(lines: list[str]) -> str:
    return "\n".join(lines)


def node_row(lines: list[str]) -> str:
    """The horizontal node numbers under the axis."""
    axis = next(i for i, line in enumerate(lines) if re.match(r"^\s*0 \+-", line))
    return lines[axis + 1]


def numbers(lines: list[str]) -> list[str]:
    return node_row(lines).split()


@pytest.fixture
def tmux(tmp_path_factory):
    made: list[Tmux] = []

    def make(env: dict[str, str]) -> Tmux:
        t = Tmux(tmp_path_factory.mktemp("tmux") / "sock", env)
        made.append(t)
        return t

    yield make
    for t in made:
        t.kill()


def test_mosmon_in_a_terminal(local_cluster, tmux):
    cluster = local_cluster(nodes=4, speeds=[10000, 20000, 10000, 5000], interval=0.2)
    cluster.converged(15)
    term = tmux(cluster.env(1))
    term.start(tool_argv("mosmon", "--interval", "0.2"), 100, 30)

    lines = term.wait_for(lambda s: "Load" in s[0] and any(re.match(r"^\s*0 \+-", x) for x in s), "the load chart")
    assert numbers(lines) == ["1", "2", "3", "4"]
    assert "h:help q:quit" in lines[0]

    # s: speeds; node 2 (20000) is the tallest, node 4 (5000) a quarter of it.
    term.keys("s")
    lines = term.wait_for(lambda s: "CPU speed" in s[0], "the speed chart")
    top = next(line for line in lines if line.lstrip().startswith("20000 |"))
    row = node_row(lines)
    assert top[row.index("2")] == "#" and top[row.index("1")] == " "
    bars = {
        k: sum(1 for line in lines if "|" in line and len(line) > row.index(k) and line[row.index(k)] == "#")
        for k in "1234"
    }
    assert bars["2"] > bars["1"] == bars["3"] > bars["4"] > 0

    # m: memory, used '#' and total '+'; m again: swap.
    term.keys("m")
    lines = term.wait_for(lambda s: "Memory in MB" in s[0], "the memory chart")
    assert "+" in text(lines[1:])
    term.keys("m")
    term.wait_for(lambda s: "Swap space in GB" in s[0], "the swap chart")
    term.keys("f")
    term.wait_for(lambda s: "Frozen processes" in s[0], "the frozen-process chart")
    term.keys("c")
    lines = term.wait_for(lambda s: "Number of cores" in s[0], "the cores chart")
    assert numbers(lines) == ["1", "2", "3", "4"]

    # t: the count of operational nodes and CPUs.
    term.keys("t")
    term.wait_for(lambda s: "Operational nodes: 4   CPUs: 4" in text(s), "the count line")

    # A node dies: it leaves the display; d shows it as DEAD, D hides it again.
    cluster.stop(3)
    lines = term.wait_for(
        lambda s: "Operational nodes: 3" in text(s) and numbers(s) == ["1", "2", "4"], "node 3 to disappear", timeout=20
    )
    term.keys("d")
    lines = term.wait_for(lambda s: numbers(s) == ["1", "2", "3", "4"], "the dead node shown")
    x = node_row(lines).index("3")
    column = "".join(line[x] if len(line) > x else " " for line in lines if "|" in line)
    assert "DEAD" in column
    term.keys("D")
    term.wait_for(lambda s: numbers(s) == ["1", "2", "4"], "the dead node hidden again")

    # h: the help screen; any key goes back.
    term.keys("h")
    lines = term.wait_for(lambda s: "mosmon - MOSIX monitor: keys" in s[0], "the help screen")
    assert "Right" in text(lines) and "q      quit" in text(lines)
    term.keys("x")
    term.wait_for(lambda s: "Number of cores" in s[0], "the chart after the help")

    # mosd of this node goes away: a message and retries, no crash; back when it is back.
    term.keys("l")
    cluster.stop(1)
    term.wait_for(lambda s: "retrying" in text(s), "the unreachable-mosd message")
    assert term.pane("#{pane_dead}") == "0"
    cluster.start(1)
    term.wait_for(
        lambda s: "Load" in s[0] and "retrying" not in text(s) and numbers(s) == ["1", "2", "4"],
        "the chart after mosd came back",
        timeout=20,
    )

    # A narrow terminal pages: Right moves one node, Left back.
    term("resize-window", "-t", "mon", "-x", "10", "-y", "30")
    lines = term.wait_for(lambda s: numbers(s) == ["1", "2"], "a narrow screen")
    term.keys("Right")
    term.wait_for(lambda s: numbers(s) == ["2", "4"], "one node to the right")
    term.keys("Left")
    term.wait_for(lambda s: numbers(s) == ["1", "2"], "one node to the left")
    term("resize-window", "-t", "mon", "-x", "100", "-y", "30")
    term.keys("Enter")
    term.wait_for(lambda s: numbers(s) == ["1", "2", "4"], "the wide screen again")

    # q quits, with status 0, and the terminal is restored (the chart is gone).
    term.keys("q")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (term.pane("#{pane_dead}") == "1" and term.status_file.exists()):
        time.sleep(0.1)
    assert term.pane("#{pane_dead}") == "1"
    assert term.status_file.read_text().strip() == "0"
    assert "Load" not in text(term.screen())


def test_mosmon_once_prints_one_screen(local_cluster):
    cluster = local_cluster(nodes=3, speeds=[10000, 20000, 10000], interval=0.2)
    cluster.converged(15)
    out = run_tool("mosmon", "--once", "-s", "-t", env={**cluster.env(1), "COLUMNS": "80", "LINES": "24"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "CPU speed" in lines[0] and "Operational nodes: 3   CPUs: 3" in lines[1]
    assert any(line.lstrip().startswith("20000 |") for line in lines)
    assert numbers(lines) == ["1", "2", "3"]
    assert all(len(line) <= 80 for line in lines) and len(lines) <= 24
