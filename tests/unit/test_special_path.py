"""``mosix_special_path``: the site's own /proc/self names, answered by its plugins
through the interface the supervisor calls (procself.special_name, then procself.handle)."""

from __future__ import annotations

import errno

import pytest

from mosix_core.contract.hookspecs import hookimpl
from mosix_core.contract.plugins import build_plugin_manager
from mosix_core.contract.records import OpeningProcess, SpecialPathResult
from mosix_core.mosrun import procself

AT_HOME = procself.Environment(whereami=lambda: 0, in_cluster=lambda node: False, read_string=lambda addr: b"")
WRITE = 1 | procself.O_CREAT


class SiteQuota:
    def __init__(self) -> None:
        self.seen: list[tuple[str, OpeningProcess]] = []

    @hookimpl
    def mosix_special_path(self, path, process):
        self.seen.append((path, process))
        if path == "/proc/self/site_quota":
            return SpecialPathResult.value(42 if process.reading else process.value + 1)
        if path == "/proc/self/site_secret":
            return SpecialPathResult.error(errno.EPERM)
        if path == "/proc/self/site_broken":
            raise RuntimeError("a bug in the site's plugin")
        return None


@pytest.fixture
def site(monkeypatch):
    plugin = SiteQuota()
    monkeypatch.setattr(procself, "_site", [build_plugin_manager(extra=[("quota", plugin)])])
    return plugin


def site_open(path: bytes, flags: int = 0, value: int = 0, state: procself.MosixState | None = None) -> int | None:
    """What the supervisor does with an open it intercepted: None when it lets the kernel open."""
    name = procself.special_name(path)
    if name is None:
        return None
    return procself.handle(state or procself.MosixState(), name, flags, value, AT_HOME)


def test_the_site_answers_its_own_names(site):
    assert site_open(b"/proc/self/site_quota") == 42
    assert site_open(b"/proc/self/site_quota", WRITE, 7) == 8
    assert site_open(b"/proc/self/site_secret") == -errno.EPERM
    path, process = site.seen[1]
    assert path == "/proc/self/site_quota"
    assert process == OpeningProcess(flags=WRITE, value=7, where=0)


def test_the_process_is_seen_as_it_is(site):
    site_open(b"/proc/self/site_quota", 0, 0, procself.MosixState(lock=1, needmem=300, nmigs=2))
    assert site.seen[0][1] == OpeningProcess(flags=0, value=0, where=0, lock=True, needmem=300, nmigs=2)


def test_a_name_nobody_answers_fails_as_linux_says(site):
    assert site_open(b"/proc/self/nonsense") == -errno.ENOENT
    assert site_open(b"/proc/self/nonsense", WRITE, 1) == -errno.ENOENT
    assert [path for path, _ in site.seen] == ["/proc/self/nonsense"] * 2


def test_a_failing_plugin_fails_the_open_not_the_supervisor(site):
    assert site_open(b"/proc/self/site_broken") == -errno.EIO


def test_the_manual_and_linux_keep_their_names(site):
    assert site_open(b"/proc/self/needmem") == 0  # the manual's, never asked
    for linux in (
        b"/proc/self/status",
        b"/proc/self/maps",
        b"/proc/self/fd/3",
        b"/proc/self/../../tmp/x",
        b"/proc/self/",
        b"/proc/self/.",
        b"/proc/self/" + b"x" * 60,
        b"/proc/self/\xff",
    ):
        assert site_open(linux) is None, linux  # the kernel opens them
    assert site_open(b"/etc/passwd") is None
    assert site.seen == []


def test_without_a_plugin_for_paths_everything_is_as_before(monkeypatch):
    monkeypatch.setattr(procself, "_site", [build_plugin_manager()])
    assert site_open(b"/proc/self/site_quota") is None
    monkeypatch.setattr(procself, "_site", [None])  # the site's plugins do not load
    assert site_open(b"/proc/self/site_quota") is None


def test_a_tool_given_a_site_name_is_not_lectured_about_the_manual():
    assert procself.named_by_argument(b"/proc/self/whereami", "cat /proc/self/whereami")
    assert not procself.named_by_argument(b"/proc/self/site_quota", "cat /proc/self/site_quota")
