"""Building the plugin manager: entry points, site hooks, disabling, unknown hooks, policies."""

from __future__ import annotations

import pytest

from mosix_core.errors import ConfigError, MosixError, PolicyRefused
from mosix_core.hookspecs import hookimpl
from mosix_core.placement import MosrunRequest
from mosix_core.plugins import apply_policies, build_plugin_manager

BUILTINS = {"bestnode", "udp_gossip", "resources", "admission", "freezing", "mosrun_policy", "log_mosrun"}


def test_builtins_come_from_the_entry_point_group_with_their_package():
    pm = build_plugin_manager()
    infos = {i.name: i for i in pm.plugins_info()}
    assert BUILTINS <= set(infos)
    assert all(infos[n].distribution == "mosix-py" and infos[n].source == "entry point" for n in BUILTINS)
    assert infos["bestnode"].location == "mosix_plugins.bestnode"


def test_a_plugin_can_be_disabled_by_name():
    pm = build_plugin_manager(disabled=["bestnode"])
    assert pm.get_plugin("bestnode") is None
    assert "bestnode" not in {i.name for i in pm.plugins_info()}


def test_unknown_hook_names_fail_loudly():
    class Typo:
        @hookimpl
        def mosix_select_nodes(self, request, view):  # note the plural: not in the contract
            return None

    with pytest.raises(MosixError, match="unknown hook"):
        build_plugin_manager(extra=[("typo", Typo())])


def test_site_hooks_are_loaded_by_path_and_reported(tmp_path):
    (tmp_path / "site_policy.py").write_text(
        "from mosix_core.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def mosix_status_fields(node):\n"
        "    return [('Rack', '7')]\n")
    (tmp_path / "_private_helper.py").write_text("raise RuntimeError('must not be loaded')\n")
    pm = build_plugin_manager(hooks_dir=tmp_path)
    info = {i.name: i for i in pm.plugins_info()}["site:site_policy"]
    assert info.source == "site hook" and info.location == str(tmp_path / "site_policy.py")
    assert pm.hook.mosix_status_fields(node=None) == [[("Rack", "7")]]


def test_broken_site_hook_is_a_clear_error(tmp_path):
    (tmp_path / "broken.py").write_text("def oops(:\n")
    with pytest.raises(ConfigError, match="broken.py: site hook failed to load: SyntaxError"):
        build_plugin_manager(hooks_dir=tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        build_plugin_manager(hooks_dir=tmp_path / "missing")


@pytest.mark.hook("mosix_check_mosrun")
def test_policies_chain_and_the_shipped_example_policy(tmp_path, monkeypatch):
    from pathlib import Path

    log = tmp_path / "mosrun.log"
    monkeypatch.setenv("MOSRUN_POLICY_LOG", str(log))
    hooks = Path(__file__).resolve().parents[2] / "hooks"
    pm = build_plugin_manager(hooks_dir=hooks)
    user = MosrunRequest(uid=1000, user="alice", argv=("prog", "1"), location="-r3", memory_mb=500)
    checked = apply_policies(pm, "mosix_check_mosrun", user)
    assert checked.location == "-b" and checked.memory_mb == 500   # -b forced
    with pytest.raises(PolicyRefused, match="requires -m"):
        apply_policies(pm, "mosix_check_mosrun", MosrunRequest(uid=1000, user="alice", argv=("prog",)))
    root = MosrunRequest(uid=0, user="root", argv=("prog",), location="-h")
    assert apply_policies(pm, "mosix_check_mosrun", root) == root       # root is exempt
    text = log.read_text()
    assert "user=alice allowed: prog 1" in text and "refused (no -m)" in text and "allowed (root)" in text

    class Second:
        @hookimpl(tryfirst=True)
        def mosix_check_mosrun(self, request):
            import attrs
            return attrs.evolve(request, memory_mb=(request.memory_mb or 0) + 1)

    pm2 = build_plugin_manager(hooks_dir=hooks, extra=[("second", Second())])
    # the tryfirst plugin runs first; the site policy then sees its result
    assert apply_policies(pm2, "mosix_check_mosrun", user).memory_mb == 501
