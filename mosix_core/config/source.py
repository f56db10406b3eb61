"""Reading configuration text: the one place where file and decoding errors are caught.

Every parser works on ``(line number, fields)`` pairs produced here, so comment and
line-numbering rules are the same in every file.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator

from mosix_core.errors import ConfigError

# The biggest legitimate file (256 map lines) is a few kilobytes; a cap keeps a
# mistaken path (a log, a disk image) from being read into memory.
MAX_CONFIG_BYTES = 1 << 20


def read_bytes(path: str | os.PathLike[str], *, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The content of a regular file, or ConfigError saying why it cannot be read."""
    name = os.fspath(path)
    try:
        # O_NONBLOCK: a FIFO or device put in place of a file must not hang us.
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(name, "file not found") from None
    except OSError as err:
        raise ConfigError(name, f"cannot open: {_reason(err)}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(name, "not a regular file")
        if info.st_size > limit:
            raise ConfigError(name, f"too large ({info.st_size} bytes; at most {limit})")
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise ConfigError(name, f"too large (more than {limit} bytes)")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as err:
        raise ConfigError(name, f"cannot read: {_reason(err)}") from None
    finally:
        os.close(fd)


def read_text(path: str | os.PathLike[str]) -> str:
    """The file decoded as UTF-8; a bad byte is reported with its line."""
    data = read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(
            os.fspath(path),
            f"not valid UTF-8 text (byte 0x{data[err.start]:02x})",
            line,
        ) from None


def read_optional_text(path: str | os.PathLike[str]) -> str | None:
    """Like :func:`read_text`, but an absent file is ``None`` (the manual's default applies)."""
    if not os.path.lexists(path):
        return None
    return read_text(path)


def split_lines(text: str) -> list[str]:
    """Lines as editors number them: only ``\\n`` ends a line (``str.splitlines`` would
    also break on form feeds and Unicode separators, and shift every line number after)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def strip_comment(line: str) -> str:
    """The line without its comment.

    A comment starts at a ``#`` that begins the line or follows white space, so a
    ``#`` inside a path or a value (``/data#1``) is kept.
    """
    for index, char in enumerate(line):
        if char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def content_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, text without comment or surrounding blanks)`` for each line that has any."""
    for number, line in enumerate(split_lines(text), start=1):
        content = strip_comment(line).strip()
        if content:
            yield number, content


def data_lines(text: str) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` for each line that is neither blank nor a comment."""
    for number, content in content_lines(text):
        yield number, content.split()


def _reason(err: OSError) -> str:
    if err.errno == errno.EACCES:
        return "permission denied"
    return err.strerror or str(err)
