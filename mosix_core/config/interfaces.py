"""The IPv4 addresses configured on this machine's interfaces.

Read through rtnetlink, which lists secondary addresses too (``127.0.0.2``
added to ``lo`` is one); ``SIOCGIFCONF`` shows only one address per interface
label and is the fallback where netlink is unavailable.
"""

from __future__ import annotations

import array
import fcntl
import socket
import struct
from ipaddress import IPv4Address

_NLMSG = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index
_RTATTR = struct.Struct("=HH")  # length, type
_RTM_NEWADDR = 20
_RTM_GETADDR = 22
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_IFA_ADDRESS = 1
_IFA_LOCAL = 2
_SIOCGIFCONF = 0x8912
_IFREQ_SIZE = 40  # struct ifreq on 64-bit Linux


def interface_addresses() -> list[IPv4Address]:
    """Every IPv4 address of every interface, each once, in the kernel's order."""
    try:
        found = _netlink_addresses()
    except OSError:
        found = _ioctl_addresses()
    return list(dict.fromkeys(found))


def _netlink_addresses() -> list[IPv4Address]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(5.0)
        sock.bind((0, 0))
        request = _NLMSG.pack(
            _NLMSG.size + _IFADDRMSG.size, _RTM_GETADDR, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0
        ) + _IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)
        sock.send(request)
        addresses: list[IPv4Address] = []
        while True:
            data = sock.recv(65536)
            if not data:
                raise OSError("netlink closed the dump early")
            if _parse_dump(data, addresses):
                return addresses


def _parse_dump(data: bytes, addresses: list[IPv4Address]) -> bool:
    """Append the addresses of one netlink datagram; True once the dump is complete."""
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _, _, _ = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            raise OSError("malformed netlink message")
        if kind == _NLMSG_DONE:
            return True
        if kind == _NLMSG_ERROR:
            raise OSError("netlink refused the address dump")
        if kind == _RTM_NEWADDR:
            family = data[offset + _NLMSG.size]
            if family == socket.AF_INET:
                attributes = _attributes(data, offset + _NLMSG.size + _IFADDRMSG.size, offset + length)
                # On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is ours.
                raw = attributes.get(_IFA_LOCAL) or attributes.get(_IFA_ADDRESS)
                if raw is not None and len(raw) == 4:
                    addresses.append(IPv4Address(raw))
        offset += _align(length)
    return False


def _attributes(data: bytes, start: int, end: int) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    position = start
    while position + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, position)
        if length < _RTATTR.size:
            break
        found.setdefault(kind, data[position + _RTATTR.size : position + length])
        position += _align(length)
    return found


def _align(length: int) -> int:
    return (length + 3) & ~3


def _ioctl_addresses() -> list[IPv4Address]:
    room = 64 * _IFREQ_SIZE
    buffer = array.array("B", bytes(room))
    pointer, _ = buffer.buffer_info()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        result = fcntl.ioctl(sock.fileno(), _SIOCGIFCONF, struct.pack("iL", room, pointer))
    used, _ = struct.unpack("iL", result)
    raw = buffer.tobytes()
    return [
        IPv4Address(raw[start + 20 : start + 24])  # sockaddr_in.sin_addr after the 16-byte name
        for start in range(0, used, _IFREQ_SIZE)
    ]
