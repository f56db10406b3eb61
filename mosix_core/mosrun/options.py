"""mosrun's command line, in the manual's own syntax (mosrun(1)).

MOSIX options are single letters with their value glued on: ``-m500``, ``-rhost``,
``-C/tmp/save``, ``-S20``, and a bare node number or address is a location
(``-3``, ``-10.0.0.4``). A value may also be the next argument (``-d 9976``, as the
synopsis writes ``-d {0-10000}``). Letters are never combined: ``-eL`` is an error,
not ``-e -L``, because with glued values it would be ambiguous (is ``-mL`` memory
"L"?). Options end at the first word that is not an option (the program), or at
``--``.

An option may be repeated; the last one of a set of alternatives wins (``-e -u``
kills on unsupported calls again), while ``-X`` and ``-O`` accumulate.

This module only reads and writes the command line: what the options do is the
supervisor's business, and several wait for later features (:data:`LATER_FEATURES`).
The options as data — JSON through a socket, and the invocation as site policies see
it — are :mod:`mosix_core.mosrun.options_wire`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Address
from types import MappingProxyType
from typing import Any

import attrs

from mosix_core.errors import MosixError

# mosix_core.config is imported where it is needed, not here: every mosrun parses its
# options before the program may start, and the configuration package costs ~30 ms to
# import (a node without /etc/mosix/mosix.map never needs it).

__all__ = [
    "INHERITED_LETTERS",
    "LATER_FEATURES",
    "MosrunOptions",
    "UsageError",
    "for_child_process",
    "inherit",
    "location_word",
    "normalize_private_dir",
    "parse",
    "parse_options",
    "parse_queue_spec",
    "to_argv",
]


class UsageError(MosixError):
    """The mosrun command line is wrong; the message says how (the manual's words where it has them)."""


MAX_MEMORY_MB = 262143  # the range /proc/self/needmem accepts
DEFAULT_DECAY = 9976  # per 10000 per second (mosrun(1))
MAX_DECAY = 10000
MAX_QUEUE_JOBS = 30000
MAX_CHECKPOINT_COUNT = 10_000_000
MAX_CHECKPOINT_MINUTES = 10_000_000
MAX_NODE_NUMBER = 65535  # as in userview.map
MAX_FD = 1023  # "only 1024 files supported under MOSIX"
MAX_PRIVATE_DIRS = 10
MAX_PRIVATE_DIR_CHARS = 256
DISALLOWED_PRIVATE_ROOTS = ("/etc", "/proc", "/sys", "/dev")

FLAG_LETTERS = frozenset("bhLlgGFewuzcntT")
VALUE_LETTERS = frozenset("rmdSCXANROI")
OPTION_LETTERS = FLAG_LETTERS | VALUE_LETTERS
#: Options that describe the program; mosrun -R recovers them from the checkpoint instead.
PROGRAM_LETTERS = frozenset("mewuCzcndXtT")
#: "recursive programs will inherit the following (and only the following) arguments".
INHERITED_LETTERS = frozenset("cdeLlgGmnTtuw")

_MIGRATION = "automatic migration"
_CHECKPOINTS = "checkpoints"
#: Options that are accepted but wait for a feature not implemented yet ("--help" lists them).
LATER_FEATURES: Mapping[str, str] = MappingProxyType(
    {
        **{option: _MIGRATION for option in ("-L", "-l", "-c", "-n", "-d")},
        **{option: _CHECKPOINTS for option in ("-C", "-N", "-A", "-R", "-O", "-I")},
        "-X": "private temporary files",
        "-g": "freezing",
        "-G": "freezing",
    }
)


@attrs.frozen
class MosrunOptions:
    """Everything a mosrun command line says, apart from the program and its arguments.

    ``explicit`` holds the letters whose setting is in effect: of alternatives that set
    the same thing (``-e``/``-w``/``-u``, ``-L``/``-l``, ``-b``/``-h``/``-r``...) only the
    last one given. A node number or address (``-3``, ``-1.2.3.4``) counts as ``r``:
    it names a node just as ``-r{host}`` does.
    """

    location: str | None = None  # None (no location option), "best" (-b), "home" (-h), "node"
    location_node: str | None = None  # with "node": the text after -r, or the node number / IP address
    memory_mb: int | None = None  # -m
    unsupported: str = "kill"  # "kill" | "silent" (-e) | "warn" (-w); -u resets to "kill"
    unsupported_explicit: bool = False  # whether -e/-w/-u was given (else the site's default applies)
    lock: bool = False  # -L True / -l False: no automatic migration
    freezable: bool = True  # -g False / -G True
    cpujob: bool = False  # -c True / -n False: ignore system calls in migration decisions
    decay: int = DEFAULT_DECAY  # -d
    local_time: bool = False  # -t True / -T False: time from the hosting node
    force: bool = False  # -F: start even if the requested node is unavailable
    argv0_included: bool = False  # -z: the program's arguments begin at argument #0
    queue_jobs: int | None = None  # -S{maxjobs}
    checkpoint_file: str | None = None  # -C
    checkpoint_limit: int | None = None  # -N
    checkpoint_interval: int | None = None  # -A, in minutes
    recover: str | None = None  # -R
    redirect: tuple[tuple[int, str], ...] = ()  # -O fd=file pairs, in the order given
    inspect: str | None = None  # -I
    private_dirs: tuple[str, ...] = ()  # -X, normalised, without repeats
    explicit: frozenset[str] = frozenset()
    # no option letter: mosd.conf's strict_limitations as the site's mosrun policy leaves it
    strict_limitations: bool = False


# Alternatives that set one field; the last one given wins.
_TOGGLES: dict[str, tuple[str, Any]] = {
    "e": ("unsupported", "silent"),
    "w": ("unsupported", "warn"),
    "u": ("unsupported", "kill"),
    "L": ("lock", True),
    "l": ("lock", False),
    "g": ("freezable", False),
    "G": ("freezable", True),
    "c": ("cpujob", True),
    "n": ("cpujob", False),
    "t": ("local_time", True),
    "T": ("local_time", False),
    "F": ("force", True),
    "z": ("argv0_included", True),
}
_LOCATIONS = {"b": "best", "h": "home"}

#: The letters that set each field (``location_node`` goes with ``location``).
_FIELD_LETTERS: dict[str, str] = {
    "location": "bhr",
    "memory_mb": "m",
    "unsupported": "ewu",
    "lock": "Ll",
    "freezable": "gG",
    "cpujob": "cn",
    "decay": "d",
    "local_time": "tT",
    "force": "F",
    "argv0_included": "z",
    "queue_jobs": "S",
    "checkpoint_file": "C",
    "checkpoint_limit": "N",
    "checkpoint_interval": "A",
    "recover": "R",
    "redirect": "O",
    "inspect": "I",
    "private_dirs": "X",
}
_GROUP_OF = {letter: field for field, letters in _FIELD_LETTERS.items() for letter in letters}
_INHERITED_FIELDS = tuple(field for field, letters in _FIELD_LETTERS.items() if set(letters) <= INHERITED_LETTERS)

_DIGITS = re.compile(r"[0-9]{1,20}", re.ASCII)
_DOTTED_QUAD = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}", re.ASCII)


