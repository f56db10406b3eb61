"""Building the plugin manager: entry points, site hooks, disabling, unknown hooks, policies."""

from __future__ import annotations

from ipaddress import IPv4Address

import attrs
import pytest

from mosix_core.cluster.gossip import ClusterView
from mosix_core.config import DaemonSettings
from mosix_core.contract.hookspecs import hookimpl
from mosix_core.contract.plugins import NoAnswer, apply_policies, build_plugin_manager, first_answer
from mosix_core.contract.records import MosrunRequest, PlacementRequest, PlacementView
from mosix_core.errors import ConfigError, MosixError, PolicyRefused

BUILTINS = {"bestnode", "udp_gossip", "resources", "admission", "freezing", "mosrun_policy", "log_mosrun"}


def test_builtins_come_from_the_entry_point_group_with_their_package():
    pm = build_plugin_manager()
    infos = {i.name: i for i in pm.plugins_info()}
    assert set(infos) >= BUILTINS
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
        "from mosix_core.contract.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def mosix_status_fields(node):\n"
        "    return [('Rack', '7')]\n"
    )
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


def test_policies_chain_and_the_shipped_example_policy(tmp_path, monkeypatch):
    from pathlib import Path

    log = tmp_path / "mosrun.log"
    monkeypatch.setenv("MOSRUN_POLICY_LOG", str(log))
    hooks = Path(__file__).resolve().parents[2] / "hooks"
    pm = build_plugin_manager(hooks_dir=hooks)
    user = MosrunRequest(uid=1000, user="alice", argv=("prog", "1"), location="-r3", memory_mb=500)
    checked = apply_policies(pm, "mosix_check_mosrun", user)
    assert checked.location == "-b" and checked.memory_mb == 500  # -b forced
    with pytest.raises(PolicyRefused, match="requires -m"):
        apply_policies(pm, "mosix_check_mosrun", MosrunRequest(uid=1000, user="alice", argv=("prog",)))
    root = MosrunRequest(uid=0, user="root", argv=("prog",), location="-h")
    assert apply_policies(pm, "mosix_check_mosrun", root) == root  # root is exempt
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


def test_a_firstresult_hook_nobody_answers_has_one_answer():
    pm = build_plugin_manager(disabled=["bestnode", "resources"])
    view = PlacementView(ClusterView(IPv4Address("10.0.0.1"), dead_after=10), lambda ip: True)
    assert first_answer(pm.hook.mosix_select_node, default=None, request=PlacementRequest(), view=view) is None
    with pytest.raises(NoAnswer, match="no plugin answers mosix_measure_resources"):
        first_answer(pm.hook.mosix_measure_resources, settings=DaemonSettings.default(), processes=[])
    answered = build_plugin_manager()
    assert (
        first_answer(answered.hook.mosix_measure_resources, settings=DaemonSettings.default(), processes=[]).ncpus >= 1
    )


def test_chained_policies_are_called_through_pluggy():
    class AddMemory:
        @hookimpl
        def mosix_check_mosrun(self, request):
            return attrs.evolve(request, memory_mb=(request.memory_mb or 0) + 100)

    pm = build_plugin_manager(extra=[("add_memory", AddMemory())])
    called: list[list[str]] = []
    undo = pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: called.append([i.plugin_name for i in impls]),
        lambda outcome, name, impls, kwargs: None,
    )
    try:
        request = apply_policies(pm, "mosix_check_mosrun", MosrunRequest(uid=1, user="u", argv=("p",)))
    finally:
        undo()
    assert request.memory_mb == 100
    assert called == [["add_memory"], ["mosrun_policy"]]  # one at a time, the site's first


@pytest.mark.parametrize("marker", [hookimpl(wrapper=True), hookimpl(hookwrapper=True)])
def test_a_wrapper_on_a_chained_hook_is_refused_when_registered(marker):
    class Wrapping:
        def mosix_check_mosrun(self, request):
            result = yield
            return result

    Wrapping.mosix_check_mosrun = marker(Wrapping.mosix_check_mosrun)
    refusal = "plugin 'wrapping'.*mosix_check_mosrun is a chained policy.*cannot be a wrapper"
    with pytest.raises(MosixError, match=refusal):
        build_plugin_manager(extra=[("wrapping", Wrapping())])


def test_wrappers_elsewhere_are_pluggys_as_usual():
    class Timing:
        @hookimpl(wrapper=True)
        def mosix_status_fields(self, node):
            fields = yield
            return [*fields, [("Timed", "yes")]]

    pm = build_plugin_manager(extra=[("timing", Timing())])
    assert [("Timed", "yes")] in pm.hook.mosix_status_fields(node=None)
