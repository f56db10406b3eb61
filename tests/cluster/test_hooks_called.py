"""Every hook of the contract is called by the kernel: a recording site plugin, loaded
through ``hooks_dir`` by real daemons, tools and supervisors, writes down each hook it
gets while the test drives a real cluster. No test code calls a hook here; a declared
hook that the kernel never calls fails this test (remove the hook until its caller
comes)."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mosix_core.contract import hookspecs
from tests.helpers.programs import BIN

pytestmark = pytest.mark.cluster

HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("mosix_"))
EVERYONE_ADDS = {"mosix_status_fields", "mosix_cli_commands"}
SITE_NAME = "site_probe"

# What the recording plugin answers besides writing the hook down: nothing, so that the
# built-ins decide, except the site's own /proc/self name, which shows the answer
# reaches the program.
ANSWERS = {
    "mosix_special_path": f"SpecialPathResult.value(42) if path == '/proc/self/{SITE_NAME}' else None",
    **{name: "[]" for name in EVERYONE_ADDS},
}

# At home, then away on node 2 (the program asks to move itself, which node 2 admits).
PROGRAM = f"""\
import ctypes, os, select
libc = ctypes.CDLL(None)
print("home", libc.open(b"/proc/self/{SITE_NAME}", 0), flush=True)
libc.open(b"/proc/self/migrate", 1 | os.O_CREAT, 2)
for _ in range(3000):
    if libc.open(b"/proc/self/whereami", 0):
        break
    select.select([], [], [], 0.01)
print("away", libc.open(b"/proc/self/whereami", 0), libc.open(b"/proc/self/{SITE_NAME}", 0), flush=True)
"""


def recording_plugin() -> str:
    """A site hook module implementing every declared hook with its declared arguments."""
    lines = [
        "import os, sys",
        "from pathlib import Path",
        "from mosix_core.contract.hookspecs import hookimpl",
        "from mosix_core.contract.records import SpecialPathResult",
        "CALLED = Path(__file__).with_name('called.log')",
        "def record(name):",
        "    with open(CALLED, 'a') as f:",
        "        f.write(f'{name} {os.path.basename(sys.argv[0])} {os.getpid()}\\n')",
    ]
    for name in HOOKS:
        arguments = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        lines += [
            "@hookimpl",
            f"def {name}({arguments}):",
            f"    record({name!r})",
            f"    return {ANSWERS.get(name, 'None')}",
        ]
    return "\n".join(lines) + "\n"


def called(log: Path) -> dict[str, set[str]]:
    """Each hook called so far, with the programs that called it."""
    by_hook: dict[str, set[str]] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            name, program, _ = line.split()
            by_hook.setdefault(name, set()).add(program.removesuffix(".py"))
    return by_hook


def test_every_declared_hook_is_called_by_the_kernel(local_cluster, tmp_path):
    hooks = tmp_path / "site-hooks"  # root's, not writable by others: trusted (plugins.py)
    hooks.mkdir(mode=0o755)
    (hooks / "recorder.py").write_text(recording_plugin())
    log = hooks / "called.log"
    cluster = local_cluster(nodes=2, interval=0.2, extra_conf=f"hooks_dir = {hooks}\n", balancing=True)
    cluster.converged()
    assert "site:recorder" in cluster.client(1).call("localstatus")["daemon"]["plugins"]

    # a freezing policy whose RED mark no load reaches: mosd consults it all the same
    (tmp_path / "freeze").mkdir()
    (cluster.etc(1) / "freeze.conf").write_text(f"1 0 1000 998\n{tmp_path / 'freeze'}\n")
    cluster.client(1).call("setpe")

    best = cluster.run(1, "mosbestnode")
    assert best.returncode == 0, best.stderr
    status = cluster.run(1, "mosctl", "localstatus")
    assert status.returncode == 0, status.stderr

    env = {**cluster.env(1), "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    (tmp_path / "program.py").write_text(PROGRAM)
    run = subprocess.run(
        [str(BIN / "mosrun"), sys.executable, "program.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == ["home 42", "away 2 42"], run.stdout + run.stderr

    cluster.wait_until(lambda: "mosix_choose_freeze" in called(log), what="the freezing policy consulted")
    # a MOSIX process that stays a while: the balancer asks whether it should move
    sleeper = subprocess.Popen([str(BIN / "mosrun"), "sleep", "20"], env=env, stdout=subprocess.DEVNULL)
    try:
        cluster.wait_until(lambda: "mosix_migration_decision" in called(log), timeout=20, what="the balancer consulted")
    finally:
        sleeper.kill()
        sleeper.wait()
    cluster.stop(2)
    cluster.wait_until(
        lambda: set(HOOKS) <= set(called(log)),
        timeout=20,
        what="every hook called: missing " + ", ".join(sorted(set(HOOKS) - set(called(log)))),
    )

    by_hook = called(log)
    assert set(by_hook) == set(HOOKS)
    # who called what: the daemon, mosctl, and the supervisor of the MOSIX program
    assert by_hook["mosix_cli_commands"] == {"mosctl"}
    assert by_hook["mosix_special_path"] == {"mosrun"}
    assert by_hook["mosix_admit_guest"] == {"mosd"}
    assert by_hook["mosix_migration_decision"] == {"mosd"}
