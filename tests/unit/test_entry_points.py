"""Finding ``mosix.plugins`` entry points without importlib.metadata: a third party's
distribution, installed as pip would (a ``*.dist-info`` directory on sys.path)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mosix_core.contract import hookspecs
from mosix_core.contract.entry_points import entry_points, normalized
from mosix_core.contract.plugins import build_plugin_manager

PLUGIN = """
from mosix_core.contract.hookspecs import hookimpl

@hookimpl
def mosix_check_mosrun(request):
    return None
"""


def install(
    site: Path, dist: str, version: str, entry_points_txt: str | None, module: str | None = None, metadata: bool = True
) -> None:
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    if metadata:
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n\nLong text.\nName: not-a-header\n"
        )
    if entry_points_txt is not None:
        (info / "entry_points.txt").write_text(entry_points_txt)
    if module is not None:
        (site / f"{module}.py").write_text(PLUGIN)


def test_a_third_party_plugin_is_found_named_and_loaded(tmp_path, monkeypatch):
    install(
        tmp_path,
        "Site-Policy",
        "1.2",
        "[console_scripts]\nx = y:z\n\n[mosix.plugins]\n# a comment\nsite_policy = site_policy_mod\n",
        module="site_policy_mod",
    )
    install(tmp_path, "unrelated", "3.0", "[console_scripts]\nfoo = bar:baz\n")
    install(tmp_path, "no-entry-points", "1.0", None)
    found = list(entry_points(hookspecs.ENTRY_POINT_GROUP, [str(tmp_path)]))
    assert [(e.name, e.value, e.distribution, e.version) for e in found] == [
        ("site_policy", "site_policy_mod", "Site-Policy", "1.2")
    ]

    monkeypatch.syspath_prepend(str(tmp_path))
    pm = build_plugin_manager()
    info = {i.name: i for i in pm.plugins_info()}
    assert (info["site_policy"].distribution, info["site_policy"].version) == ("Site-Policy", "1.2")
    assert "mosrun_policy" in info  # the built-ins are still there
    assert any(impl.plugin_name == "site_policy" for impl in pm.hook.mosix_check_mosrun.get_hookimpls())


def test_the_first_copy_on_the_path_wins(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    install(first, "thing", "2.0", "[mosix.plugins]\nthing = new_thing\n")
    install(second, "Thing", "1.0", "[mosix.plugins]\nthing = old_thing\n")
    found = list(entry_points(hookspecs.ENTRY_POINT_GROUP, [str(first), str(second), str(tmp_path / "gone")]))
    assert [(e.value, e.version) for e in found] == [("new_thing", "2.0")]


def test_without_metadata_the_directory_name_says_who(tmp_path):
    install(tmp_path, "bare", "0.3", "[mosix.plugins]\nbare = bare_mod:plugin\n", metadata=False)
    (only,) = entry_points(hookspecs.ENTRY_POINT_GROUP, [str(tmp_path)])
    assert (only.distribution, only.version, only.value) == ("bare", "0.3", "bare_mod:plugin")


def test_a_plugin_that_fails_to_import_is_reported_by_name(tmp_path, monkeypatch):
    install(tmp_path, "broken", "1.0", "[mosix.plugins]\nbroken = broken_mod\n")
    (tmp_path / "broken_mod.py").write_text("raise RuntimeError('half-installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from mosix_core.errors import MosixError

    with pytest.raises(MosixError, match="plugin 'broken' from broken failed to load: RuntimeError: half-installed"):
        build_plugin_manager()
    sys.modules.pop("broken_mod", None)


def test_our_own_distribution_is_recognised_however_spelt():
    assert normalized("Mosix_Py") == normalized("mosix.py") == normalized("mosix-py") == "mosix-py"
