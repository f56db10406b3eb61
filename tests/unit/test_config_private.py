"""private.conf: space for private temporary files."""

from __future__ import annotations

import pytest

from mosix_core.config.private import PrivateConfig, PrivateDir
from mosix_core.errors import ConfigError

SRC = "/etc/mosix/private.conf"


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        PrivateConfig.parse(text, SRC)
    assert info.value.path == SRC
    return info.value


def test_default_without_file():
    config = PrivateConfig.default()
    assert not config.present
    for cls in "OCG":
        assert config.dir_for(cls).path == "/private"
    assert (config.limit_mb("O"), config.limit_mb("C"), config.limit_mb("G")) == (5120, 2048, 1024)


def test_lines_and_limits():
    config = PrivateConfig.parse("# ptfs\nOC /private 8000\nG /scratch/guests\n", SRC)
    assert config.present
    assert config.dirs == (
        PrivateDir(classes=frozenset("OC"), path="/private", limit_mb=8000),
        PrivateDir(classes=frozenset("G"), path="/scratch/guests", limit_mb=None),
    )
    assert config.dir_for("C").path == "/private"
    assert config.limit_mb("O") == 8000 and config.limit_mb("C") == 8000
    assert config.limit_mb("G") == 1024


def test_missing_class_gets_no_space():
    config = PrivateConfig.parse("O /private\n", SRC)
    assert config.dir_for("G") is None
    assert config.limit_mb("G") == 1024
    empty = PrivateConfig.parse("", SRC)
    assert empty.present and empty.dirs == () and empty.dir_for("O") is None


def test_unknown_class_is_a_programming_error():
    with pytest.raises(ValueError):
        PrivateConfig.default().dir_for("X")


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("OX /p\n", 1, "only the letters O, C and G"),
        ("oc /p\n", 1, "only the letters O, C and G"),
        ("OO /p\n", 1, "letter 'O' appears twice on this line"),
        ("O /a\n\nCO /b\n", 3, "letter 'O' appears already on line 1"),
        ("O private\n", 1, "must start with '/'"),
        ("O\n", 1, "2 or 3 fields"),
        ("O /a 1 2\n", 1, "2 or 3 fields"),
        ("O /a 0\n", 1, "limit in megabytes 0 is out of range"),
        ("O /a 5G\n", 1, "limit in megabytes must be an integer"),
    ],
)
def test_bad_lines(text, line, words):
    err = error(text)
    assert err.line == line
    assert words in err.reason


def test_from_file(tmp_path):
    path = tmp_path / "private.conf"
    path.write_text("OCG /tmp/ptf 10\n")
    assert PrivateConfig.from_file(path).limit_mb("G") == 10