# --- parsing -----------------------------------------------------------------------------------------


def parse(argv: Sequence[str]) -> tuple[MosrunOptions, list[str]]:
    """mosrun's arguments (without "mosrun" itself): the options and the remaining words.

    The remaining words are the program and its arguments; with ``-S`` the one
    ``commands-file[,failed-file]`` word (see :func:`parse_queue_spec`); with ``-R``
    and ``-I`` none. Raises :class:`UsageError`.
    """
    options, rest = parse_options(argv)
    return options, _check_operands(options, rest)


def parse_options(argv: Sequence[str]) -> tuple[MosrunOptions, list[str]]:
    """The options at the start of ``argv``, checked together, and the words after
    them as they are (:func:`parse` checks those too)."""
    options, rest = _scan(argv)
    _check_combination(options)
    return options, rest


def _scan(argv: Sequence[str]) -> tuple[MosrunOptions, list[str]]:
    values: dict[str, Any] = {}
    chosen: dict[str, str] = {}  # field -> the letter now in effect
    private: list[str] = []
    redirect: list[tuple[int, str]] = []
    words = list(argv)
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--":
            index += 1
            break
        if not word.startswith("-"):
            break
        if word == "-":
            raise UsageError("unknown option - (after -- it would be taken as the program)")
        index += 1
        letter, glued = word[1], word[2:]
        if letter in "0123456789":
            values["location"], values["location_node"] = "node", _node_word(word)
            chosen["location"] = "r"
        elif letter in FLAG_LETTERS:
            if glued:
                raise UsageError(_combined_message(word))
            if letter in _LOCATIONS:
                values["location"], values["location_node"] = _LOCATIONS[letter], None
            else:
                field, value = _TOGGLES[letter]
                values[field] = value
            chosen[_GROUP_OF[letter]] = letter
        elif letter in VALUE_LETTERS:
            if not glued:
                # The value may be the next argument ("-d 9976"), unless that is another option.
                if index < len(words) and words[index] and not words[index].startswith("-"):
                    glued = words[index]
                    index += 1
                else:
                    raise UsageError(f"-{letter}: missing {_VALUE_NAMES[letter]}")
            if letter == "X":
                _add_private_dir(private, glued)
            elif letter == "O":
                _add_redirections(redirect, glued)
            elif letter == "r":
                values["location"], values["location_node"] = "node", _host_value(glued)
            else:
                values[_GROUP_OF[letter]] = _VALUE_PARSERS[letter](glued)
            chosen[_GROUP_OF[letter]] = letter
        else:
            raise UsageError(f"unknown option {word}")
    values["private_dirs"] = tuple(private)
    values["redirect"] = tuple(redirect)
    explicit = frozenset(chosen.values())
    values["unsupported_explicit"] = "unsupported" in chosen
    return MosrunOptions(**values, explicit=explicit), words[index:]


