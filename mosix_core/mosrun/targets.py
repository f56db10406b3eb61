"""Where a move goes: the one resolver of a migration's target.

``mosmigrate {pid} {node-number | IP-address | host | home}``, ``/proc/self/migrate``
(a logical node number or the unsigned value of an IP address; 0 is home) and mosrun's
``-r{host}``/``-{n}``/``-{a.b.c.d}`` all name a node the same ways, and all go through
:func:`resolve` before anything is sent: a node the configuration does not know is the
manual's "failed migrating to {computer}: not in map" at once, in the tool that was asked
(mosd, which opens the way, checks again with the same configuration method,
:meth:`mosix_core.config.MosixConfig.resolve_node`).
"""

from __future__ import annotations

from ipaddress import IPv4Address

import attrs

from mosix_core.contract.records import TOO_BUSY
from mosix_core.errors import MosixError, NotInMap

#: the words (and /proc/self/migrate's value 0) that mean the process's home node
HOME_WORDS = ("home", "0")
NOT_IN_MAP = "not in map"


class UnknownTarget(MosixError):
    """The node named is not in the cluster's map (nor a partner's): the manual's message."""

    def __init__(self, named: str) -> None:
        self.named = named
        super().__init__(failed_migrating(named, NOT_IN_MAP))


def failed_migrating(computer: str, reason: str) -> str:
    """mosrun(1)'s "failed migrating to {computer}: {reason}" (with the one reason that
    has its own wording)."""
    if reason == TOO_BUSY:
        return f"{computer} is {TOO_BUSY}"
    return f"failed migrating to {computer}: {reason}"


@attrs.frozen
class MoveTarget:
    """A resolved target: home, or the node's address as the map knows it. ``named``
    is what the user or program wrote, for messages."""

    named: str
    address: IPv4Address | None = None  # None: home

    @property
    def home(self) -> bool:
        return self.address is None

    @property
    def text(self) -> str:
        """As mosd's ``migrate_out`` takes it."""
        return "home" if self.address is None else str(self.address)


HOME = MoveTarget("home")


def resolve(config, named: str) -> MoveTarget:
    """The target ``named`` (a node number, IP address, host name, "home" or 0) means
    under ``config`` (a :class:`~mosix_core.config.MosixConfig`, None where this node
    has no configuration). Raises :class:`UnknownTarget`."""
    named = named.strip()
    if named in HOME_WORDS:
        return HOME
    if config is None:
        raise UnknownTarget(named)
    try:
        return MoveTarget(named, config.resolve_node(named))
    except NotInMap:
        raise UnknownTarget(named) from None


def proc_value_text(value: int) -> str:
    """``/proc/self/migrate``'s value as a node is named: a logical node number, or the
    unsigned value of an IP address (host order)."""
    return str(value) if value <= 65535 else str(IPv4Address(value))
