"""Node addresses as MOSIX allows them: dotted quads or host names, and ranges of them.

MOSIX reserves 0.0.x.x and 255.255.255.x, so a usable address, and every
address of a range, lies in 0.1.0.0 .. 255.255.254.255.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from ipaddress import IPv4Address

from mosix_core.errors import ConfigError

#: Turns a host name into a dotted quad, like ``socket.gethostbyname`` (the manual:
#: "the first result of gethostbyname(3)"). Tests pass their own to stay off DNS.
Resolver = Callable[[str], str]

LOWEST = IPv4Address("0.1.0.0")
HIGHEST = IPv4Address("255.255.254.255")
_ALL_ONES = 0xFFFFFFFF

_DOTTED = re.compile(r"[0-9.]+", re.ASCII)
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", re.ASCII)


def parse_address(token: str, source: str, line: int | None, what: str = "address") -> IPv4Address:
    """A dotted quad ``a.b.c.d`` that MOSIX allows."""
    try:
        address = IPv4Address(token)
    except ValueError:
        raise ConfigError(source, f"{what} {token!r} is not an IP address of the form a.b.c.d", line) from None
    check_allowed(address, source, line)
    return address


def parse_node(
    token: str, source: str, line: int | None, resolve: Resolver | None = None
) -> tuple[IPv4Address, str | None]:
    """A node given as a dotted quad or a host name: ``(address, host name or None)``."""
    if is_numeric(token):
        return parse_address(token, source, line), None
    if not is_host_name(token):
        raise ConfigError(source, f"{token!r} is neither an IP address (a.b.c.d) nor a host name", line)
    return resolve_host(token, source, line, resolve), token


def is_numeric(token: str) -> bool:
    """Digits and dots are an address attempt, never a name: a resolver would read
    "10.1" the inet_aton way, as 10.0.0.1."""
    return bool(_DOTTED.fullmatch(token))


def is_host_name(token: str) -> bool:
    """RFC 1123 syntax (plus '_', which sites use): checked before any resolver sees it."""
    if is_numeric(token):
        return False
    name = token.removesuffix(".")
    if not name or len(name) > 253:
        return False
    return all(_LABEL.fullmatch(label) for label in name.split("."))


def resolve_host(name: str, source: str, line: int | None, resolve: Resolver | None = None) -> IPv4Address:
    """The address of ``name`` by the resolver's first answer, checked like a written address."""
    lookup = resolve or socket.gethostbyname
    try:
        answer = lookup(name)
        address = IPv4Address(answer)
    except (OSError, UnicodeError, ValueError, TypeError):
        raise ConfigError(source, f"cannot resolve host name {name!r}", line) from None
    try:
        check_allowed(address, source, line)
    except ConfigError as err:
        raise ConfigError(source, f"host name {name!r} resolves to {address}: {err.reason}", line) from None
    return address


def check_allowed(address: IPv4Address, source: str, line: int | None) -> None:
    if address < LOWEST:
        raise ConfigError(source, f"address {address} is not allowed in MOSIX (0.0.x.x is reserved)", line)
    if address > HIGHEST:
        raise ConfigError(source, f"address {address} is not allowed in MOSIX (255.255.255.x is reserved)", line)


def check_range(first: IPv4Address, count: int, source: str, line: int | None) -> None:
    """Every address of ``first .. first+count-1`` must be allowed (``first`` already is)."""
    last = int(first) + count - 1
    if last > int(HIGHEST):
        if last > _ALL_ONES:
            beyond = "past 255.255.255.255"
        else:
            beyond = "into 255.255.255.x, which MOSIX reserves"
        raise ConfigError(source, f"the range of {count} nodes from {first} runs {beyond}", line)


def as_address(value: object) -> IPv4Address | None:
    """An address given as IPv4Address, text or integer; None when it is not one.

    Lookups take what callers have at hand (a peer's socket address is text)
    without making a typo an exception.
    """
    if isinstance(value, IPv4Address):
        return value
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        try:
            return IPv4Address(value)
        except ValueError:
            return None
    return None
