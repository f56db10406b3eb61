"""partners/*: the other clusters of the multi-cluster."""

from __future__ import annotations

import os
import socket
from ipaddress import IPv4Address as IP

import pytest

from mosix_core.config.partners import Partner, PartnerRange, load_partners
from mosix_core.errors import ConfigError

SRC = "/etc/mosix/partners/chemistry"


def fake_resolve(name: str) -> str:
    if name == "localhost":
        return "127.0.0.1"
    raise socket.gaierror(-2, "Name or service not known")


def parse(text: str, name: str = "chemistry") -> Partner:
    return Partner.parse(name, text, SRC, resolve=fake_resolve)


def error(text: str, name: str = "chemistry") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, name)
    assert info.value.path == SRC
    return info.value


GOOD = """The chemistry department # not a comment on line 1
50 1 0
# their two racks
10.5.0.1 16 1 1 1
10.6.0.1 4 1 1 0   # across the campus
localhost 1 1 1 0
"""


def test_partner_file():
    partner = parse(GOOD)
    assert partner.name == "chemistry"
    assert partner.description == "The chemistry department # not a comment on line 1"
    assert (partner.priority, partner.cango, partner.cantake) == (50, True, False)
    assert partner.ranges == (
        PartnerRange(first=IP("10.5.0.1"), count=16, proximate=True, line=4),
        PartnerRange(first=IP("10.6.0.1"), count=4, proximate=False, line=5),
        PartnerRange(first=IP("127.0.0.1"), count=1, proximate=False, line=6),
    )
    assert IP("10.5.0.16") in partner
    assert IP("10.5.0.17") not in partner
    assert "10.6.0.4" in partner
    assert partner.range_of(IP("10.6.0.2")).line == 5
    assert len(partner.nodes()) == 21


def test_obsolete_fields_are_tolerated():
    partner = parse("x\n0 0 1\n10.0.0.1 2 0 7 0\n")
    assert partner.priority == 0 and not partner.cango and partner.cantake


def test_partner_without_nodes():
    assert parse("just a name\n65535 0 0\n").ranges == ()


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("", 1, "line 1 must describe"),
        ("   \n50 1 1\n", 1, "line 1 must describe"),
        ("desc\n", None, "missing line 2"),
        ("desc\n# only comments\n", None, "missing line 2"),
        ("desc\n50 1\n", 2, "'priority cango cantake'"),
        ("desc\n\n50 1 1 1\n", 3, "'priority cango cantake'"),
        ("desc\n65536 1 1\n", 2, "priority 65536 is out of range"),
        ("desc\n-1 1 1\n", 2, "priority -1 is out of range"),
        ("desc\n50 2 1\n", 2, "cango 2 is out of range"),
        ("desc\n50 1 yes\n", 2, "cantake must be an integer"),
        ("desc\n50 1 1\n10.0.0.1 4\n", 3, "5 fields"),
        ("desc\n50 1 1\n10.0.0.1 4 1 1 2\n", 3, "proximate (field 5) 2 is out of range"),
        ("desc\n50 1 1\n10.0.0.1 4 1 x 1\n", 3, "field 4"),
        ("desc\n50 1 1\n10.0.0.1 0 1 1 1\n", 3, "number of nodes 0"),
        ("desc\n50 1 1\n0.0.9.9 4 1 1 1\n", 3, "0.0.x.x"),
        ("desc\n50 1 1\n255.255.254.254 4 1 1 1\n", 3, "255.255.255.x"),
        ("desc\n50 1 1\nnowhere 4 1 1 1\n", 3, "cannot resolve host name 'nowhere'"),
        ("desc\n50 1 1\n10.0.0.1 4 1 1 1\n10.0.0.4 4 1 1 1\n", 4, "overlap the range on line 3"),
    ],
)
def test_bad_partner_files(text, line, words):
    err = error(text)
    assert err.line == line
    assert words in err.reason


def test_bad_names():
    assert "1 to 128" in error("d\n1 1 1\n", name="x" * 129).reason
    assert "1 to 128" in error("d\n1 1 1\n", name="").reason
    assert "space" in error("d\n1 1 1\n", name="two words").reason
    assert parse("d\n1 1 1\n", name="y" * 128).name == "y" * 128


def test_load_partners(tmp_path):
    directory = tmp_path / "partners"
    assert load_partners(directory) == ()
    directory.mkdir()
    assert load_partners(directory) == ()
    (directory / "sales").write_text("Sales\n10 1 1\n10.9.0.1 2 1 1 0\n")
    (directory / "geography").write_text("Geography\n20 1 1\n10.8.0.1 2 1 1 1\n")
    (directory / "geography~").write_text("backup: ignored\n")
    (directory / ".hidden").write_text("ignored\n")
    (directory / "lab.sample").write_text("ignored\n")
    (directory / "subdir").mkdir()
    partners = load_partners(directory)
    assert [p.name for p in partners] == ["geography", "sales"]
    assert partners[0].source == str(directory / "geography")
    assert partners[0].ranges[0].proximate


def test_load_partners_reports_the_bad_file(tmp_path):
    (tmp_path / "good").write_text("Good\n10 1 1\n")
    (tmp_path / "bad").write_text("Bad\n10 1 1\n10.0.0.1 two 1 1 0\n")
    with pytest.raises(ConfigError) as info:
        load_partners(tmp_path)
    assert info.value.path == str(tmp_path / "bad") and info.value.line == 3


def test_partners_must_not_overlap_each_other(tmp_path):
    (tmp_path / "a").write_text("A\n10 1 1\n10.0.0.1 8 1 1 0\n")
    (tmp_path / "b").write_text("B\n10 1 1\n# c\n10.0.0.8 2 1 1 0\n")
    with pytest.raises(ConfigError) as info:
        load_partners(tmp_path)
    assert info.value.path == str(tmp_path / "b") and info.value.line == 4
    assert "also listed by partner 'a'" in info.value.reason


def test_partners_path_that_is_a_file(tmp_path):
    (tmp_path / "partners").write_text("")
    with pytest.raises(ConfigError) as info:
        load_partners(tmp_path / "partners")
    assert "not a directory" in info.value.reason


def test_from_file_uses_the_file_name(tmp_path):
    path = tmp_path / "students-lab-A"
    path.write_bytes(b"Lab\n5 1 1\n")
    assert Partner.from_file(path).name == "students-lab-A"
    path.write_bytes(b"Lab\n5 1 1\n\x80\n")
    with pytest.raises(ConfigError) as info:
        Partner.from_file(path)
    assert info.value.line == 3


def test_a_fifo_among_the_partners_is_refused_not_read(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as info:
        load_partners(tmp_path)
    assert "not a regular file" in info.value.reason
