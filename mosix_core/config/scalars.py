"""The one-value files of mosix(7): ``speed``, ``mosip``, ``retainpri``, ``maxguests``,
``secret``; and the choice of our own address, which ``mosip`` exists to settle.

Comment lines (``#``) and blank lines are allowed around the value, so the
sample tree can explain each file in place.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from ipaddress import IPv4Address
from pathlib import Path

from attrs import frozen

from mosix_core.config.addresses import parse_address
from mosix_core.config.interfaces import interface_addresses
from mosix_core.config.mosixmap import ClusterMap
from mosix_core.config.source import data_lines, read_bytes
from mosix_core.config.tokens import parse_int
from mosix_core.errors import ConfigError

DEFAULT_SPEED = 10000
MAX_SPEED = 10_000_000
# Seconds and process counts beyond a signed 32-bit integer are typos, not policies.
_MAX_INT = 2**31 - 1


@frozen
class MaxGuests:
    """The limit on guests from other clusters; ``saved`` is the limit ``mosctl closemulti``
    replaced, for ``mosctl openmulti`` to restore."""

    limit: int
    saved: int | None = None

    def render(self) -> str:
        """The file's content, for ``mosctl`` to write back."""
        return f"{self.limit}\n" if self.saved is None else f"{self.limit} {self.saved}\n"


def parse_speed(text: str, source: str) -> int:
    number, fields = _value_line(text, source, "a positive integer (the processor's relative speed)")
    return parse_int(fields[0], source, number, "the speed", 1, MAX_SPEED)


def parse_mosip(text: str, source: str) -> IPv4Address:
    number, fields = _value_line(text, source, "our IP address (a.b.c.d)")
    return parse_address(fields[0], source, number, what="our IP address")


def parse_retainpri(text: str, source: str) -> int:
    number, fields = _value_line(text, source, "a delay in seconds")
    return parse_int(fields[0], source, number, "the delay", 0, _MAX_INT)


def parse_maxguests(text: str, source: str) -> MaxGuests:
    number, fields = _value_line(text, source, "the maximum number of guests", max_fields=2)
    limit = parse_int(fields[0], source, number, "the maximum number of guests", 0, _MAX_INT)
    saved = None
    if len(fields) == 2:
        saved = parse_int(fields[1], source, number, "the saved maximum (second number)", 0, _MAX_INT)
    return MaxGuests(limit=limit, saved=saved)


def load_secret(etc: Path) -> bytes:
    """The cluster's shared password from ``etc/secret``, which only root may read."""
    path = Path(etc) / "secret"
    source = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ConfigError(source, "file not found (every node needs the cluster's secret)") from None
    except OSError as err:
        raise ConfigError(source, f"cannot read: {err.strerror or err}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(source, "not a regular file")
    # Whoever can read the secret can forge peer messages: refuse it, do not warn.
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(source, "must be accessible to root only (chmod 600)")
    lines = read_bytes(path).split(b"\n")
    secret = lines[0].rstrip()
    if any(line.strip() for line in lines[1:]):
        raise ConfigError(source, "must contain a single line (the password)", 2)
    if not secret:
        raise ConfigError(source, "empty: the first line must be the password", 1)
    return secret


def detect_our_ip(
    cluster: ClusterMap,
    mosip: IPv4Address | None,
    override: str | None = None,
    *,
    mosip_path: str | os.PathLike[str] | None = None,
    interfaces: Iterable[IPv4Address] | None = None,
) -> IPv4Address:
    """Our address for MOSIX: ``mossetpe -p`` beats ``mosip`` beats the one interface
    address that the map lists."""
    where = os.fspath(mosip_path) if mosip_path is not None else os.path.join(os.path.dirname(cluster.source), "mosip")
    if override is not None:
        chosen = parse_address(override.strip(), "mossetpe -p", None, what="our IP address")
    elif mosip is not None:
        chosen = mosip
    else:
        present = list(interfaces) if interfaces is not None else interface_addresses()
        listed = [address for address in dict.fromkeys(present) if cluster.contains(address)]
        if not listed:
            shown = ", ".join(str(a) for a in present) or "none"
            raise ConfigError(
                where,
                f"our IP address is not in the map: none of this machine's addresses ({shown}) is listed"
                f" in {cluster.source}; create mosip with the address to use",
            )
        if len(listed) > 1:
            shown = ", ".join(str(a) for a in listed)
            raise ConfigError(
                where,
                f"our IP address is ambiguous: {shown} are all listed in {cluster.source};"
                " create mosip with the one to use",
            )
        chosen = listed[0]
    if not cluster.contains(chosen):
        raise ConfigError(cluster.source, f"our address {chosen} is not in mosix.map")
    return chosen


def _value_line(text: str, source: str, what: str, max_fields: int = 1) -> tuple[int, list[str]]:
    found = None
    for number, fields in data_lines(text):
        if found is not None:
            raise ConfigError(source, f"only one line is allowed ({what})", number)
        if len(fields) > max_fields:
            raise ConfigError(source, f"expected {what}, found {len(fields)} fields", number)
        found = number, fields
    if found is None:
        raise ConfigError(source, f"empty: expected {what}")
    return found
