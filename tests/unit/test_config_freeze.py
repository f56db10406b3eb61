"""freeze.conf and $HOME/.freeze_dirs."""

from __future__ import annotations

import pytest

from mosix_core.config.freeze import FreezeConfig, FreezeDir, FreezePolicy, parse_freeze_dirs_file
from mosix_core.errors import ConfigError

SRC = "/etc/mosix/freeze.conf"


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        FreezeConfig.parse(text, SRC)
    assert info.value.path == SRC
    return info.value


def test_default():
    config = FreezeConfig.default()
    assert config.policy is None
    assert config.dirs == (FreezeDir("/freeze", 1.0),)
    assert config.uid is None


def test_comment_only_file_is_the_default():
    assert FreezeConfig.parse("# nothing yet\n\n", SRC) == FreezeConfig.default()


def test_minimal_policy_takes_the_manuals_defaults():
    config = FreezeConfig.parse("1 0 6 4\n", SRC)
    assert config.policy == FreezePolicy(units=0, red=6.0, blue=4.0)
    policy = config.policy
    assert (policy.home_mark, policy.cluster_mark, policy.min_keep, policy.max_procs) == (-1, -1, 0, -1)
    assert policy.slice_minutes == 20 and policy.killing_memory_mb == 0
    assert config.dirs == (FreezeDir("/freeze"),)


def test_full_policy_dirs_and_uid():
    text = (
        "# policy\n"
        "1 1 6.0 4.0 0.0 -1.0 1 -1 20 1000000\n"
        "/tmp 2\n"
        "/var/tmp 0.5   # slow disk\n"
        "/mnt/tmp 2.5\n"
        "/last-resort 0\n"
        "U 99\n"
    )
    config = FreezeConfig.parse(text, SRC)
    assert config.policy == FreezePolicy(
        units=1,
        red=6.0,
        blue=4.0,
        home_mark=0.0,
        cluster_mark=-1.0,
        min_keep=1,
        max_procs=-1,
        slice_minutes=20,
        killing_memory_mb=1000000,
    )
    assert config.dirs == (
        FreezeDir("/tmp", 2.0),
        FreezeDir("/var/tmp", 0.5),
        FreezeDir("/mnt/tmp", 2.5),
        FreezeDir("/last-resort", 0.0),
    )
    assert config.uid == 99


def test_red_mark_off():
    assert FreezeConfig.parse("1 0 -1 4\n", SRC).policy.red == -1


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("1 0 6\n", 1, "at least 4 fields"),
        ("1\n", 1, "at least 4 fields"),
        ("1 0 6 4 -1 -1 0 -1 20 0 7\n", 1, "at most 10 fields"),
        ("1 2 6 4\n", 1, "load-units (field 2) 2 is out of range"),
        ("1 0 x 4\n", 1, "RED-MARK (field 3) must be a number"),
        ("1 0 nan 4\n", 1, "RED-MARK (field 3) must be a number"),
        ("1 0 inf 4\n", 1, "must be a number"),
        ("1 0 6 -1\n", 1, "BLUE-MARK (field 4) must be 0 or more"),
        ("1 0 -2 1\n", 1, "out of range"),
        ("1 0 -0.5 1\n", 1, "RED-MARK (field 3) must be 0 or more or -1"),
        ("1 0 4 6\n", 1, "must be higher than BLUE-MARK"),
        ("1 0 4 4\n", 1, "must be higher than BLUE-MARK"),
        ("1 0 6 4 -3\n", 1, "minautofreeze (field 5)"),
        ("1 0 6 4 -1 -0.5\n", 1, "minclustfreeze (field 6) must be 0 or more or -1"),
        ("1 0 6 4 -1 -1 -1\n", 1, "min-keep (field 7) -1 is out of range"),
        ("1 0 6 4 -1 -1 0 -2\n", 1, "max-procs (field 8) -2 is out of range"),
        ("1 0 6 4 -1 -1 0 -1 0\n", 1, "slice (field 9) 0 is out of range"),
        ("1 0 6 4 -1 -1 0 -1 20 -1\n", 1, "killing-memory (field 10) -1 is out of range"),
        ("1 0 6 4 -1 -1 0 -1 2.5\n", 1, "slice (field 9) must be an integer"),
        ("1 0 6 4\n\n1 0 8 4\n", 3, "second freezing policy (the first is on line 1)"),
        ("/tmp -1\n", 1, "weight -1 is out of range"),
        ("/tmp heavy\n", 1, "weight must be a number"),
        ("/tmp 1 2\n", 1, "directory name and an optional weight"),
        ("/tmp\n/var/tmp\n/tmp 3\n", 3, "/tmp is already listed on line 1"),
        ("U\n", 1, "'U {UID}'"),
        ("U root\n", 1, "UID must be an integer"),
        ("U 1 2\n", 1, "'U {UID}'"),
        ("U 1\nU 2\n", 2, "second 'U' line (the first is on line 1)"),
        ("2 0 6 4\n", 1, "unexpected '2'"),
        ("tmp 2\n", 1, "unexpected 'tmp'"),
        ("u 5\n", 1, "unexpected 'u'"),
    ],
)
def test_bad_lines(text, line, words):
    err = error(text)
    assert err.line == line
    assert words in err.reason


def test_at_most_ten_directories():
    text = "".join(f"/d{i}\n" for i in range(10))
    assert len(FreezeConfig.parse(text, SRC).dirs) == 10
    err = error(text + "/d10\n")
    assert err.line == 11 and "more than 10" in err.reason


def test_from_file(tmp_path):
    path = tmp_path / "freeze.conf"
    path.write_text("1 0 6 4\n/x 2\n")
    config = FreezeConfig.from_file(path)
    assert config.dirs == (FreezeDir("/x", 2.0),)


def test_user_freeze_dirs():
    source = "/home/u/.freeze_dirs"
    assert parse_freeze_dirs_file("# mine\n/scratch/u 3\n/tmp\n", source) == (
        FreezeDir("/scratch/u", 3.0),
        FreezeDir("/tmp", 1.0),
    )
    assert parse_freeze_dirs_file("", source) == ()
    with pytest.raises(ConfigError) as info:
        parse_freeze_dirs_file("/ok\nscratch\n", source)
    assert info.value.path == source and info.value.line == 2 and "starting with '/'" in info.value.reason
    with pytest.raises(ConfigError) as info:
        parse_freeze_dirs_file("/ok x\n", source)
    assert info.value.line == 1