def _combined_message(word: str) -> str:
    if all(char in OPTION_LETTERS for char in word[1:]):
        separate = " ".join(f"-{char}" for char in word[1:])
        return f"{word}: mosrun options cannot be combined: write {separate}"
    return f"unknown option {word} (-{word[1]} takes no value)"


def _node_word(word: str) -> str:
    from mosix_core.config.addresses import as_address

    text = word[1:]
    if _DOTTED_QUAD.fullmatch(text):
        address = as_address(text)
        if address is None:
            raise UsageError(f"{word}: not a valid IP address")
        return str(address)
    if _DIGITS.fullmatch(text):
        number = int(text)
        if not 1 <= number <= MAX_NODE_NUMBER:
            raise UsageError(f"{word}: node numbers are between 1 and {MAX_NODE_NUMBER}")
        return str(number)
    raise UsageError(f"unknown option {word}")


def _host_value(text: str) -> str:
    # Only the syntax is checked here: whether the node is in the map is found when it is used.
    from mosix_core.config.addresses import as_address, is_host_name, is_numeric

    if is_numeric(text):
        if _DIGITS.fullmatch(text) and 1 <= int(text) <= MAX_NODE_NUMBER:
            return str(int(text))
        if as_address(text) is not None and _DOTTED_QUAD.fullmatch(text):
            return str(IPv4Address(text))
    elif is_host_name(text):
        return text
    raise UsageError(f"-r: {text!r} is not a host name, an IP address or a node number")


def _integer(letter: str, what: str, low: int, high: int):
    def parse_value(text: str) -> int:
        if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
            raise UsageError(f"-{letter}: {what} between {low} and {high}, not {text!r}")
        return int(text)

    return parse_value


def _file_name(letter: str):
    def parse_value(text: str) -> str:
        if "\0" in text:
            raise UsageError(f"-{letter}: the file name contains a NUL character")
        return text

    return parse_value


_VALUE_NAMES = {
    "r": "host name",
    "m": "memory (MB)",
    "d": "decay",
    "S": "maxjobs",
    "C": "checkpoint file name",
    "X": "directory",
    "A": "minutes",
    "N": "maximum number of checkpoints",
    "R": "checkpoint file name",
    "O": "fd=filename",
    "I": "checkpoint file name",
}
_VALUE_PARSERS = {
    "m": _integer("m", "memory must be a number of MB", 0, MAX_MEMORY_MB),
    "d": _integer("d", "decay must be an integer", 0, MAX_DECAY),
    "S": _integer("S", "maxjobs must be", 1, MAX_QUEUE_JOBS),
    "A": _integer("A", "minutes must be an integer", 0, MAX_CHECKPOINT_MINUTES),
    "N": _integer("N", "the number of checkpoints must be an integer", 0, MAX_CHECKPOINT_COUNT),
    "C": _file_name("C"),
    "R": _file_name("R"),
    "I": _file_name("I"),
}


