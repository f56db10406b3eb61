"""The one-value files (speed, mosip, retainpri, maxguests), the secret, and our address."""

from __future__ import annotations

import os
from ipaddress import IPv4Address as IP

import pytest

from mosix_core.config.interfaces import interface_addresses
from mosix_core.config.mosixmap import ClusterMap
from mosix_core.config.scalars import (
    MaxGuests,
    detect_our_ip,
    load_secret,
    parse_maxguests,
    parse_mosip,
    parse_retainpri,
    parse_speed,
)
from mosix_core.errors import ConfigError

SRC = "/etc/mosix/value"


def error(parser, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parser(text, SRC)
    assert info.value.path == SRC
    return info.value


def test_speed():
    assert parse_speed("10000\n", SRC) == 10000
    assert parse_speed("# the usual processor\n\n  25000  \n", SRC) == 25000
    assert parse_speed("1", SRC) == 1
    assert parse_speed("10000000", SRC) == 10_000_000


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("0\n", 1, "out of range"),
        ("10000001\n", 1, "out of range"),
        ("-5\n", 1, "out of range"),
        ("fast\n", 1, "must be an integer"),
        ("1e4\n", 1, "must be an integer"),
        ("10000 20000\n", 1, "2 fields"),
        ("# comment\n10000\n20000\n", 3, "only one line"),
        ("", None, "empty"),
        ("# only a comment\n", None, "empty"),
    ],
)
def test_bad_speed(text, line, words):
    err = error(parse_speed, text)
    assert err.line == line and words in err.reason


def test_mosip():
    assert parse_mosip("# ours\n10.0.0.5\n", SRC) == IP("10.0.0.5")


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("0.0.1.2\n", 1, "0.0.x.x"),
        ("255.255.255.7\n", 1, "255.255.255.x"),
        ("localhost\n", 1, "not an IP address"),
        ("10.0.0\n", 1, "not an IP address"),
        ("\n\n1.2.3.4 5.6.7.8\n", 3, "2 fields"),
        ("", None, "empty"),
    ],
)
def test_bad_mosip(text, line, words):
    err = error(parse_mosip, text)
    assert err.line == line and words in err.reason


def test_retainpri():
    assert parse_retainpri("0\n", SRC) == 0
    assert parse_retainpri("# delay\n30", SRC) == 30
    err = error(parse_retainpri, "-1\n")
    assert err.line == 1 and "out of range" in err.reason
    err = error(parse_retainpri, "1.5\n")
    assert err.line == 1 and "integer" in err.reason


def test_maxguests():
    assert parse_maxguests("8\n", SRC) == MaxGuests(limit=8, saved=None)
    assert parse_maxguests("0 16\n", SRC) == MaxGuests(limit=0, saved=16)
    assert MaxGuests(limit=0, saved=16).render() == "0 16\n"
    assert parse_maxguests(MaxGuests(limit=5).render(), SRC) == MaxGuests(limit=5)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("-1\n", 1, "out of range"),
        ("8 x\n", 1, "saved maximum"),
        ("8 16 32\n", 1, "3 fields"),
        ("many\n", 1, "must be an integer"),
        ("", None, "empty"),
    ],
)
def test_bad_maxguests(text, line, words):
    err = error(parse_maxguests, text)
    assert err.line == line and words in err.reason


# --- secret -------------------------------------------------------------------


def write_secret(tmp_path, content: bytes, mode: int):
    path = tmp_path / "secret"
    path.write_bytes(content)
    os.chmod(path, mode)
    return path


def test_secret_root_only_is_read(tmp_path):
    write_secret(tmp_path, b"s3cret pass  \n", 0o600)
    assert load_secret(tmp_path) == b"s3cret pass"
    write_secret(tmp_path, b"other\r\n\n", 0o400)
    assert load_secret(tmp_path) == b"other"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o610, 0o601])
def test_secret_readable_by_others_is_refused(tmp_path, mode):
    path = write_secret(tmp_path, b"s3cret\n", mode)
    with pytest.raises(ConfigError) as info:
        load_secret(tmp_path)
    assert info.value.path == str(path)
    assert "root only (chmod 600)" in info.value.reason


def test_secret_missing_empty_multiline_or_not_a_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_secret(tmp_path)
    assert "not found" in info.value.reason
    write_secret(tmp_path, b"\n", 0o600)
    with pytest.raises(ConfigError) as info:
        load_secret(tmp_path)
    assert info.value.line == 1 and "empty" in info.value.reason
    write_secret(tmp_path, b"one\ntwo\n", 0o600)
    with pytest.raises(ConfigError) as info:
        load_secret(tmp_path)
    assert info.value.line == 2 and "single line" in info.value.reason
    (tmp_path / "secret").unlink()
    (tmp_path / "secret").mkdir(mode=0o700)
    with pytest.raises(ConfigError) as info:
        load_secret(tmp_path)
    assert "not a regular file" in info.value.reason


# --- our address --------------------------------------------------------------

CLUSTER = ClusterMap.parse("127.0.0.1 4\n10.0.0.1 8\n", "/etc/mosix/mosix.map")


def test_override_beats_mosip_beats_interfaces():
    assert detect_our_ip(CLUSTER, IP("10.0.0.3"), "127.0.0.2", interfaces=[]) == IP("127.0.0.2")
    assert detect_our_ip(CLUSTER, IP("10.0.0.3"), None, interfaces=[IP("127.0.0.1")]) == IP("10.0.0.3")
    assert detect_our_ip(CLUSTER, None, None, interfaces=[IP("192.0.2.1"), IP("10.0.0.4")]) == IP("10.0.0.4")


def test_automatic_detection_on_this_machine():
    # 127.0.0.1 is on lo here, and nothing else of the map is.
    assert IP("127.0.0.1") in interface_addresses()
    assert detect_our_ip(CLUSTER, None) == IP("127.0.0.1")


def test_no_interface_address_in_the_map():
    with pytest.raises(ConfigError) as info:
        detect_our_ip(CLUSTER, None, interfaces=[IP("192.0.2.1")])
    assert info.value.path == "/etc/mosix/mosip"
    assert "not in the map" in info.value.reason and "create mosip" in info.value.reason
    assert "192.0.2.1" in info.value.reason


def test_ambiguous_interface_addresses():
    with pytest.raises(ConfigError) as info:
        detect_our_ip(
            CLUSTER, None, interfaces=[IP("127.0.0.1"), IP("127.0.0.2"), IP("127.0.0.1")], mosip_path="/tmp/etc/mosip"
        )
    assert info.value.path == "/tmp/etc/mosip"
    assert "ambiguous" in info.value.reason and "create mosip" in info.value.reason


def test_chosen_address_must_be_in_the_map():
    with pytest.raises(ConfigError) as info:
        detect_our_ip(CLUSTER, IP("192.0.2.9"))
    assert info.value.path == CLUSTER.source
    assert "our address 192.0.2.9 is not in mosix.map" in info.value.reason
    with pytest.raises(ConfigError) as info:
        detect_our_ip(CLUSTER, None, "10.0.0.200")
    assert "not in mosix.map" in info.value.reason


def test_bad_override():
    with pytest.raises(ConfigError) as info:
        detect_our_ip(CLUSTER, None, "not-an-ip")
    assert info.value.path == "mossetpe -p" and "not an IP address" in info.value.reason
    with pytest.raises(ConfigError):
        detect_our_ip(CLUSTER, None, "0.0.0.1")
