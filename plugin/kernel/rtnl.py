"""The few rtnetlink requests on a container's path, on a socket of our own.

Why not pyroute2 for these: it builds and decodes every message in Python through its generic
attribute machinery, about 0.6 ms a call, and a container's veth took four calls (measured by
scripts/bench.py's per-call figures). Here each request is a handful of struct.pack calls and the
reply is read for the fields pybridge uses: a request and its answer cost some tens of
microseconds. pyroute2 stays for what is rare (dumps of routes, addresses, bridges).

Pure where it can be: `encode_*` build requests (bytes), `decode_link` reads one RTM_NEWLINK,
`replies` splits a datagram. `Rtnl` is the socket: one per thread, in the host's namespace or in
a named one (opened from a short-lived thread that enters it, so no thread of the plugin ever
changes namespace). Names reaching a request have been checked by the caller (is_valid_ifname)
and are NUL-terminated attributes, never text a tool parses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct
import threading
from typing import Iterator

from .interfaces import LinkInfo

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port
NLMSGERR = struct.Struct("=i")  # error (negative errno), followed by the request's header
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
RTATTR = struct.Struct("=HH")

NETLINK_ROUTE = 0
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
AF_UNSPEC, AF_BRIDGE = 0, 7
IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_PROTINFO, IFLA_LINKINFO, IFLA_EXT_MASK = 12, 18, 29
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_BRPORT_MODE = 4  # hairpin
RTEXT_FILTER_SKIP_STATS = 1 << 3  # (a link's statistics are most of a reply: not asked for)
CLONE_NEWNET = 0x40000000


class RtnlError(OSError):
    """The kernel refused a request: errno is its answer."""


def align(n: int) -> int:
    """Netlink pads messages and attributes to 4 bytes."""
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    length = RTATTR.size + len(payload)
    return RTATTR.pack(length, kind) + payload + b"\0" * (align(length) - length)


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def name_attr(name: str) -> bytes:
    raw = name.encode("ascii")
    if not raw or len(raw) > 15 or b"\0" in raw or b"/" in raw:
        raise ValueError(f"not an interface name: {name!r}")
    return attr(IFLA_IFNAME, raw + b"\0")


def mac_attr(mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return attr(IFLA_ADDRESS, raw)


def u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def message(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), mtype, flags | NLM_F_REQUEST, seq, 0) + body


def ifinfo(index: int = 0, family: int = AF_UNSPEC, up: bool | None = None) -> bytes:
    flags = IFF_UP if up else 0
    change = IFF_UP if up is not None else 0
    return IFINFOMSG.pack(family, 0, index, flags, change)


def encode_get(seq: int, name: str) -> bytes:
    body = ifinfo() + name_attr(name) + u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
    return message(RTM_GETLINK, 0, seq, body)


def encode_get_index(seq: int, index: int) -> bytes:
    return message(RTM_GETLINK, 0, seq, ifinfo(index) + u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS))


def encode_veth(seq: int, host: str, peer: str, master: int, mtu: int, mac: str) -> bytes:
    """A veth pair, `host` up and enslaved to `master`, `peer` with the MAC (both with the MTU),
    refused if either exists (NLM_F_EXCL)."""
    peer_info = ifinfo() + name_attr(peer) + mac_attr(mac) + u32(IFLA_MTU, mtu)
    body = (
        ifinfo(up=True)
        + name_attr(host)
        + u32(IFLA_MTU, mtu)
        + u32(IFLA_MASTER, master)
        + nested(IFLA_LINKINFO, attr(IFLA_INFO_KIND, b"veth"), nested(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer_info)))
    )
    return message(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq, body)


def encode_hairpin(seq: int, index: int, on: bool = True) -> bytes:
    """The bridge port's hairpin mode (what `bridge link set dev X hairpin on` sends)."""
    body = ifinfo(index, AF_BRIDGE) + nested(IFLA_PROTINFO, attr(IFLA_BRPORT_MODE, bytes([1 if on else 0])))
    return message(RTM_SETLINK, NLM_F_ACK, seq, body)


def encode_delete(seq: int, index: int) -> bytes:
    return message(RTM_DELLINK, NLM_F_ACK, seq, ifinfo(index))


def encode_up(seq: int, index: int, up: bool) -> bytes:
    return message(RTM_NEWLINK, NLM_F_ACK, seq, ifinfo(index, up=up))