def normalize_private_dir(name: str) -> str:
    """A ``-X`` directory checked by the manual's rules, without "//", "/./" or a trailing "/"."""
    if len(name) > MAX_PRIVATE_DIR_CHARS:
        raise UsageError("Private directory name too long")
    # The manual says "cannot include ..", not "no .. component": "/a..b" is refused too.
    if not name.startswith("/") or ".." in name or "\0" in name:
        raise UsageError(f"Invalid private-directory name ({name})")
    normal = "/" + "/".join(part for part in name.split("/") if part not in ("", "."))
    if any(normal == root or normal.startswith(root + "/") for root in DISALLOWED_PRIVATE_ROOTS):
        raise UsageError(f"Disallowed private-directory name ({name})")
    return normal


def _add_private_dir(dirs: list[str], name: str) -> None:
    normal = normalize_private_dir(name)
    if normal in dirs:
        return  # naming a directory twice declares nothing new
    if len(dirs) == MAX_PRIVATE_DIRS:
        raise UsageError("Too many private directories")
    dirs.append(normal)


def _add_redirections(pairs: list[tuple[int, str]], spec: str) -> None:
    # "-O1=a,2=b", or with a separator of one's choice first when names contain commas: "-O@1=a,b@2=c".
    separator, body = (",", spec) if spec[0] in "0123456789" else (spec[0], spec[1:])
    for item in body.split(separator):
        fd_text, equals, name = item.partition("=")
        if not equals or not _DIGITS.fullmatch(fd_text) or not name:
            chosen = "" if separator == "," else f" (items separated by {separator!r})"
            raise UsageError(f"-O: expected fd=filename, not {item!r}{chosen}")
        fd = int(fd_text)
        if fd > MAX_FD:
            raise UsageError(f"-O: file-descriptor {fd} is out of range (0 to {MAX_FD})")
        if "\0" in name:
            raise UsageError("-O: the file name contains a NUL character")
        if any(fd == done for done, _ in pairs):
            raise UsageError(f"-O: file-descriptor {fd} is redirected twice")
        pairs.append((fd, name))


def _check_combination(options: MosrunOptions) -> None:
    given = options.explicit
    if "I" in given and given != {"I"}:
        raise UsageError("-I must be used alone: mosrun -I{filename}")
    if "R" in given:
        program = sorted(given & PROGRAM_LETTERS)
        if program:
            shown = " ".join(f"-{letter}" for letter in program)
            raise UsageError(f"Program options are not permitted with -R ({shown})")
        if "S" in given:
            raise UsageError("-S cannot be combined with -R")
    elif "O" in given:
        raise UsageError("-O is only allowed with -R")


def _check_operands(options: MosrunOptions, rest: list[str]) -> list[str]:
    given = options.explicit
    if "I" in given or "R" in given:
        if rest:
            letter = "I" if "I" in given else "R"
            raise UsageError(
                f"-{letter}: no program may be given (it comes from the checkpoint file), found {rest[0]!r}"
            )
        return []
    if "S" in given:
        return [_queue_operand(rest)]
    if not rest:
        raise UsageError("no program to run")
    return rest


def _queue_operand(rest: list[str]) -> str:
    if not rest:
        raise UsageError("-S: no commands-file given")
    joined = "".join(rest)
    # The synopsis spaces the comma ("{commands-file} [, {failed-file}]"): accept it spaced too.
    spaced = joined.count(",") == 1 and (
        (len(rest) == 2 and (rest[0].endswith(",") or rest[1].startswith(","))) or (len(rest) == 3 and rest[1] == ",")
    )
    if len(rest) > 1 and not spaced:
        raise UsageError(f"-S: expected a commands-file (and optionally ,failed-file), not {len(rest)} words")
    parse_queue_spec(joined)
    return joined


def parse_queue_spec(text: str) -> tuple[str, str | None]:
    """``commands-file[,failed-file]`` -> (commands file, failed-commands file or None).

    The first comma separates them, so the failed-commands file's name may contain commas.
    """
    commands, comma, failed = text.partition(",")
    if not commands:
        raise UsageError("-S: the commands-file name is empty")
    if comma and not failed:
        raise UsageError("-S: the failed-commands file name after ',' is empty")
    return commands, (failed if comma else None)


# --- what other mosrun invocations and child processes get -------------------------------------------


