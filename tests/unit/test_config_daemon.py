"""mosd.conf: this implementation's own settings."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from mosix_core.config.daemon import _PARSERS, DaemonSettings
from mosix_core.errors import ConfigError

SRC = "/etc/mosix/mosd.conf"


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        DaemonSettings.parse(text, SRC)
    assert info.value.path == SRC
    return info.value


def test_defaults():
    settings = DaemonSettings.default()
    assert (settings.tcp_port, settings.tcp_aux_port, settings.udp_port, settings.udp_aux_port) == (253, 252, 253, 249)
    assert settings.gossip_interval == 1.0 and settings.dead_after == 0.0
    assert settings.resources == "host" and settings.hooks_dir is None
    assert settings.disabled_plugins == () and settings.log_level == "info"
    assert DaemonSettings.parse("# nothing\n", SRC) == settings


def test_every_field_has_a_parser():
    assert set(_PARSERS) == {f.name for f in attrs.fields(DaemonSettings)}


def test_all_keys():
    text = """
    tcp_port = 20253          # unprivileged
    tcp_aux_port=20252
    udp_port = 20253
    udp_aux_port = 20249
    gossip_interval = 0.25
    dead_after = 5
    gossip_fanout = 3
    gossip_window = 40
    max_datagram = 1400
    resources = virtual
    virtual_cpus = 2
    virtual_memory_mb = 2048
    virtual_swap_mb = 512
    hooks_dir = /srv/mosix hooks
    disabled_plugins = freezing, log_mosrun,freezing
    log_level = debug
    wall_clock_tolerance_ms = 0
    forward_spin_us = 250
    """
    settings = DaemonSettings.parse(text, SRC)
    assert settings == DaemonSettings(
        tcp_port=20253,
        tcp_aux_port=20252,
        udp_port=20253,
        udp_aux_port=20249,
        gossip_interval=0.25,
        dead_after=5.0,
        gossip_fanout=3,
        gossip_window=40,
        max_datagram=1400,
        resources="virtual",
        virtual_cpus=2,
        virtual_memory_mb=2048,
        virtual_swap_mb=512,
        hooks_dir="/srv/mosix hooks",
        disabled_plugins=("freezing", "log_mosrun"),
        log_level="debug",
        wall_clock_tolerance_ms=0.0,
        forward_spin_us=250.0,
    )


def test_forward_spin():
    assert DaemonSettings.default().forward_spin_us == 100
    assert DaemonSettings.parse("forward_spin_us = 0\n", SRC).forward_spin_us == 0
    for bad in ("-1", "0.5", "20000", "soon"):
        assert "forward_spin_us" in str(error(f"forward_spin_us = {bad}\n"))


def test_empty_values_for_optional_lists():
    settings = DaemonSettings.parse("hooks_dir =\ndisabled_plugins =\n", SRC)
    assert settings.hooks_dir is None and settings.disabled_plugins == ()


def test_hooks_path_is_relative_to_etc():
    assert DaemonSettings.parse("hooks_dir = hooks\n", SRC).hooks_path(Path("/etc/mosix")) == Path("/etc/mosix/hooks")
    assert DaemonSettings.parse("hooks_dir = /opt/h\n", SRC).hooks_path(Path("/etc/mosix")) == Path("/opt/h")
    assert DaemonSettings.default().hooks_path(Path("/etc/mosix")) is None


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("tcp_port\n", 1, "expected 'key = value'"),
        ("= 5\n", 1, "expected 'key = value'"),
        ("\nbogus = 1\n", 2, "unknown key 'bogus'"),
        ("TCP_PORT = 1\n", 1, "unknown key 'TCP_PORT'"),
        ("tcp_port = 0\n", 1, "tcp_port 0 is out of range (1 to 65535)"),
        ("tcp_port = 65536\n", 1, "out of range (1 to 65535)"),
        ("udp_port = http\n", 1, "udp_port must be an integer"),
        ("tcp_port = 1 2\n", 1, "tcp_port needs one value, not 2"),
        ("tcp_port =\n", 1, "tcp_port needs one value, not 0"),
        ("tcp_port = 1000\ntcp_port = 1001\n", 2, "already set on line 1"),
        ("gossip_interval = 0.01\n", 1, "gossip_interval 0.01 is out of range (0.05 to 60)"),
        ("gossip_interval = fast\n", 1, "gossip_interval must be a number"),
        ("dead_after = -1\n", 1, "dead_after -1 is out of range"),
        ("gossip_fanout = 0\n", 1, "gossip_fanout 0 is out of range (1 to 16)"),
        ("gossip_fanout = 17\n", 1, "out of range (1 to 16)"),
        ("max_datagram = 100\n", 1, "max_datagram 100 is out of range (512 to 65000)"),
        ("resources = cloud\n", 1, "resources must be one of host, virtual"),
        ("virtual_cpus = 0\n", 1, "virtual_cpus 0 is out of range"),
        ("log_level = loud\n", 1, "log_level must be one of debug, info"),
        ("disabled_plugins = a b\n", 1, "'a b' is not a plugin name"),
        ("disabled_plugins = a,,b\n", 1, "'' is not a plugin name"),
        ("tcp_port = 252\n", 1, "tcp_port and tcp_aux_port must differ"),
        ("udp_aux_port = 300\n# x\nudp_port = 300\n", 3, "udp_port and udp_aux_port must differ"),
        ("dead_after = 1\n", 1, "dead_after (1 s) must be longer than gossip_interval (1 s)"),
        ("dead_after = 2\ngossip_interval = 5\n", 2, "must be longer than gossip_interval"),
    ],
)
def test_bad_lines(text, line, words):
    err = error(text)
    assert err.line == line
    assert words in err.reason


def test_dead_after_zero_means_automatic():
    assert DaemonSettings.parse("dead_after = 0.0\n", SRC).dead_after == 0.0


def test_from_file(tmp_path):
    path = tmp_path / "mosd.conf"
    path.write_text("udp_port = 1253\n")
    assert DaemonSettings.from_file(path).udp_port == 1253
