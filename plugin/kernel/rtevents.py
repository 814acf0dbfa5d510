"""Just enough of rtnetlink's wire format to tell which events could change the set of bridges
that are not ours: a link's kind, and whether a route goes through a gateway. Pure: bytes in,
events out.

Why not pyroute2 here: it decodes every attribute of every message in Python, about half a
millisecond each, and a container start brings some thirty link and route events (measured: 15
ms of CPU per container, under the GIL the plugin's handlers need). pyroute2 still opens and
subscribes the socket; this reads the two fields it needs and skips the rest.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
RTATTR = struct.Struct("=HH")  # length, type

RTM_NEWLINK, RTM_DELLINK, RTM_NEWROUTE, RTM_DELROUTE = 16, 17, 24, 25
IFLA_LINKINFO, IFLA_INFO_KIND = 18, 1
RTA_GATEWAY, RTA_MULTIPATH, RTA_VIA = 5, 9, 18
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER


@dataclass(frozen=True)
class LinkEvent:
    index: int
    kind: str  # "bridge", "veth", ... ("" when the message does not say)
    removed: bool


@dataclass(frozen=True)
class GatewayRouteEvent:
    """A default route, or a route through a gateway, was added or removed."""


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attributes(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in data[start:end]."""
    while start + RTATTR.size <= end:
        length, kind = RTATTR.unpack_from(data, start)
        if length < RTATTR.size or start + length > end:
            return
        yield kind & NLA_TYPE_MASK, start + RTATTR.size, start + length
        start += _align(length)


def _link_kind(data: bytes, start: int, end: int) -> str:
    for kind, a, b in _attributes(data, start, end):
        if kind == IFLA_LINKINFO:
            for inner, c, d in _attributes(data, a, b):
                if inner == IFLA_INFO_KIND:
                    return data[c:d].split(b"\0", 1)[0].decode("ascii", "replace")
    return ""


def events(data: bytes) -> Iterator[LinkEvent | GatewayRouteEvent]:
    """The link and gateway-route events in one datagram read from an rtnetlink socket. What
    is malformed or of another type is skipped."""
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, mtype = NLMSGHDR.unpack_from(data, offset)[:2]
        if length < NLMSGHDR.size or offset + length > len(data):
            return
        body, end = offset + NLMSGHDR.size, offset + length
        if mtype in (RTM_NEWLINK, RTM_DELLINK) and body + IFINFOMSG.size <= end:
            index = IFINFOMSG.unpack_from(data, body)[2]
            yield LinkEvent(index, _link_kind(data, body + IFINFOMSG.size, end), mtype == RTM_DELLINK)
        elif mtype in (RTM_NEWROUTE, RTM_DELROUTE) and body + RTMSG.size <= end:
            dst_len = RTMSG.unpack_from(data, body)[1]
            kinds = {k for k, _, _ in _attributes(data, body + RTMSG.size, end)}
            if dst_len == 0 or kinds & {RTA_GATEWAY, RTA_MULTIPATH, RTA_VIA}:
                yield GatewayRouteEvent()
        offset += _align(length)
