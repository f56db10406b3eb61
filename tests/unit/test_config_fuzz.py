"""No file content may make a parser raise anything but ConfigError."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address as IP

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosix_core.config import (
    ClusterMap,
    DaemonSettings,
    FreezeConfig,
    Partner,
    PrivateConfig,
    UserView,
    parse_freeze_dirs_file,
    parse_maxguests,
    parse_mosip,
    parse_retainpri,
    parse_speed,
)
from mosix_core.config.addresses import HIGHEST, LOWEST
from mosix_core.config.daemon import _PARSERS
from mosix_core.errors import ConfigError

SRC = "/etc/mosix/fuzzed"
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fake_resolve(name: str) -> str:
    # Deterministic answers of every kind a real resolver gives, without DNS.
    choice = sum(map(ord, name)) % 5
    if name == "localhost" or choice == 0:
        return "127.0.0.1"
    if choice == 1:
        return "0.0.0.7"
    if choice == 2:
        raise socket.gaierror(-2, "Name or service not known")
    if choice == 3:
        raise UnicodeError("label empty or too long")
    return "255.255.255.255"


PARSERS = {
    "mosix.map": lambda text: ClusterMap.parse(text, SRC, resolve=fake_resolve),
    "userview.map": lambda text: UserView.parse(text, SRC, resolve=fake_resolve),
    "speed": lambda text: parse_speed(text, SRC),
    "mosip": lambda text: parse_mosip(text, SRC),
    "retainpri": lambda text: parse_retainpri(text, SRC),
    "maxguests": lambda text: parse_maxguests(text, SRC),
    "freeze.conf": lambda text: FreezeConfig.parse(text, SRC),
    ".freeze_dirs": lambda text: parse_freeze_dirs_file(text, SRC),
    "partner": lambda text: Partner.parse("partner", text, SRC, resolve=fake_resolve),
    "private.conf": lambda text: PrivateConfig.parse(text, SRC),
    "mosd.conf": lambda text: DaemonSettings.parse(text, SRC),
}

FROM_FILE = {
    "mosix.map": lambda path: ClusterMap.from_file(path, resolve=fake_resolve),
    "userview.map": lambda path: UserView.from_file(path, resolve=fake_resolve),
    "freeze.conf": FreezeConfig.from_file,
    "partner": lambda path: Partner.from_file(path, resolve=fake_resolve),
    "private.conf": PrivateConfig.from_file,
    "mosd.conf": DaemonSettings.from_file,
}

EDGE_ADDRESSES = [
    "0.0.0.0",
    "0.0.255.255",
    "0.1.0.0",
    "255.255.254.255",
    "255.255.255.0",
    "255.255.255.255",
    "10.0.0.1",
    "10.0.0.256",
    "1.2.3",
    "01.2.3.4",
    "1.2.3.4.5",
    "127.0.0.1",
]
WORDS = [
    "p",
    "P",
    "=",
    "#",
    "/",
    "/tmp",
    "/freeze",
    "U",
    "O",
    "C",
    "G",
    "OCG",
    "OO",
    "1",
    "0",
    "-1",
    "-0",
    "1.5",
    ".5",
    "1e3",
    "nan",
    "inf",
    "1_000",
    "٣",
    "localhost",
    "host-x",
    "a_b",
    "x..y",
    "-",
    "",
    "\x00",
    "\t",
    "\u00a0",
    "\u2028",
    "\x0c",
    "\r",
    "é",
    "😀",
    ",",
    "a,b",
    "host",
    "virtual",
    "debug",
    *list(_PARSERS),
]
tokens = st.one_of(
    st.sampled_from(WORDS),
    st.sampled_from(EDGE_ADDRESSES),
    st.ip_addresses(v=4).map(str),
    st.integers(min_value=-5, max_value=2**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.text(max_size=6),
)
SEPARATORS = st.sampled_from([" ", "\t", "", "=", " = ", "  "])
lines = st.builds(lambda sep, words: sep.join(words), SEPARATORS, st.lists(tokens, max_size=11))
structured = st.builds(
    lambda newline, body: newline.join(body), st.sampled_from(["\n", "\r\n", "\n\n"]), st.lists(lines, max_size=14)
)
garbage = st.one_of(st.text(), structured)


def parses_or_config_error(parse, text) -> None:
    try:
        parse(text)
    except ConfigError as err:
        assert err.path  # always names the file
        assert err.line is None or err.line >= 1
        assert str(err).startswith(err.path)


# Each example goes through every parser: generating text costs far more than parsing it.
@FUZZ
@given(text=garbage)
def test_any_text(text):
    for parse in PARSERS.values():
        parses_or_config_error(parse, text)


@FUZZ
@given(data=st.one_of(st.binary(max_size=200), structured.map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_any_bytes_from_file(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "fuzzed"
    path.write_bytes(data)
    for load in FROM_FILE.values():
        parses_or_config_error(load, path)


@pytest.mark.parametrize("name", sorted(FROM_FILE))
def test_invalid_utf8_file(tmp_path, name):
    path = tmp_path / "file"
    path.write_bytes(b"\xff\xfe\xfd\n\xc3\x28\n")
    with pytest.raises(ConfigError) as info:
        FROM_FILE[name](path)
    assert info.value.path == str(path) and info.value.line == 1 and "UTF-8" in info.value.reason


# A valid map, written out, must mean exactly what was generated.
@st.composite
def valid_maps(draw):
    count = draw(st.integers(min_value=1, max_value=12))
    starts = sorted(
        draw(st.sets(st.integers(min_value=int(LOWEST), max_value=int(HIGHEST)), min_size=count, max_size=count))
    )
    ranges = []
    for index, start in enumerate(starts):
        limit = (starts[index + 1] if index + 1 < len(starts) else int(HIGHEST) + 1) - start
        size = draw(st.integers(min_value=1, max_value=min(limit, 300)))
        ranges.append((IP(start), size, draw(st.booleans())))
    order = draw(st.permutations(ranges))
    return list(order)


@FUZZ
@given(valid_maps())
def test_valid_maps_round_trip(ranges):
    text = "\n".join(f"{first} {size}{' p' if near else ''}  # range" for first, size, near in ranges)
    cmap = ClusterMap.parse(text, SRC)
    assert [(r.first, r.count, r.proximate) for r in cmap.ranges] == ranges
    assert len(cmap) == sum(size for _, size, _ in ranges)
    for first, size, near in ranges:
        last = first + (size - 1)
        assert cmap.contains(first) and cmap.contains(last)
        assert cmap.is_proximate(last) == near
        if int(first) > int(LOWEST) and not any(int(f) <= int(first) - 1 < int(f) + s for f, s, _ in ranges):
            assert cmap.canonical(first - 1) is None


@FUZZ
@given(st.lists(st.tuples(st.integers(1, 65535), st.integers(1, 50)), min_size=1, max_size=8))
def test_userview_numbers_and_addresses_agree(spans):
    text = "\n".join(f"{number} 10.{index}.0.1 {count}" for index, (number, count) in enumerate(spans))
    try:
        view = UserView.parse(text, SRC)
    except ConfigError:
        return  # overlapping numbers or a last number beyond 65535
    for number, address in view.numbered():
        assert view.number_of(address) == number
        assert view.address_of(number) == address
