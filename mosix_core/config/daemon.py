"""``mosd.conf``: settings of this implementation that MOSIX itself does not have
(ports, gossip timing, resource measurement, plugins), as ``key = value`` lines."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from attrs import frozen

from mosix_core.config.source import content_lines, read_text
from mosix_core.config.tokens import parse_float, parse_int
from mosix_core.errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
RESOURCES = ("host", "virtual")
GUEST_UID_MIN, GUEST_UID_MAX = 1000, 2**31 - 1
NOBODY_UID = 65534
_PLUGIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", re.ASCII)


@frozen
class DaemonSettings:
    # MOSIX reserves TCP 252/253 and UDP 249/253; unprivileged runs move them.
    tcp_port: int = 253  # migration and remote calls
    tcp_aux_port: int = 252
    udp_port: int = 253  # gossip
    udp_aux_port: int = 249
    gossip_interval: float = 1.0  # seconds between this node's announcements
    dead_after: float = 0.0  # seconds of silence before a node counts as dead; 0: the daemon decides
    gossip_fanout: int = 1  # nodes told per period
    gossip_window: int = 0  # entries forwarded per message; 0: as many as fit in max_datagram
    max_datagram: int = 8192
    # "virtual": this node shares the machine with others (a local cluster) and
    # reports the resources below instead of measuring the machine.
    resources: str = "host"
    virtual_cpus: int = 1
    virtual_memory_mb: int = 4096
    virtual_swap_mb: int = 0
    hooks_dir: str | None = None  # site hook modules; relative to the configuration directory
    disabled_plugins: tuple[str, ...] = ()
    log_level: str = "info"
    # a guest takes the wall clock (CLOCK_REALTIME, gettimeofday, time) from its home
    # node when the two nodes' clocks differ by more than this (ms); within it, this
    # node's own clock serves it at native speed. 0: always from home.
    wall_clock_tolerance_ms: float = 1.0
    # the end of a forwarded call that waits for the other (the guest host for home's
    # answer, home for a busy guest's next call) spins this long (µs) before sleeping:
    # on virtual machines a sleeping CPU woken for a frame costs some 25 µs. 0: never.
    forward_spin_us: float = 100.0
    # each guest here runs (with its guest host) as a uid of its own from this range,
    # so the kernel keeps guests apart (/proc/PID/mem, ptrace, signals). None of them may
    # be a real account's: the default lies between regular users (below 60000), systemd's
    # dynamic users (61184-65519) and the subordinate ids useradd hands out (from 100000).
    guest_uids: tuple[int, int] = (70000, 79999)
    # a process away whose link home breaks is frozen where it is for this long (s),
    # waiting for home to reach it again; only then is it given up (or recovered at
    # home from its last checkpoint). Home's value counts: its guest hosts are told it.
    link_grace: float = 60.0
    # yes: mosrun refuses every call of the manual's LIMITATIONS, as the manual does; the
    # default answers those that keep their meaning on any node (docs/system-calls.md)
    strict_limitations: bool = False
    # no: processes move only when asked (mosmigrate, /proc/self/migrate, mosctl expel/bring),
    # never by the balancer; as "mosctl stay" would, but from the start and for good
    automatic_migration: bool = True

    @classmethod
    def default(cls) -> DaemonSettings:
        return cls()

    @classmethod
    def parse(cls, text: str, source: str) -> DaemonSettings:
        values: dict[str, Any] = {}
        lines: dict[str, int] = {}
        for number, content in content_lines(text):
            key, equals, raw = content.partition("=")
            key = key.strip()
            if not equals or not key:
                raise ConfigError(source, "expected 'key = value'", number)
            if key not in _PARSERS:
                raise ConfigError(source, f"unknown key {key!r} (known: {', '.join(_PARSERS)})", number)
            if key in lines:
                raise ConfigError(source, f"{key} is already set on line {lines[key]}", number)
            values[key] = _PARSERS[key](raw.strip(), source, number, key)
            lines[key] = number
        settings = attrs.evolve(cls(), **values)
        settings._check_consistent(source, lines)
        return settings

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> DaemonSettings:
        return cls.parse(read_text(path), os.fspath(path))

    def hooks_path(self, etc: Path) -> Path | None:
        if self.hooks_dir is None:
            return None
        return Path(etc) / self.hooks_dir

    def _check_consistent(self, source: str, lines: dict[str, int]) -> None:
        def line_of(*keys: str) -> int | None:
            return max((lines[key] for key in keys if key in lines), default=None)

        for first, second in (("tcp_port", "tcp_aux_port"), ("udp_port", "udp_aux_port")):
            if getattr(self, first) == getattr(self, second):
                raise ConfigError(
                    source,
                    f"{first} and {second} must differ (both are {getattr(self, first)})",
                    line_of(first, second),
                )
        if self.dead_after and self.dead_after <= self.gossip_interval:
            raise ConfigError(
                source,
                f"dead_after ({self.dead_after:g} s) must be longer than gossip_interval"
                f" ({self.gossip_interval:g} s), or 0 to let the daemon choose",
                line_of("dead_after", "gossip_interval"),
            )


_Parser = Callable[[str, str, int, str], Any]


def _integer(low: int, high: int) -> _Parser:
    def parse(raw: str, source: str, line: int, key: str) -> int:
        return parse_int(_one_word(raw, source, line, key), source, line, key, low, high)

    return parse


def _number(low: float, high: float, *, zero: bool = False) -> _Parser:
    def parse(raw: str, source: str, line: int, key: str) -> float:
        word = _one_word(raw, source, line, key)
        if zero and _is_zero(word):
            return 0.0
        return parse_float(word, source, line, key, low, high)

    return parse


def _choice(options: tuple[str, ...]) -> _Parser:
    def parse(raw: str, source: str, line: int, key: str) -> str:
        word = _one_word(raw, source, line, key)
        if word not in options:
            raise ConfigError(source, f"{key} must be one of {', '.join(options)}, not {word!r}", line)
        return word

    return parse


def _directory(raw: str, source: str, line: int, key: str) -> str | None:
    if not raw:
        return None
    if "\0" in raw or len(raw.encode("utf-8", "surrogatepass")) > 4095:
        raise ConfigError(source, f"{key} is not a usable directory name", line)
    return raw


def _plugin_names(raw: str, source: str, line: int, key: str) -> tuple[str, ...]:
    names = [name.strip() for name in raw.split(",")] if raw else []
    for name in names:
        if not _PLUGIN_NAME.fullmatch(name):
            raise ConfigError(
                source, f"{key}: {name!r} is not a plugin name (use a comma-separated list of names)", line
            )
    return tuple(dict.fromkeys(names))


def _uid_range(raw: str, source: str, line: int, key: str) -> tuple[int, int]:
    word = "".join(raw.split())  # "70000 - 79999" too
    first, dash, last = word.partition("-")
    if not dash or not first or not last:
        raise ConfigError(source, f"{key} must be a range of uids 'FIRST-LAST', not {word!r}", line)
    # below 1000 are the system's own accounts; 2^31 and above trip signed uid_t in some tools
    low, high = (
        parse_int(first, source, line, key, GUEST_UID_MIN, GUEST_UID_MAX),
        parse_int(last, source, line, key, GUEST_UID_MIN, GUEST_UID_MAX),
    )
    if low > high:
        raise ConfigError(source, f"{key}: the first uid ({low}) is above the last ({high})", line)
    if low <= NOBODY_UID <= high:
        raise ConfigError(source, f"{key} must not include {NOBODY_UID} (nobody, shared with NFS and others)", line)
    return low, high


def _one_word(raw: str, source: str, line: int, key: str) -> str:
    words = raw.split()
    if len(words) != 1:
        raise ConfigError(source, f"{key} needs one value, not {len(words)}", line)
    return words[0]


def _is_zero(word: str) -> bool:
    return bool(re.fullmatch(r"0+(\.0*)?", word, re.ASCII))


_PARSERS: dict[str, _Parser] = {
    "tcp_port": _integer(1, 65535),
    "tcp_aux_port": _integer(1, 65535),
    "udp_port": _integer(1, 65535),
    "udp_aux_port": _integer(1, 65535),
    "gossip_interval": _number(0.05, 60.0),
    "dead_after": _number(0.1, 86400.0, zero=True),
    "gossip_fanout": _integer(1, 16),
    "gossip_window": _integer(0, 65535),
    "max_datagram": _integer(512, 65000),
    "resources": _choice(RESOURCES),
    "virtual_cpus": _integer(1, 4096),
    "virtual_memory_mb": _integer(1, 2**30),
    "virtual_swap_mb": _integer(0, 2**30),
    "hooks_dir": _directory,
    "disabled_plugins": _plugin_names,
    "log_level": _choice(LOG_LEVELS),
    "wall_clock_tolerance_ms": _number(0.001, 60000.0, zero=True),
    "forward_spin_us": _number(1.0, 10000.0, zero=True),
    "guest_uids": _uid_range,
    "link_grace": _number(0.1, 86400.0, zero=True),
    "strict_limitations": lambda raw, source, line, key: _choice(("yes", "no"))(raw, source, line, key) == "yes",
    "automatic_migration": lambda raw, source, line, key: _choice(("yes", "no"))(raw, source, line, key) == "yes",
}
