"""load_config: the whole directory, its defaults, and the shipped sample tree."""

from __future__ import annotations

import re
import shutil
import socket
from ipaddress import IPv4Address as IP
from pathlib import Path

import pytest

from mosix_core.config import (
    DaemonSettings,
    FreezeConfig,
    MaxGuests,
    MosixConfig,
    Partner,
    PrivateConfig,
    load_config,
    load_secret,
    parse_maxguests,
    parse_mosip,
)
from mosix_core.errors import ConfigError, NotInMap

SAMPLE = Path(__file__).resolve().parents[2] / "etc" / "mosix"


def fake_resolve(name: str) -> str:
    table = {"localhost": "127.0.0.1", "chem1": "10.5.0.2", "stranger": "8.8.8.8"}
    if name not in table:
        raise socket.gaierror(-2, "Name or service not known")
    return table[name]


def make_etc(tmp_path: Path, files: dict[str, str]) -> Path:
    etc = tmp_path / "mosix"
    etc.mkdir()
    for name, text in files.items():
        path = etc / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return etc


# --- the sample tree -----------------------------------------------------------


def test_sample_tree_loads():
    config = load_config(SAMPLE)
    assert isinstance(config, MosixConfig)
    assert config.etc == SAMPLE
    assert config.cluster.nodes() == [IP(f"127.0.0.{i}") for i in range(1, 5)]
    assert config.node_number(IP("127.0.0.3")) == 3
    assert config.speed == 10000
    assert config.mosip is None and config.maxguests is None and not config.log_mosrun
    assert config.retainpri == 0
    assert config.freeze == FreezeConfig.default()
    assert config.private.present and config.private.dir_for("G").path == "/private"
    assert config.partners == ()  # the example partner is a .sample
    assert config.daemon == DaemonSettings.default()
    assert (SAMPLE / "var").is_dir() and (SAMPLE / "partners").is_dir()


def test_sample_mosd_conf_documents_every_key_with_its_default():
    text = (SAMPLE / "mosd.conf").read_text()
    uncommented = re.sub(r"(?m)^# ([a-z_]+ = )", r"\1", text)
    documented = {m.group(1) for m in re.finditer(r"(?m)^([a-z_]+) = ", uncommented)}
    import attrs

    assert documented == {f.name for f in attrs.fields(DaemonSettings)}
    # The shown values are the defaults, except the examples for the two lists.
    settings = DaemonSettings.parse(uncommented, "mosd.conf")
    assert attrs.evolve(settings, hooks_dir=None, disabled_plugins=()) == DaemonSettings.default()


def test_sample_freeze_conf_example_lines_parse():
    text = (SAMPLE / "freeze.conf").read_text()
    examples = "\n".join(
        line[2:] for line in text.splitlines() if re.fullmatch(r"# (1 [-\d. ]+|/\S+ [\d.]+|U \d+)", line)
    )
    config = FreezeConfig.parse(examples, "freeze.conf")
    assert config.policy is not None and config.policy.red == 6.0
    assert len(config.dirs) == 2 and config.uid == 99


def test_samples_of_behaviour_changing_files_parse():
    assert parse_mosip((SAMPLE / "mosip.sample").read_text(), "mosip.sample") == IP("127.0.0.1")
    assert parse_maxguests((SAMPLE / "maxguests.sample").read_text(), "maxguests.sample") == MaxGuests(16)
    partner = Partner.from_file(SAMPLE / "partners" / "geography.sample")
    assert partner.priority == 50 and partner.cango and partner.cantake
    assert len(partner.nodes()) == 16
    assert (SAMPLE / ".log_mosrun.sample").is_file()


def test_sample_secret(tmp_path):
    shutil.copy(SAMPLE / "secret.sample", tmp_path / "secret")
    (tmp_path / "secret").chmod(0o600)
    assert load_secret(tmp_path) == b"change-this-to-the-cluster-password"


