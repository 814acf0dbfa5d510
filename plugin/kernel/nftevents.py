"""nftables change notifications read from the kernel in the plugin's own process: what
`nft monitor` printed, without a process of its own (7 MB of memory) or text to parse.

The kernel sends every committed nftables change to the multicast group NFNLGRP_NFTABLES of
NETLINK_NETFILTER sockets: one message per object added or deleted (table, chain, rule, set,
element, ...), then one NEWGEN message that ends the transaction and names the process that
committed it. Every object message carries its table's name as attribute 1 and the family in
its nfgenmsg header; chain and rule messages name their chain (attribute 3 and 2). That is all
the firewall watchdog needs: was our table, or a chain our static rules live in, touched by a
transaction that was not ours? (linux/netfilter/nf_tables.h, linux/netfilter/nfnetlink.h.)

Messages are parsed into types; anything that does not fit (short, truncated, unknown) is
skipped, never raised: a message we cannot read is treated by the caller as "something
happened" only through an overrun (ENOBUFS), which makes it check.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NLMSG_HDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port
NFGENMSG = struct.Struct("=BBH")  # family, version, resource id (big endian)
NLATTR = struct.Struct("=HH")  # length, type

# message type (low byte) -> (verb, kind, attribute holding the chain name or 0)
MESSAGES = {
    0: ("add", "table", 0),
    2: ("delete", "table", 0),
    26: ("delete", "table", 0),
    3: ("add", "chain", 3),
    5: ("delete", "chain", 3),
    27: ("delete", "chain", 3),
    6: ("add", "rule", 2),
    8: ("delete", "rule", 2),
    28: ("delete", "rule", 2),
    9: ("add", "set", 0),
    11: ("delete", "set", 0),
    29: ("delete", "set", 0),
    12: ("add", "element", 0),
    14: ("delete", "element", 0),
    30: ("delete", "element", 0),
    18: ("add", "object", 0),
    20: ("delete", "object", 0),
    31: ("delete", "object", 0),
    22: ("add", "flowtable", 0),
    24: ("delete", "flowtable", 0),
    32: ("delete", "flowtable", 0),
}
NEWGEN = 15
GEN_PROC_NAME = 3
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}


@dataclass(frozen=True)
class Change:
    verb: str  # add | delete
    kind: str  # table | chain | rule | set | element | object | flowtable
    family: str  # inet | ip | ip6 | ...
    table: str
    chain: str = ""  # chain and rule messages


@dataclass(frozen=True)
class Generation:
    """The end of one transaction, and the name (comm) of the task that committed it."""

    process: str


def _attributes(data: bytes, start: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while start + NLATTR.size <= end:
        length, kind = NLATTR.unpack_from(data, start)
        if length < NLATTR.size or start + length > end:
            break
        out.setdefault(kind & 0x3FFF, data[start + NLATTR.size : start + length])
        start += (length + 3) & ~3
    return out


def _text(value: bytes | None) -> str:
    return (value or b"").split(b"\0", 1)[0].decode("utf-8", "replace")


def parse(data: bytes) -> list[Change | Generation]:
    """The nftables notifications in one datagram, in order."""
    events: list[Change | Generation] = []
    offset = 0
    while offset + NLMSG_HDR.size <= len(data):
        length, mtype, _, _, _ = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDR.size or offset + length > len(data):
            break
        body, end = offset + NLMSG_HDR.size, offset + length
        offset += (length + 3) & ~3
        if mtype >> 8 != NFNL_SUBSYS_NFTABLES or body + NFGENMSG.size > end:
            continue
        family = data[body]
        attrs = _attributes(data, body + NFGENMSG.size, end)
        kind = mtype & 0xFF
        if kind == NEWGEN:
            events.append(Generation(_text(attrs.get(GEN_PROC_NAME))))
        elif kind in MESSAGES:
            verb, what, chain_attr = MESSAGES[kind]
            events.append(
                Change(
                    verb,
                    what,
                    FAMILIES.get(family, str(family)),
                    _text(attrs.get(1)),
                    _text(attrs.get(chain_attr)) if chain_attr else "",
                )
            )
    return events


def open_socket(rcvbuf: int = 4 << 20) -> socket.socket:
    """A netlink socket that receives every committed nftables change of this network
    namespace (needs CAP_NET_ADMIN)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, 0))
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
    except OSError:
        sock.close()
        raise
    return sock
