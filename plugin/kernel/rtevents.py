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

from .rtnl import IFINFOMSG, IFLA_LINKINFO, NLMSGHDR, align, attributes, info_kind

RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags

RTM_NEWLINK, RTM_DELLINK, RTM_NEWROUTE, RTM_DELROUTE = 16, 17, 24, 25
RTA_GATEWAY, RTA_MULTIPATH, RTA_VIA = 5, 9, 18


@dataclass(frozen=True)
class LinkEvent:
    index: int
    kind: str  # "bridge", "veth", ... ("" when the message does not say)
    removed: bool


@dataclass(frozen=True)
class GatewayRouteEvent:
    """A default route, or a route through a gateway, was added or removed."""


def _link_kind(data: bytes, start: int, end: int) -> str:
    for kind, a, b in attributes(data, start, end):
        if kind == IFLA_LINKINFO:
            return info_kind(data, a, b)
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
            kinds = {k for k, _, _ in attributes(data, body + RTMSG.size, end)}
            if dst_len == 0 or kinds & {RTA_GATEWAY, RTA_MULTIPATH, RTA_VIA}:
                yield GatewayRouteEvent()
        offset += align(length)