def test_sample_tree_with_every_sample_activated(tmp_path):
    etc = tmp_path / "mosix"
    shutil.copytree(SAMPLE, etc)
    for sample in etc.rglob("*.sample"):
        sample.rename(sample.with_suffix(""))
    (etc / "secret").chmod(0o600)
    config = load_config(etc)
    assert config.mosip == IP("127.0.0.1")
    assert config.maxguests == MaxGuests(16)
    assert config.log_mosrun
    assert [p.name for p in config.partners] == ["geography"]
    assert config.our_ip() == IP("127.0.0.1")
    assert load_secret(etc)


# --- defaults and errors -------------------------------------------------------


def test_only_the_map_is_mandatory(tmp_path):
    etc = make_etc(tmp_path, {"mosix.map": "10.0.0.1 4\n"})
    config = load_config(etc)
    assert config.userview is None and config.speed == 10000 and config.mosip is None
    assert config.freeze == FreezeConfig.default()
    assert config.partners == () and config.private == PrivateConfig.default()
    assert config.retainpri == 0 and config.maxguests is None and not config.log_mosrun
    assert config.daemon == DaemonSettings.default()


def test_missing_map(tmp_path):
    etc = make_etc(tmp_path, {"speed": "5\n"})
    with pytest.raises(ConfigError) as info:
        load_config(etc)
    assert info.value.path == str(etc / "mosix.map") and "not found" in info.value.reason


def test_map_override(tmp_path):
    etc = make_etc(tmp_path, {"mosix.map": "10.0.0.1 4\n", "other.map": "10.1.0.1 2\n"})
    config = load_config(etc, map_override=etc / "other.map")
    assert config.cluster.nodes() == [IP("10.1.0.1"), IP("10.1.0.2")]
    assert config.cluster.source == str(etc / "other.map")


def test_optional_files_are_read(tmp_path):
    etc = make_etc(
        tmp_path,
        {
            "mosix.map": "10.0.0.1 4\n",
            "userview.map": "1 10.0.0.1 4\n",
            "speed": "20000\n",
            "mosip": "10.0.0.2\n",
            "freeze.conf": "1 0 6 4\n",
            "private.conf": "O /ptf\n",
            "retainpri": "30\n",
            "maxguests": "0 8\n",
            ".log_mosrun": "",
            "mosd.conf": "udp_port = 2000\n",
            "partners/chem": "Chemistry\n10 1 1\n10.5.0.1 4 1 1 1\n",
        },
    )
    config = load_config(etc)
    assert config.speed == 20000 and config.mosip == IP("10.0.0.2")
    assert config.freeze.policy.red == 6.0 and config.private.dir_for("C") is None
    assert config.retainpri == 30 and config.maxguests == MaxGuests(0, 8)
    assert config.log_mosrun and config.daemon.udp_port == 2000
    assert config.partners[0].name == "chem"
    assert config.our_ip() == IP("10.0.0.2")
    assert config.our_ip("10.0.0.4") == IP("10.0.0.4")


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("userview.map", "0 10.0.0.1 1\n", 1),
        ("speed", "# s\nfast\n", 2),
        ("mosip", "0.0.0.9\n", 1),
        ("freeze.conf", "1 0 4 6\n", 1),
        ("private.conf", "X /p\n", 1),
        ("retainpri", "-4\n", 1),
        ("maxguests", "a\n", 1),
        ("mosd.conf", "nope = 1\n", 1),
        ("partners/p", "P\n1 1\n", 2),
    ],
)
def test_a_bad_optional_file_is_reported(tmp_path, name, text, line):
    etc = make_etc(tmp_path, {"mosix.map": "10.0.0.1 4\n", name: text})
    with pytest.raises(ConfigError) as info:
        load_config(etc)
    assert info.value.path == str(etc / name) and info.value.line == line


def test_an_optional_path_that_is_a_directory_is_an_error(tmp_path):
    etc = make_etc(tmp_path, {"mosix.map": "10.0.0.1 4\n"})
    (etc / "speed").mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(etc)
    assert info.value.path == str(etc / "speed")


