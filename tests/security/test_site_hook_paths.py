"""Issue 17, item 13: a site hook runs as whoever loads it — root, in mosd — so only a
module nobody else could have written is loaded.

``hooks_dir`` in a world-writable directory used to run any ``.py`` planted there as
root. Now the directory, every directory above it and each module must be owned by
root (or by the user running the program) and writable by nobody else — as sudo asks
of its plugins; a directory above that is root's and sticky (``/tmp``) is accepted,
since others can change only their own entries in it. Anything else is refused with
the file and the reason, logged, and the program (the daemon) goes on without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mosix_core import paths
from mosix_core.cluster import localcluster
from mosix_core.contract.plugins import build_plugin_manager
from tests.helpers.cluster import LocalCluster, fresh_base_ip
from tests.helpers.users import User, as_user

HOOK = """\
import pathlib
pathlib.Path({marker!r}).write_text("ran as " + str(__import__("os").geteuid()))
from mosix_core.contract.hookspecs import hookimpl

@hookimpl
def mosix_status_fields(node):
    return [({field!r}, "yes")]
"""


def plant(directory: Path, name: str, marker: Path, *, as_: User | None = None) -> Path:
    """A hook module that leaves ``marker`` when it runs (written by ``as_`` if given)."""
    path = directory / f"{name}.py"
    source = HOOK.format(marker=str(marker), field=name)
    if as_ is None:
        path.write_text(source)
        path.chmod(0o644)
    else:
        done = as_user(as_, ["sh", "-c", f"umask 022; cat > {path}"], input=source.encode())
        assert done.returncode == 0, done.stderr
    return path


def loaded(pm) -> set[str]:
    return {info.name for info in pm.plugins_info() if info.source == "site hook"}


@pytest.fixture
def tree(tmp_path) -> Path:
    """A directory that only root can write, as every one above it (or root's sticky /tmp)."""
    tmp_path.chmod(0o711)  # the attacker may pass through, as through /etc
    base = tmp_path / "etc-mosix"
    base.mkdir(mode=0o755)
    base.chmod(0o755)
    return base


def refusal(pm, path: Path) -> str:
    reasons = [err.reason for err in pm.refused if err.path == str(path)]
    assert len(reasons) == 1, [(e.path, e.reason) for e in pm.refused]
    return reasons[0]


def test_a_world_writable_hooks_directory_loads_nothing(tree, attacker, tmp_path):
    hooks = tree / "hooks"
    hooks.mkdir()
    hooks.chmod(0o777)
    marker = tmp_path / "planted-ran"
    plant(hooks, "planted", marker, as_=attacker)
    pm = build_plugin_manager(hooks_dir=hooks)
    assert not marker.exists() and loaded(pm) == set()
    assert refusal(pm, hooks) == f"{hooks} is writable by its group and others"

    # sticky (as /tmp is) does not make it a hooks directory: anyone may still add a module
    hooks.chmod(0o1777)
    pm = build_plugin_manager(hooks_dir=hooks)
    assert not marker.exists() and loaded(pm) == set()
    assert refusal(pm, hooks) == f"{hooks} is writable by its group and others"


def test_mosd_refuses_the_planted_hook_logs_why_and_runs_on(tree, attacker, tmp_path):
    hooks = tree / "hooks"
    hooks.mkdir()
    hooks.chmod(0o777)
    marker = tmp_path / "planted-ran"
    plant(hooks, "planted", marker, as_=attacker)
    root = tmp_path / "cluster"
    root.mkdir()
    cluster = LocalCluster(
        root,
        localcluster.up(root, nodes=1, base_ip=str(fresh_base_ip()), interval=0.2, extra_conf=f"hooks_dir = {hooks}\n"),
    )
    try:
        cluster.converged()
        status = cluster.run(1, "mosctl", "localstatus")
        assert status.returncode == 0, status.stderr
        assert "planted" not in status.stdout
        assert cluster.running(1)
    finally:
        cluster.down()
    assert not marker.exists()
    logged = [
        json.loads(line)
        for line in paths.log_file(cluster.etc(1)).read_text().splitlines()
        if line.startswith("{") and "site hook refused" in line
    ]
    assert (
        logged
        and logged[0]["path"] == str(hooks)
        and logged[0]["reason"] == f"{hooks} is writable by its group and others"
    )
    assert logged[0]["level"] == "error"


def test_a_module_owned_by_another_user_is_refused_and_the_others_load(tree, attacker, tmp_path):
    hooks = tree / "hooks"
    hooks.mkdir(mode=0o755)
    good, planted = tmp_path / "good-ran", tmp_path / "planted-ran"
    plant(hooks, "good", good)
    module = plant(hooks, "planted", planted)
    os.chown(module, attacker.uid, attacker.gid)  # theirs, in a directory of root's
    pm = build_plugin_manager(hooks_dir=hooks)
    assert loaded(pm) == {"site:good"} and good.exists()
    assert not planted.exists()
    assert refusal(pm, module) == f"{module} is owned by {attacker.name}, not by root"
    assert pm.hook.mosix_status_fields(node=None) == [[("good", "yes")]]


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666], ids=["group", "others", "both"])
def test_a_module_others_may_write_is_refused(tree, tmp_path, mode):
    hooks = tree / "hooks"
    hooks.mkdir(mode=0o755)
    good, planted = tmp_path / "good-ran", tmp_path / "planted-ran"
    plant(hooks, "good", good)
    module = plant(hooks, "writable", planted)
    module.chmod(mode)
    pm = build_plugin_manager(hooks_dir=hooks)
    assert loaded(pm) == {"site:good"} and not planted.exists()
    whom = {0o664: "its group", 0o646: "others", 0o666: "its group and others"}[mode]
    assert refusal(pm, module) == f"{module} is writable by {whom}"


