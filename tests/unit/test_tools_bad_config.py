"""No configuration file content can make a tool print a traceback: it prints one
clear line naming the file and exits 1."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mosix_core.cli import mosctl, mosplugins
from mosix_core.daemon.node import Node
from mosix_core.errors import MosixError
from tests.helpers.cluster import tool_argv

FILES = [
    "mosix.map",
    "userview.map",
    "speed",
    "mosip",
    "secret",
    "freeze.conf",
    "partners/other",
    "private.conf",
    "retainpri",
    "maxguests",
    "mosd.conf",
]

garbage = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.sampled_from(
            [
                "127.0.0.1",
                "0.0.1.1",
                "255.255.255.9",
                "10.0.0.1=",
                "=",
                "p",
                "#",
                "-1",
                "99999999999",
                "1e9",
                "/",
                "U",
                "OCG",
                "\t",
                " ",
                "\n",
                "nan",
                "é",
                "\x00",
                "hooks_dir",
                "udp_port",
                "=",
                "1",
                "0",
            ]
        ),
        max_size=30,
    ).map(" ".join),
)


def runner_output(app, args) -> tuple[int, str]:
    result = CliRunner().invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback would have been printed: fail with it
    return result.exit_code, result.output


@pytest.mark.parametrize("name", FILES)
def test_garbage_in_any_file_gives_a_clear_error(mosix_etc: Path, tmp_path_factory, name: str):
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(text=garbage)
    def check(text: str) -> None:
        etc = tmp_path_factory.mktemp("etc")
        shutil.copytree(mosix_etc, etc, dirs_exist_ok=True)
        path = etc / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, errors="surrogateescape")
        if name == "secret":
            path.chmod(0o600)
        for app, args in ((mosplugins.app, ["--etc", str(etc)]), (mosctl.app, ["whois", "1", "--etc", str(etc)])):
            code, output = runner_output(app, args)
            assert "Traceback" not in output
            if code != 0 and "not running" not in output and "not in map" not in output:
                assert str(etc) in output, output  # the message names the file
        try:
            Node(etc)  # what mosd does first: load everything, secret included
        except MosixError as err:
            assert str(etc) in str(err) or "mossetpe -p" in str(err)

    check()


def test_mosd_with_a_broken_map_says_so(mosix_etc: Path):
    (mosix_etc / "mosix.map").write_text("127.0.0.1 4 p\n300.1.2.3 2\n")
    out = subprocess.run(
        tool_argv("mosd", "--foreground", "--etc", str(mosix_etc)), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert f"{mosix_etc / 'mosix.map'}:2:" in out.stderr


def test_mosd_refuses_a_readable_secret(mosix_etc: Path):
    (mosix_etc / "secret").chmod(0o644)
    out = subprocess.run(
        tool_argv("mosd", "--foreground", "--etc", str(mosix_etc)), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "secret" in out.stderr and "600" in out.stderr


def test_bad_options_are_usage_errors_not_tracebacks():
    for tool, args in (
        ("mosbestnode", ["-mfoo"]),
        ("mossetpe", ["-x"]),
        ("mosctl", ["nosuch"]),
        ("moscluster", ["up", "--nodes", "0"]),
        ("mosmon", ["-v", "-w", "--once"]),
    ):
        out = subprocess.run(tool_argv(tool, *args), capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and "Traceback" not in out.stderr, (tool, out.stderr)
    assert sys.executable