def inherit(parent: MosrunOptions, child: MosrunOptions) -> MosrunOptions:
    """The options of a mosrun started by a program that runs under mosrun ``parent``.

    The child's own options, and for the inheritable ones it does not set
    (-c -d -e -L -l -g -G -m -n -T -t -u -w) the parent's; everything else keeps
    its default. A recovering child (-R) gets its program options from the
    checkpoint, and an inspecting one (-I) runs nothing, so they inherit less.
    """
    if "I" in child.explicit:
        return child
    fields = _INHERITED_FIELDS
    if "R" in child.explicit:
        fields = tuple(f for f in fields if not set(_FIELD_LETTERS[f]) & PROGRAM_LETTERS)
    changes: dict[str, Any] = {}
    explicit = set(child.explicit)
    for field in fields:
        letters = set(_FIELD_LETTERS[field])
        if letters & child.explicit:
            continue
        changes[field] = getattr(parent, field)
        explicit |= _letters_in_effect(parent, field)
    return attrs.evolve(
        child, **changes, explicit=frozenset(explicit), unsupported_explicit=bool(explicit & set("ewu"))
    )


def _letters_in_effect(options: MosrunOptions, field: str) -> set[str]:
    # A parent record built from a process's state has no letters, only values: a value
    # other than the default is as good as the option that sets it.
    letters = set(_FIELD_LETTERS[field]) & options.explicit
    value = getattr(options, field)
    if letters or value == _DEFAULTS[field]:
        return letters
    return {letter for letter in _FIELD_LETTERS[field] if _TOGGLES.get(letter, (field, value))[1] == value}


# Checkpoint settings belong to one process (CHECKPOINTS: "NOT inherited by child
# processes"); -R, -O, -I and -S are things one invocation does, not properties of it.
_NOT_FOR_CHILDREN = frozenset("CNAROIS")


def for_child_process(options: MosrunOptions) -> MosrunOptions:
    """The options of a process forked by a process that runs with ``options``."""
    return attrs.evolve(
        options,
        checkpoint_file=None,
        checkpoint_limit=None,
        checkpoint_interval=None,
        recover=None,
        redirect=(),
        inspect=None,
        queue_jobs=None,
        explicit=options.explicit - _NOT_FOR_CHILDREN,
    )


# --- writing it back -------------------------------------------------------------------------------


def location_word(options: MosrunOptions) -> str | None:
    """The location as one mosrun argument ("-b", "-h", "-3", "-1.2.3.4", "-rhost"), or None."""
    if options.location == "best":
        return "-b"
    if options.location == "home":
        return "-h"
    if options.location == "node":
        node = options.location_node or ""
        numeric = _DIGITS.fullmatch(node) or _DOTTED_QUAD.fullmatch(node)
        return f"-{node}" if numeric else f"-r{node}"
    return None


def to_argv(options: MosrunOptions, words: Iterable[str] = ()) -> list[str]:
    """The options as mosrun arguments (each one word, value glued), then ``words``.

    ``parse(to_argv(o, words)) == (o, words)`` for every ``o`` that :func:`parse` made.
    A ``--`` goes before ``words`` when the first would look like an option.
    """
    given = options.explicit
    out: list[str] = []
    location = location_word(options)
    if location is not None:
        out.append(location)
    for letter, (field, value) in _TOGGLES.items():
        if getattr(options, field) != value:
            continue
        at_default = value == _DEFAULTS[field]
        is_given = letter in given or (field == "unsupported" and options.unsupported_explicit)
        if not at_default or is_given:
            out.append(f"-{letter}")
    for letter, field in (
        ("m", "memory_mb"),
        ("S", "queue_jobs"),
        ("C", "checkpoint_file"),
        ("N", "checkpoint_limit"),
        ("A", "checkpoint_interval"),
        ("R", "recover"),
        ("I", "inspect"),
    ):
        value = getattr(options, field)
        if value is not None:
            out.append(f"-{letter}{value}")
    if options.decay != DEFAULT_DECAY or "d" in given:
        out.append(f"-d{options.decay}")
    out.extend(f"-X{directory}" for directory in options.private_dirs)
    out.extend(_redirect_word(fd, name) for fd, name in options.redirect)
    words = list(words)
    if words and words[0].startswith("-"):
        out.append("--")
    return out + words


_DEFAULTS = {field.name: field.default for field in attrs.fields(MosrunOptions)}


def _redirect_word(fd: int, name: str) -> str:
    if "," not in name:
        return f"-O{fd}={name}"
    # A separator that the name does not contain (and that cannot start an fd or end one).
    candidates = "@%:+^~!|;"
    separator = next((c for c in candidates if c not in name), None)
    if separator is None:
        separator = next(
            chr(code) for code in range(0x21, 0x110000) if chr(code) not in name and chr(code) not in "0123456789="
        )
    return f"-O{separator}{fd}={name}"