def test_a_directory_above_others_may_write_is_refused(tree, tmp_path):
    above = tree / "shared"
    above.mkdir()
    above.chmod(0o775)  # group-writable: a member could swap the hooks directory
    hooks = above / "hooks"
    hooks.mkdir(mode=0o755)
    marker = tmp_path / "ran"
    plant(hooks, "hook", marker)
    pm = build_plugin_manager(hooks_dir=hooks)
    assert loaded(pm) == set() and not marker.exists()
    assert refusal(pm, hooks) == f"{above} is writable by its group"


def test_a_linked_module_is_refused_and_a_linked_directory_is_judged_where_it_lies(tree, attacker, tmp_path):
    hooks = tree / "hooks"
    hooks.mkdir(mode=0o755)
    theirs = attacker.home / "hook.py"
    marker = tmp_path / "linked-ran"
    plant(attacker.home, "hook", marker, as_=attacker)
    (hooks / "linked.py").symlink_to(theirs)
    pm = build_plugin_manager(hooks_dir=hooks)
    assert loaded(pm) == set() and not marker.exists()
    assert refusal(pm, hooks / "linked.py") == "is a symbolic link"

    # a link to a directory of the attacker's: what counts is the directory it leads to
    link = tree / "hooks-link"
    link.symlink_to(attacker.home)
    pm = build_plugin_manager(hooks_dir=link)
    assert loaded(pm) == set() and not marker.exists()
    assert refusal(pm, link) == f"{attacker.home} is owned by {attacker.name}, not by root"


def test_root_hooks_under_a_sticky_directory_still_load(tmp_path):
    """/tmp-like above is fine: others cannot rename or replace root's entries in it."""
    sticky = tmp_path / "tmp-like"
    sticky.mkdir()
    sticky.chmod(0o1777)
    hooks = sticky / "hooks"
    hooks.mkdir(mode=0o755)
    marker = tmp_path / "ran"
    plant(hooks, "site", marker)
    pm = build_plugin_manager(hooks_dir=hooks)
    assert loaded(pm) == {"site:site"} and marker.read_text() == "ran as 0"
    assert pm.refused == []
    # not sticky: anyone could rename the hooks directory away and put their own there
    sticky.chmod(0o777)
    marker.unlink()
    pm = build_plugin_manager(hooks_dir=hooks)
    assert loaded(pm) == set() and not marker.exists()
    assert refusal(pm, hooks) == f"{sticky} is writable by its group and others"


def test_a_user_may_load_hooks_of_their_own_but_root_does_not(attacker, tmp_path):
    """The user running the program is trusted with their own code; root is not."""
    hooks = attacker.home / "hooks"
    marker = attacker.home / "ran"
    done = as_user(attacker, ["sh", "-c", f"umask 022; mkdir {hooks}"])
    assert done.returncode == 0, done.stderr
    plant(hooks, "mine", marker, as_=attacker)
    program = (
        "import sys; from pathlib import Path\n"
        "from mosix_core.contract.plugins import build_plugin_manager\n"
        "pm = build_plugin_manager(hooks_dir=Path(sys.argv[1]))\n"
        "print(sorted(i.name for i in pm.plugins_info() if i.source == 'site hook'))\n"
    )
    theirs = as_user(attacker, [sys.executable, "-c", program, str(hooks)], text=True)
    assert theirs.returncode == 0, theirs.stderr
    assert theirs.stdout.strip() == "['site:mine']"
    assert marker.read_text() == f"ran as {attacker.uid}"
    marker.unlink()
    ours = subprocess.run([sys.executable, "-c", program, str(hooks)], capture_output=True, text=True, timeout=60)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.strip() == "[]" and not marker.exists()
    assert "site hook refused" in ours.stderr and f"{attacker.home} is owned by {attacker.name}" in ours.stderr