def attributes(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in data[start:end]."""
    while start + RTATTR.size <= end:
        length, kind = RTATTR.unpack_from(data, start)
        if length < RTATTR.size or start + length > end:
            return
        yield kind & NLA_TYPE_MASK, start + RTATTR.size, start + length
        start += align(length)


def info_kind(data: bytes, start: int, end: int) -> str:
    """The kind ("bridge", "veth", ...) in an IFLA_LINKINFO's payload, data[start:end]."""
    for inner, c, d in attributes(data, start, end):
        if inner == IFLA_INFO_KIND:
            return data[c:d].split(b"\0", 1)[0].decode("ascii", "replace")
    return ""


def decode_link(data: bytes, start: int, end: int) -> LinkInfo:
    """One RTM_NEWLINK's body (data[start:end], after the header)."""
    if start + IFINFOMSG.size > end:
        raise ValueError("a link message too short for its header")
    index = IFINFOMSG.unpack_from(data, start)[2]
    name, kind, mtu, master, mac = "", "", 0, None, ""
    for t, a, b in attributes(data, start + IFINFOMSG.size, end):
        if t == IFLA_IFNAME:
            name = data[a:b].split(b"\0", 1)[0].decode("ascii", "replace")
        elif t == IFLA_MTU and b - a == 4:
            mtu = struct.unpack_from("=I", data, a)[0]
        elif t == IFLA_MASTER and b - a == 4:
            master = struct.unpack_from("=I", data, a)[0]
        elif t == IFLA_ADDRESS and b - a == 6:
            mac = ":".join(f"{x:02x}" for x in data[a:b])
        elif t == IFLA_LINKINFO:
            kind = info_kind(data, a, b)
    return LinkInfo(name, index, kind, mtu, master, mac)


def replies(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(type, sequence, body start, body end) of each message in one datagram."""
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, mtype, _flags, seq, _port = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            return
        yield mtype, seq, offset + NLMSGHDR.size, offset + length
        offset += align(length)


_libc = None


def _setns(fd: int) -> None:
    global _libc
    if hasattr(os, "setns"):
        os.setns(fd, CLONE_NEWNET)
        return
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def open_socket(netns: str | None = None) -> socket.socket:
    """A NETLINK_ROUTE socket in the host's namespace, or in /run/netns/NAME: made by a thread
    that enters the namespace and ends (a socket keeps the namespace it was made in)."""
    if netns is None:
        return _bound(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE))
    made: list[socket.socket | BaseException] = []

    def inside() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE))
        except BaseException as e:  # handed to the caller
            made.append(e)

    t = threading.Thread(target=inside, name="pybridge-netns-socket")
    t.start()
    t.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return _bound(made[0])


def _bound(sock: socket.socket) -> socket.socket:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, 0))
        sock.settimeout(10.0)  # the kernel answers at once: a silent socket is dropped (Netlink)
    except BaseException:
        sock.close()
        raise
    return sock


class Rtnl:
    """One rtnetlink socket: a request, then its answer (an ack, an error, or one link). Not
    shared between threads (Netlink keeps one per thread)."""

    def __init__(self, netns: str | None = None):
        self.sock = open_socket(netns)
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def _next(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF or 1
        return self._seq

    def _call(self, request: bytes, seq: int) -> LinkInfo | None:
        """Send, and read until the answer to `seq`: None for an ack, the link for a get.
        Messages of other sequences (late answers of an interrupted call) are skipped."""
        self.sock.send(request)
        while True:
            data = self.sock.recv(1 << 16)
            for mtype, got, a, b in replies(data):
                if got != seq:
                    continue
                if mtype == NLMSG_ERROR:
                    code = -NLMSGERR.unpack_from(data, a)[0] if a + NLMSGERR.size <= b else errno.EPROTO
                    if code:
                        raise RtnlError(code, os.strerror(code))
                    return None
                if mtype == RTM_NEWLINK:
                    return decode_link(data, a, b)
                if mtype == NLMSG_DONE:
                    return None

    def link(self, name: str) -> LinkInfo | None:
        """The link of that name; None when there is none (nor can be: not a name)."""
        try:
            seq = self._next()
            request = encode_get(seq, name)
        except (ValueError, UnicodeEncodeError):
            return None
        try:
            return self._call(request, seq)
        except RtnlError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise

    def link_by_index(self, index: int) -> LinkInfo | None:
        try:
            seq = self._next()
            return self._call(encode_get_index(seq, index), seq)
        except RtnlError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise

    def add_veth(self, host: str, peer: str, master: int, mtu: int, mac: str) -> None:
        seq = self._next()
        self._call(encode_veth(seq, host, peer, master, mtu, mac), seq)

    def hairpin(self, index: int) -> None:
        seq = self._next()
        self._call(encode_hairpin(seq, index), seq)

    def delete(self, index: int) -> None:
        seq = self._next()
        self._call(encode_delete(seq, index), seq)

    def set_up(self, index: int, up: bool) -> None:
        seq = self._next()
        self._call(encode_up(seq, index, up), seq)