def test_partner_may_not_list_local_nodes(tmp_path):
    etc = make_etc(
        tmp_path,
        {
            "mosix.map": "10.0.0.1 4\n",
            "partners/p": "P\n1 1 1\n10.9.0.1 1 1 1 0\n10.0.0.0 2 1 1 0\n",
        },
    )
    with pytest.raises(ConfigError) as info:
        load_config(etc)
    assert info.value.path == str(etc / "partners" / "p") and info.value.line == 4
    assert "local cluster" in info.value.reason and f"{etc / 'mosix.map'}:1" in info.value.reason


# --- lookups across the cluster and its partners --------------------------------


@pytest.fixture
def config(tmp_path) -> MosixConfig:
    etc = make_etc(
        tmp_path,
        {
            "mosix.map": "10.0.0.1 4 p\n10.0.1.1 2\n192.168.9.1=10.0.0.2\n172.16.0.9=10.5.0.3\n",
            "userview.map": "1 10.0.0.1 4\n10 10.5.0.1 2\n",
            "partners/chem": "Chemistry\n10 1 1\n10.5.0.1 4 1 1 1\n10.6.0.1 2 1 1 0\n",
        },
    )
    return load_config(etc, resolve=fake_resolve)


def test_node_numbers(config):
    assert config.node_number(IP("10.0.0.4")) == 4
    assert config.node_number(IP("10.5.0.2")) == 11
    assert config.node_number(IP("10.0.1.1")) is None


def test_resolve_node(config):
    assert config.resolve_node("3") == IP("10.0.0.3")
    assert config.resolve_node("11") == IP("10.5.0.2")  # a partner's node by number
    assert config.resolve_node("10.0.1.2") == IP("10.0.1.2")
    assert config.resolve_node(" 10.6.0.2 ") == IP("10.6.0.2")
    assert config.resolve_node("192.168.9.1") == IP("10.0.0.2")  # alias
    assert config.resolve_node("chem1", resolve=fake_resolve) == IP("10.5.0.2")
    for text in ["5", "0", "99999999999", "10.0.1.3", "stranger", "nowhere", "", "a b", "1.2.3.4.5"]:
        with pytest.raises(NotInMap) as info:
            config.resolve_node(text, resolve=fake_resolve)
        assert str(info.value) == f"{text.strip()}: not in map"


def test_resolve_node_never_resolves_digits_and_dots(config):
    def refuse(name: str) -> str:
        raise AssertionError(f"resolver asked about {name}")

    for text in ["10.1", "10.0.1", "1.2.3.4.5", "1..2"]:
        with pytest.raises(NotInMap):
            config.resolve_node(text, resolve=refuse)


def test_resolve_node_with_the_real_resolver(tmp_path):
    config = load_config(make_etc(tmp_path, {"mosix.map": "127.0.0.1 2\n"}))
    assert config.resolve_node("localhost") == IP(socket.gethostbyname("localhost"))


def test_cluster_and_partner_membership(config):
    assert config.is_local_cluster(IP("10.0.0.1"))
    assert config.is_local_cluster("192.168.9.1")
    assert not config.is_local_cluster(IP("10.5.0.1"))
    assert not config.is_local_cluster("junk")
    assert config.partner_of(IP("10.5.0.1")).name == "chem"
    assert config.partner_of("172.16.0.9").name == "chem"  # alias to a partner's node
    assert config.partner_of(IP("10.0.0.1")) is None
    assert config.partner_of(IP("8.8.8.8")) is None
    assert config.canonical("172.16.0.9") == IP("10.5.0.3")
    assert config.canonical("8.8.8.8") is None


def test_proximity(config):
    assert config.is_proximate(IP("10.0.0.1"))  # map 'p'
    assert config.is_proximate("192.168.9.1")  # alias of a proximate node
    assert not config.is_proximate(IP("10.0.1.1"))
    assert config.is_proximate(IP("10.5.0.4"))  # partner column 5 = 1
    assert not config.is_proximate(IP("10.6.0.1"))
    assert not config.is_proximate(IP("8.8.8.8"))
    assert not config.is_proximate("junk")
