"""userview.map: node numbers for addresses."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address as IP

import pytest

from mosix_core.config.userview import UserView, UserViewRange
from mosix_core.errors import ConfigError

SRC = "/etc/mosix/userview.map"


def fake_resolve(name: str) -> str:
    if name == "localhost":
        return "127.0.0.1"
    raise socket.gaierror(-2, "Name or service not known")


def parse(text: str) -> UserView:
    return UserView.parse(text, SRC, resolve=fake_resolve)


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.path == SRC
    return info.value


def test_numbering():
    view = parse("# our cluster\n1 10.0.0.1 3\n10 192.168.0.250 8\n100 localhost\n")
    assert view.ranges[0] == UserViewRange(number=1, first=IP("10.0.0.1"), count=3, line=2)
    assert view.ranges[2] == UserViewRange(number=100, first=IP("127.0.0.1"), count=1, line=4)
    assert view.number_of(IP("10.0.0.1")) == 1
    assert view.number_of(IP("10.0.0.3")) == 3
    assert view.number_of(IP("10.0.0.4")) is None
    assert view.number_of(IP("192.168.1.1")) == 17  # across the .255 boundary
    assert view.number_of("127.0.0.1") == 100
    assert view.number_of("garbage") is None
    assert view.address_of(2) == IP("10.0.0.2")
    assert view.address_of(17) == IP("192.168.1.1")
    assert view.address_of(4) is None
    assert view.address_of(0) is None
    assert view.address_of(True) is None  # type: ignore[arg-type]
    numbered = view.numbered()
    assert numbered[:3] == [(1, IP("10.0.0.1")), (2, IP("10.0.0.2")), (3, IP("10.0.0.3"))]
    assert [n for n, _ in numbered] == sorted(n for n, _ in numbered)
    assert len(numbered) == 12


def test_numbered_is_sorted_even_when_the_file_is_not():
    view = parse("50 10.0.1.1 2\n1 10.0.0.1 1\n")
    assert view.numbered() == [(1, IP("10.0.0.1")), (50, IP("10.0.1.1")), (51, IP("10.0.1.2"))]


def test_last_number_may_be_65535():
    view = parse("65530 10.0.0.1 6\n")
    assert view.address_of(65535) == IP("10.0.0.6")


def test_empty_file_is_an_empty_view():
    assert parse("# nobody\n").ranges == ()


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("0 10.0.0.1 1\n", 1, "node number 0 is out of range"),
        ("65536 10.0.0.1 1\n", 1, "out of range"),
        ("65530 10.0.0.1 7\n", 1, "last node number would be 65536"),
        ("x 10.0.0.1 1\n", 1, "node number must be an integer"),
        ("1 10.0.0.1 0\n", 1, "number of nodes 0 is out of range"),
        ("1\n", 1, "not 1 fields"),
        ("1 10.0.0.1 2 4\n", 1, "not 4 fields"),
        ("1 0.0.0.1 2\n", 1, "0.0.x.x"),
        ("1 255.255.254.255 2\n", 1, "255.255.255.x"),
        ("1 nowhere 2\n", 1, "cannot resolve host name 'nowhere'"),
        ("1 10.0.0.1 5\n# gap\n3 10.1.0.1 1\n", 3, "overlap those of line 1"),
        ("1 10.0.0.1 5\n10 10.0.0.5 1\n", 2, "already numbered on line 1"),
    ],
)
def test_bad_lines(text, line, words):
    err = error(text)
    assert err.line == line
    assert words in err.reason


def test_from_file(tmp_path):
    path = tmp_path / "userview.map"
    path.write_text("1 10.0.0.1 2\n")
    view = UserView.from_file(path)
    assert view.source == str(path) and view.address_of(2) == IP("10.0.0.2")
