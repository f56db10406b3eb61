"""mosix.map: data lines, aliases, the address rules of mosix(7), and lookups."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address as IP

import pytest

from mosix_core.config.mosixmap import MAX_LINES, ClusterMap, NodeRange
from mosix_core.errors import ConfigError

SRC = "/etc/mosix/mosix.map"


def fake_resolve(name: str) -> str:
    table = {"localhost": "127.0.0.1", "node7": "10.0.0.7", "zero": "0.0.3.4"}
    if name not in table:
        raise socket.gaierror(-2, "Name or service not known")
    return table[name]


def parse(text: str) -> ClusterMap:
    return ClusterMap.parse(text, SRC, resolve=fake_resolve)


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.path == SRC
    return info.value


def test_data_lines_comments_and_blank_lines():
    cmap = parse("# the cluster\n\n10.0.0.1 3\n  192.168.1.10 2 p   # fast rack\n")
    assert cmap.ranges == (
        NodeRange(first=IP("10.0.0.1"), count=3, proximate=False, line=3),
        NodeRange(first=IP("192.168.1.10"), count=2, proximate=True, line=4),
    )
    assert cmap.source == SRC
    assert len(cmap) == 5
    assert cmap.nodes() == [IP("10.0.0.1"), IP("10.0.0.2"), IP("10.0.0.3"), IP("192.168.1.10"), IP("192.168.1.11")]


def test_lookups():
    cmap = parse("10.0.0.1 3\n192.168.1.10 2 p\n")
    assert cmap.contains(IP("10.0.0.3"))
    assert not cmap.contains(IP("10.0.0.4"))
    assert not cmap.contains(IP("10.0.0.0"))
    assert IP("192.168.1.11") in cmap
    assert cmap.contains("10.0.0.2")  # text is accepted
    assert not cmap.contains("not an address")
    assert cmap.is_proximate(IP("192.168.1.10"))
    assert not cmap.is_proximate(IP("10.0.0.1"))
    assert not cmap.is_proximate(IP("8.8.8.8"))
    assert cmap.canonical(IP("10.0.0.2")) == IP("10.0.0.2")
    assert cmap.canonical(IP("10.0.0.9")) is None
    assert cmap.range_of(IP("10.0.0.2")).line == 1


def test_node_range_contains_and_addresses():
    node_range = NodeRange(first=IP("10.0.0.254"), count=3, proximate=False, line=1)
    assert node_range.addresses() == [IP("10.0.0.254"), IP("10.0.0.255"), IP("10.0.1.0")]
    assert IP("10.0.1.0") in node_range
    assert IP("10.0.1.1") not in node_range
    assert IP("10.0.0.253") not in node_range
    assert node_range.last == IP("10.0.1.0")


def test_carriage_returns_are_ignored():
    assert len(parse("10.0.0.1 2\r\n10.0.1.1 1 p\r\n")) == 3


def test_hash_inside_a_token_is_not_a_comment():
    err = error("10.0.0.1 2#x\n")
    assert err.line == 1 and "number of nodes" in err.reason


def test_host_names_are_resolved():
    cmap = parse("localhost 2\nnode7 1 p\n")
    assert cmap.ranges[0].first == IP("127.0.0.1")
    assert cmap.ranges[0].host == "localhost"
    assert cmap.ranges[1].host == "node7"
    assert cmap.contains(IP("10.0.0.7"))


def test_host_name_with_the_real_resolver():
    cmap = ClusterMap.parse("localhost 1\n", SRC)
    assert cmap.ranges[0].first == IP(socket.gethostbyname("localhost"))


def test_unresolvable_host_name():
    err = error("10.0.0.1 1\nnowhere 2\n")
    assert err.line == 2
    assert "cannot resolve host name 'nowhere'" in err.reason
    assert str(err).startswith(f"{SRC}:2: ")


def test_host_name_resolving_to_a_forbidden_address():
    err = error("zero 1\n")
    assert err.line == 1 and "0.0.x.x" in err.reason and "zero" in err.reason


def test_resolver_exceptions_of_any_kind_are_config_errors():
    def broken(name: str) -> str:
        raise UnicodeError("label too long")

    with pytest.raises(ConfigError) as info:
        ClusterMap.parse("somehost 1\n", SRC, resolve=broken)
    assert info.value.line == 1


def test_digits_and_dots_are_never_sent_to_the_resolver():
    def refuse(name: str) -> str:
        raise AssertionError("resolver called")

    with pytest.raises(ConfigError) as info:
        ClusterMap.parse("10.1 1\n", SRC, resolve=refuse)
    assert "not an IP address" in info.value.reason


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("0.0.1.1 1\n", 1, "0.0.x.x"),
        ("10.0.0.1 1\n0.0.0.0 1\n", 2, "0.0.x.x"),
        ("255.255.255.1 1\n", 1, "255.255.255.x"),
        ("255.255.254.250 7\n", 1, "255.255.255.x"),
        ("255.255.254.255 2\n", 1, "255.255.255.x"),
        ("200.0.0.0 1000000000\n", 1, "number of nodes"),
        ("10.0.0.1 0\n", 1, "out of range"),
        ("10.0.0.1 -3\n", 1, "out of range"),
        ("10.0.0.1 three\n", 1, "must be an integer"),
        ("10.0.0.1 1_0\n", 1, "must be an integer"),
        ("10.0.0.1 ٣\n", 1, "must be an integer"),
        ("10.0.0.1 " + "9" * 5000 + "\n", 1, "out of range"),
        ("10.0.0.1\n", 1, "2 or 3 fields"),
        ("10.0.0.1 2 p x\n", 1, "2 or 3 fields"),
        ("10.0.0.1 2 q\n", 1, "only be 'p'"),
        ("10.0.0.1 2 P\n", 1, "only be 'p'"),
        ("10.0.0.256 1\n", 1, "not an IP address"),
        ("010.0.0.1 1\n", 1, "not an IP address"),
        ("bad_host! 1\n", 1, "neither an IP address"),
        ("\n\n10.0.0.1 4\n10.0.0.3 1\n", 4, "overlap the range on line 3"),
        ("10.0.0.3 1\n10.0.0.1 4\n", 2, "overlap the range on line 1"),
    ],
)
def test_bad_data_lines(text, line, words):
    err = error(text)
    assert err.line == line
    assert words in err.reason


def test_the_largest_allowed_range_is_accepted():
    cmap = parse("255.255.254.250 6\n0.1.0.0 1\n")
    assert len(cmap) == 7


def test_range_past_the_last_address():
    err = error("255.255.254.255 3\n")
    assert "255.255.255.x" in err.reason
    err = error("255.255.254.0 16777216\n")
    assert err.line == 1


def test_huge_count_is_not_expanded_while_parsing():
    cmap = parse("1.0.0.0 16000000\n")
    assert len(cmap) == 16_000_000
    assert cmap.contains(IP("1.244.35.255"))


def test_too_many_nodes_in_all():
    err = error("1.0.0.0 16000000\n100.0.0.0 16000000\n")
    assert err.line == 2 and "too many nodes" in err.reason


def test_empty_map_is_an_error():
    err = error("# nothing\n\n")
    assert err.line is None and "no data lines" in err.reason


def test_256_lines_allowed_257_not():
    lines = [f"10.0.{i}.1 1" for i in range(255)] + ["1.2.3.4=10.0.0.1"]
    assert len(parse("\n".join(lines))) == 255
    err = error("\n".join(lines + ["10.9.9.9 1"]))
    assert err.line == MAX_LINES + 1 and "more than 256" in err.reason


def test_aliases():
    cmap = parse("10.0.0.1 4 p\n192.168.5.2=10.0.0.2\n172.16.0.1 = node7\n10.9.9.9=130.1.2.3\n")
    assert [a.alias for a in cmap.aliases] == [IP("192.168.5.2"), IP("172.16.0.1"), IP("10.9.9.9")]
    assert cmap.aliases[1].host == "node7" and cmap.aliases[1].line == 3
    assert cmap.canonical(IP("192.168.5.2")) == IP("10.0.0.2")
    # The right-hand side may be a node of another cluster.
    assert cmap.canonical(IP("10.9.9.9")) == IP("130.1.2.3")
    assert cmap.canonical("172.16.0.1") == IP("10.0.0.7")
    assert cmap.is_proximate(IP("192.168.5.2"))
    # Aliases are not nodes.
    assert not cmap.contains(IP("192.168.5.2"))
    assert len(cmap) == 4 and IP("192.168.5.2") not in cmap.nodes()


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("10.0.0.1 4\n1.2.3.4=\n", 2, "alias line must be"),
        ("10.0.0.1 4\n=1.2.3.4\n", 2, "alias line must be"),
        ("10.0.0.1 4\n1.2.3.4=5.6.7.8=9.9.9.9\n", 2, "alias line must be"),
        ("10.0.0.1 4\n1.2.3.4 5=10.0.0.1\n", 2, "alias line must be"),
        ("10.0.0.1 4\nlocalhost=10.0.0.1\n", 2, "not an IP address"),
        ("10.0.0.1 4\n1.2.3.4=nowhere\n", 2, "cannot resolve"),
        ("10.0.0.1 4\n0.0.3.4=10.0.0.1\n", 2, "0.0.x.x"),
        ("10.0.0.1 4\n1.2.3.4=255.255.255.0\n", 2, "255.255.255.x"),
        ("10.0.0.1 4\n1.2.3.4=1.2.3.4\n", 2, "refers to itself"),
        ("10.0.0.1 4\n10.0.0.3=1.2.3.4\n", 2, "itself a node of the map (line 1)"),
        ("10.0.0.1 4\n1.2.3.4=10.0.0.1\n1.2.3.4=10.0.0.2\n", 3, "already defined on line 2"),
        ("10.0.0.1 4\n1.2.3.4=5.6.7.8\n5.6.7.8=10.0.0.1\n", 2, "itself an alias (line 3)"),
    ],
)
def test_bad_aliases(text, line, words):
    err = error(text)
    assert err.line == line
    assert words in err.reason


def test_nodes_of_a_directly_built_map_are_unique():
    ranges = (
        NodeRange(first=IP("10.0.0.1"), count=3, proximate=False, line=1),
        NodeRange(first=IP("10.0.0.2"), count=3, proximate=False, line=2),
    )
    cmap = ClusterMap(ranges=ranges, aliases=(), source="built")
    assert cmap.nodes() == [IP(f"10.0.0.{i}") for i in range(1, 5)]
    assert len(cmap) == 4


def test_from_file(tmp_path):
    path = tmp_path / "mosix.map"
    path.write_text("10.0.0.1 2\n")
    cmap = ClusterMap.from_file(path)
    assert cmap.source == str(path) and len(cmap) == 2
    path.write_text("10.0.0.1 2\nrubbish\n")
    with pytest.raises(ConfigError) as info:
        ClusterMap.from_file(path)
    assert info.value.path == str(path) and info.value.line == 2


def test_from_file_missing_and_undecodable(tmp_path):
    with pytest.raises(ConfigError) as info:
        ClusterMap.from_file(tmp_path / "mosix.map")
    assert "not found" in info.value.reason
    path = tmp_path / "mosix.map"
    path.write_bytes(b"10.0.0.1 2\n\xff\xfe 1\n")
    with pytest.raises(ConfigError) as info:
        ClusterMap.from_file(path)
    assert info.value.line == 2 and "UTF-8" in info.value.reason


def test_records_are_frozen_and_comparable():
    first = parse("10.0.0.1 2\n")
    second = parse("10.0.0.1 2\n")
    assert first == second and hash(first) == hash(second)
    with pytest.raises(AttributeError):
        first.source = "x"  # type: ignore[misc]
