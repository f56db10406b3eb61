"""Reading configuration files: every way a file can be unreadable is a ConfigError."""

from __future__ import annotations

import os

import pytest

from mosix_core.config.source import (
    MAX_CONFIG_BYTES,
    data_lines,
    read_optional_text,
    read_text,
    split_lines,
    strip_comment,
)
from mosix_core.errors import ConfigError


def test_comments():
    assert strip_comment("# whole line") == ""
    assert strip_comment("10.0.0.1 2   # trailing") == "10.0.0.1 2   "
    assert strip_comment("/data#1 2") == "/data#1 2"
    assert strip_comment("a\t#b") == "a\t"


def test_line_numbers_count_only_newlines():
    text = "a\x0cb\n\u2028c\r\n\nd"
    assert split_lines(text) == ["a\x0cb", "\u2028c", "", "d"]
    assert [number for number, _ in data_lines(text)] == [1, 2, 4]


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        read_text(tmp_path / "nothing")
    assert info.value.path == str(tmp_path / "nothing")
    assert info.value.line is None and "file not found" in info.value.reason
    assert read_optional_text(tmp_path / "nothing") is None


def test_dangling_symlink_is_not_absent(tmp_path):
    (tmp_path / "speed").symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigError):
        read_optional_text(tmp_path / "speed")


def test_directory_and_fifo_are_not_files(tmp_path):
    with pytest.raises(ConfigError) as info:
        read_text(tmp_path)
    assert "not a regular file" in info.value.reason
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as info:
        read_text(fifo)  # must not block waiting for a writer
    assert "not a regular file" in info.value.reason


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"ok\nstill ok\nbad \xc3\x28 here\n")
    with pytest.raises(ConfigError) as info:
        read_text(path)
    assert info.value.line == 3 and "not valid UTF-8" in info.value.reason and "0xc3" in info.value.reason


def test_too_large(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError) as info:
        read_text(path)
    assert "too large" in info.value.reason


def test_unreadable_file(tmp_path):
    path = tmp_path / "f"
    path.write_text("x\n")
    os.chmod(path, 0)
    if os.geteuid() == 0:
        # Root reads it anyway; the open error path is exercised with a path
        # through a non-directory instead.
        path = tmp_path / "f" / "below"
    with pytest.raises(ConfigError) as info:
        read_text(path)
    assert "cannot open" in info.value.reason
