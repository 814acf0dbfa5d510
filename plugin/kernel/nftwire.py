"""nf_tables on the wire, encoded and decoded by pybridge itself: the JSON commands that
plugin.kernel.nftrules writes (libnftables' JSON schema, the subset pybridge uses) compiled into
the kernel's netlink messages, and the kernel's answers about pybridge's own table decoded.

Why not libnftables: before running any command, libnftables fills a cache from the kernel, and
that cache takes in other tools' tables (every table's set declarations for an element change,
every chain for a listing; nft 1.0.6 their elements too). A table written by a newer nft made
nft 1.0.6 crash in that read, inside the plugin's worker, which then crash-looped (issue 18).
Here each request names pybridge's table and the kernel filters its dumps by it; nothing of
another table is ever decoded (plugin.kernel.nftsocket reads other tables' names, and
firewalld's rules' handles and comments, and nothing else).

Pure: no socket here. Everything outside the subset (an expression, a set type, a statement)
is refused with a KernelError that names it; every value is encoded by the type of what it is
compared with or stored in, and checked for it (plugin.kernel.nftrules checked it first).
"""

from __future__ import annotations

import ipaddress
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..domain.errors import KernelError

# message types (linux/netfilter/nf_tables.h, nfnetlink.h)
SUBSYS = 10
NEWTABLE, GETTABLE, DELTABLE = 0, 1, 2
NEWCHAIN, GETCHAIN = 3, 4
NEWRULE, GETRULE, DELRULE = 6, 7, 8
NEWSET, GETSET = 9, 10
NEWSETELEM, GETSETELEM, DELSETELEM = 12, 13, 14
BATCH_BEGIN, BATCH_END = 0x10, 0x11
NLM_F_CREATE, NLM_F_APPEND = 0x400, 0x800
NLA_F_NESTED = 0x8000
FAMILIES = {"inet": 1, "ip": 2, "ip6": 10}
FAMILY_NAMES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
NFPROTO = {"ipv4": 2, "ipv6": 10}
HOOKS = {"prerouting": 0, "input": 1, "forward": 2, "output": 3, "postrouting": 4}
HOOK_NAMES = {v: k for k, v in HOOKS.items()}
VERDICTS = {"drop": 0, "accept": 1, "return": -5, "jump": -3, "goto": -4}
SET_MAP = 0x8
MAX_NEST = 60000  # bytes of elements in one message (a netlink attribute holds < 64 KiB)

# data types: name -> (nftables type id, size in bytes, byte order for the set's user data)
HOST, BIG = 1, 2
TYPES: dict[str, tuple[int, int, int]] = {
    "ifname": (41, 16, HOST),
    "ipv4_addr": (7, 4, BIG),
    "ipv6_addr": (8, 16, BIG),
    "inet_proto": (12, 1, BIG),
    "inet_service": (13, 2, BIG),
    "mark": (19, 4, HOST),
    "nfproto": (2, 1, HOST),
    "ct_state": (26, 4, HOST),
    "ct_status": (28, 4, HOST),
    "fib_addrtype": (38, 4, HOST),
    "boolean": (39, 1, HOST),
    "iface_index": (20, 4, HOST),
    "uid": (24, 4, HOST),
    "raw32": (4, 4, BIG),  # 32 bits of a packet at some offset (nft's integer type)
}
PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items()}
CT_STATE = {"invalid": 1, "established": 2, "related": 4, "new": 8, "untracked": 64}
CT_STATUS = {"expected": 1, "seen-reply": 2, "assured": 4, "confirmed": 8, "snat": 16, "dnat": 32, "dying": 512}
FIB_TYPES = {
    "unspec": 0,
    "unicast": 1,
    "local": 2,
    "broadcast": 3,
    "anycast": 4,
    "multicast": 5,
    "blackhole": 6,
    "unreachable": 7,
    "prohibit": 8,
}
FLAGS = {"ct_state": CT_STATE, "ct_status": CT_STATUS}

# what an expression loads: meta key -> (kernel key, type); payload -> (base, offset, length, type, dependency)
META = {
    "mark": (3, "mark"),
    "iif": (4, "iface_index"),
    "iifname": (6, "ifname"),
    "oifname": (7, "ifname"),
    "skuid": (10, "uid"),
    "nfproto": (15, "nfproto"),
    "l4proto": (16, "inet_proto"),
}
PAYLOAD = {
    ("ip", "saddr"): (1, 12, 4, "ipv4_addr", ("nfproto", "ipv4")),
    ("ip", "daddr"): (1, 16, 4, "ipv4_addr", ("nfproto", "ipv4")),
    ("ip6", "saddr"): (1, 8, 16, "ipv6_addr", ("nfproto", "ipv6")),
    ("ip6", "daddr"): (1, 24, 16, "ipv6_addr", ("nfproto", "ipv6")),
    ("th", "sport"): (2, 0, 2, "inet_service", None),
    ("th", "dport"): (2, 2, 2, "inet_service", None),
    ("udp", "dport"): (2, 2, 2, "inet_service", ("l4proto", "udp")),
    ("tcp", "dport"): (2, 2, 2, "inet_service", ("l4proto", "tcp")),
}
CT_KEYS = {"state": (0, "ct_state"), "status": (2, "ct_status")}
FIB_RESULTS = {"oif": 1, "type": 3}
FIB_FLAGS = {"saddr": 1, "daddr": 2, "mark": 4, "iif": 8, "oif": 16}
FIB_PRESENT = 32
CMP_OPS = {"==": 0, "!=": 1}
ORDER_OPS = {"<": 2, "<=": 3, ">": 4, ">=": 5}  # compared in network byte order (nft's byteorder first)
BASES = {"ll": 0, "nh": 1, "th": 2}  # raw payload bases
# a typeof set's key, as nft describes it in the set's user data: the payload's protocol
# description and field ids (nftables' proto_desc_id and header templates), or a raw payload
TYPEOF_PAYLOAD = {("ip", "saddr"): (12, 11), ("ip6", "saddr"): (13, 8)}
EXPR_PAYLOAD, EXPR_CONCAT = 7, 13
UDATA_KEYBYTEORDER, UDATA_DATABYTEORDER, UDATA_KEY_TYPEOF = 0, 1, 3


# netlink attributes --------------------------------------------------------------------------


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + bytes(-length % 4)


def nest(kind: int, *parts: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(parts))


def text(value: str) -> bytes:
    return value.encode() + b"\0"


def u32(value: int) -> bytes:
    return struct.pack(">I", value & 0xFFFFFFFF)


def attributes(data: bytes, start: int = 0, end: int | None = None) -> dict[int, bytes]:
    """The attributes in data[start:end], by type (the first of each); a malformed tail is
    ignored, never raised."""
    end = len(data) if end is None else end
    out: dict[int, bytes] = {}
    while start + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, start)
        if length < 4 or start + length > end:
            break
        out.setdefault(kind & 0x3FFF, data[start + 4 : start + length])
        start += (length + 3) & ~3
    return out


def attribute_list(data: bytes) -> list[bytes]:
    """The payloads of a nested list (NFTA_LIST_ELEM ...), in order."""
    out, start = [], 0
    while start + 4 <= len(data):
        length, _ = struct.unpack_from("=HH", data, start)
        if length < 4 or start + length > len(data):
            break
        out.append(data[start + 4 : start + length])
        start += (length + 3) & ~3
    return out


def name_of(value: bytes | None) -> str:
    return (value or b"").split(b"\0", 1)[0].decode("utf-8", "replace")


def number(value: bytes | None) -> int:
    return struct.unpack(">I", value)[0] if value is not None and len(value) == 4 else 0


# values ----------------------------------------------------------------------------------------


def _fail(what: str, value: Any) -> KernelError:
    return KernelError(f"nftables: cannot encode {str(value)[:64]!r} as {what}")


def encode(kind: str, value: Any) -> bytes:
    """One value of a data type, as the kernel keeps it (unpadded)."""
    try:
        if kind == "ifname":
            raw: bytes = str(value).encode() if isinstance(value, str) else b""
            if not 0 < len(raw) < 16 or b"\0" in raw:
                raise ValueError
            return raw.ljust(16, b"\0")
        if kind == "ipv4_addr":
            return ipaddress.IPv4Address(value).packed
        if kind == "ipv6_addr":
            return ipaddress.IPv6Address(value).packed
        if kind == "inet_proto":
            return bytes([PROTOCOLS[value] if isinstance(value, str) else value])
        if kind == "inet_service":
            return struct.pack(">H", value)
        if kind == "nfproto":
            return bytes([NFPROTO[value]])
        if kind in ("mark", "iface_index", "uid"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError
            return struct.pack("=I", value)
        if kind == "raw32":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError
            return struct.pack(">I", value)
        if kind in FLAGS:
            names = [value] if isinstance(value, str) else value
            bits = 0
            for n in names:
                bits |= FLAGS[kind][n] if isinstance(n, str) else n
            return struct.pack("=I", bits)
        if kind == "fib_addrtype":
            return struct.pack("=I", FIB_TYPES[value])
        if kind == "boolean":
            if not isinstance(value, bool):
                raise ValueError
            return bytes([value])
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, struct.error):
        raise _fail(kind, value) from None
    raise KernelError(f"nftables: no encoding for data type {kind!r}")


def decode(kind: str, raw: bytes) -> Any:
    """One value of a data type from the kernel's bytes; None when they cannot be one."""
    size = TYPES[kind][1]
    if len(raw) != size:
        return None
    if kind == "ifname":
        name = raw.split(b"\0", 1)[0]
        return name.decode("utf-8", "replace") if name else None
    if kind == "ipv4_addr":
        return str(ipaddress.IPv4Address(raw))
    if kind == "ipv6_addr":
        return str(ipaddress.IPv6Address(raw))
    if kind == "inet_proto":
        return PROTOCOL_NAMES.get(raw[0], raw[0])
    if kind == "inet_service":
        return struct.unpack(">H", raw)[0]
    if kind == "mark":
        return struct.unpack("=I", raw)[0]
    if kind == "raw32":
        return struct.unpack(">I", raw)[0]
    return raw.hex()


def _padded(size: int) -> int:
    return (size + 3) & ~3


@dataclass(frozen=True)
class SetType:
    """A set's key (one type, or several concatenated) and, for a map, its data type."""

    key: tuple[str, ...]
    data: str | None = None
    # declared with typeof: each key part's expression, ("ip", "saddr") or ("raw", base, offset, length)
    typeof: tuple[tuple[Any, ...], ...] | None = None

    def __post_init__(self) -> None:
        for t in self.key + ((self.data,) if self.data else ()):
            if t not in TYPES:
                raise KernelError(f"nftables: unknown data type {t!r}")

    @property
    def key_type(self) -> int:
        if len(self.key) == 1:
            return TYPES[self.key[0]][0]
        out = 0
        for t in self.key:  # nftables' concatenated type id: 6 bits each
            out = (out << 6) | TYPES[t][0]
        return out

    @property
    def key_len(self) -> int:
        if len(self.key) == 1:
            return TYPES[self.key[0]][1]
        return sum(_padded(TYPES[t][1]) for t in self.key)

    def encode_key(self, key: Any) -> bytes:
        if len(self.key) == 1:
            return encode(self.key[0], key)
        parts = key.get("concat") if isinstance(key, dict) else key
        if not isinstance(parts, (list, tuple)) or len(parts) != len(self.key):
            raise _fail(" . ".join(self.key), key)
        out = b""
        for t, v in zip(self.key, parts):
            raw = encode(t, v)
            out += raw + bytes(_padded(len(raw)) - len(raw))
        return out

    def decode_key(self, raw: bytes) -> Any:
        """The key as nftrules keeps it (a value, or a tuple for a concatenation); None if the
        bytes cannot be one."""
        if len(self.key) == 1:
            return decode(self.key[0], raw)
        if len(raw) != self.key_len:
            return None
        parts, at = [], 0
        for t in self.key:
            size = TYPES[t][1]
            value = decode(t, raw[at : at + size])
            if value is None or any(raw[at + size : at + _padded(size)]):
                return None
            parts.append(value)
            at += _padded(size)
        return tuple(parts)


# expressions ----------------------------------------------------------------------------------


def _expr(name: str, *parts: bytes) -> bytes:
    return nest(1, attr(1, text(name)), nest(2, *parts))  # NFTA_LIST_ELEM: NAME, DATA


def _data(kind: int, value: bytes) -> bytes:
    return nest(kind, attr(1, value))  # NFTA_DATA_VALUE


def register(offset: int) -> int:
    """The register a value at this byte offset of the register file lands in, written as nft
    writes it: a 16-byte register where the offset is aligned to one, else a 32-bit one."""
    return 1 + offset // 16 if offset % 16 == 0 else 8 + offset // 4


def meta_load(key: int, dreg: int) -> bytes:
    return _expr("meta", attr(2, u32(key)), attr(1, u32(dreg)))


def meta_set(key: int, sreg: int) -> bytes:
    return _expr("meta", attr(2, u32(key)), attr(3, u32(sreg)))


def payload_load(base: int, offset: int, length: int, dreg: int) -> bytes:
    return _expr("payload", attr(1, u32(dreg)), attr(2, u32(base)), attr(3, u32(offset)), attr(4, u32(length)))


def ct_load(key: int, dreg: int) -> bytes:
    return _expr("ct", attr(1, u32(dreg)), attr(2, u32(key)))


def fib_load(result: int, flags: int, dreg: int) -> bytes:
    return _expr("fib", attr(1, u32(dreg)), attr(2, u32(result)), attr(3, u32(flags)))


def cmp(op: int, sreg: int, value: bytes) -> bytes:
    return _expr("cmp", attr(1, u32(sreg)), attr(2, u32(op)), _data(3, value))


def byteorder_hton(reg: int, size: int) -> bytes:
    return _expr(
        "byteorder", attr(1, u32(reg)), attr(2, u32(reg)), attr(3, u32(1)), attr(4, u32(size)), attr(5, u32(size))
    )  # NFT_BYTEORDER_HTON, len, element size


def bitwise(reg: int, mask: bytes, xor: bytes) -> bytes:
    return _expr(
        "bitwise", attr(1, u32(reg)), attr(2, u32(reg)), attr(3, u32(len(mask))), _data(4, mask), _data(5, xor)
    )


def lookup(name: str, sreg: int, dreg: int | None = None, invert: bool = False) -> bytes:
    parts = [attr(2, u32(sreg)), attr(1, text(name))]
    if dreg is not None:
        parts.append(attr(3, u32(dreg)))
    if invert:
        parts.append(attr(5, u32(1)))
    return _expr("lookup", *parts)


def verdict(kind: str, chain: str | None = None) -> bytes:
    body = attr(1, u32(VERDICTS[kind])) + (attr(2, text(chain)) if chain else b"")
    return _expr("immediate", attr(1, u32(0)), nest(2, nest(2, body)))


def dnat(family: int, addr_reg: int, port_reg: int) -> bytes:
    return _expr(
        "nat", attr(1, u32(1)), attr(2, u32(family)), attr(3, u32(addr_reg)), attr(5, u32(port_reg)), attr(7, u32(2))
    )  # DNAT; NF_NAT_RANGE_PROTO_SPECIFIED


def masquerade() -> bytes:
    return _expr("masq")


class _Rule:
    """One rule being compiled: its expressions, and the protocol dependencies it already has."""

    def __init__(self, sets: dict[str, SetType]):
        self.sets = sets
        self.out: list[bytes] = []
        self.deps: set[tuple[str, str]] = set()

    # what a value comes from -----------------------------------------------------------------
    def source(self, x: Any) -> tuple[str, int, object]:
        """(data type, size, how to load it) of one expression on the left of a match."""
        if isinstance(x, dict) and "meta" in x:
            key = x["meta"].get("key")
            if key not in META:
                raise KernelError(f"nftables: meta {key!r} is not supported")
            code, kind = META[key]
            return kind, TYPES[kind][1], lambda dreg: meta_load(code, dreg)
        if isinstance(x, dict) and "payload" in x and "base" in x["payload"]:  # raw: @th,96,32
            base, offset, length = _typeof_part(x)[1:]
            return "raw32", 4, lambda dreg: payload_load(BASES[base], offset // 8, length // 8, dreg)
        if isinstance(x, dict) and "payload" in x:
            p = x["payload"]
            spec = PAYLOAD.get((p.get("protocol"), p.get("field")))
            if spec is None:
                raise KernelError(f"nftables: payload {p.get('protocol')!r} {p.get('field')!r} is not supported")
            base, offset, length, kind, _ = spec
            return kind, length, lambda dreg: payload_load(base, offset, length, dreg)
        if isinstance(x, dict) and "ct" in x:
            key = x["ct"].get("key")
            if key not in CT_KEYS or x["ct"].get("dir"):
                raise KernelError(f"nftables: ct {key!r} is not supported")
            code, kind = CT_KEYS[key]
            return kind, 4, lambda dreg: ct_load(code, dreg)
        raise KernelError(f"nftables: expression {str(x)[:80]} is not supported")

    def needs(self, x: Any) -> None:
        """Emit what an expression on `x` depends on (nft's implicit matches: `ip daddr` in an
        inet table needs `meta nfproto ipv4`), once per rule, before the match that needs it."""
        items = x["concat"] if isinstance(x, dict) and "concat" in x else [x]
        for item in items:
            if isinstance(item, dict) and "payload" in item:
                p = item["payload"]
                dep = PAYLOAD.get((p.get("protocol"), p.get("field")), (0, 0, 0, "", None))[4]
                if dep is not None and dep not in self.deps:
                    key, value = dep
                    kind = META[key][1]
                    self.out += [meta_load(META[key][0], 1), cmp(0, 1, encode(kind, value))]
                    self.deps.add(dep)

    def load(self, x: Any, base: int = 0) -> tuple[list[str], int]:
        """Load x (one expression or a concatenation) into the registers from byte `base`; its
        types and its length."""
        items = x["concat"] if isinstance(x, dict) and "concat" in x else [x]
        kinds, at = [], base
        for item in items:
            kind, size, emit = self.source(item)
            self.out.append(emit(register(at)))  # type: ignore[operator]
            kinds.append(kind)
            at += _padded(size) if len(items) > 1 else size
        return kinds, at - base

    # statements -----------------------------------------------------------------------------
    def match(self, m: dict[str, Any]) -> None:
        op, left, right = m.get("op"), m.get("left"), m.get("right")
        self.needs(left)
        if left == {"meta": {"key": "l4proto"}} and op == "==" and isinstance(right, str):
            self.deps.add(("l4proto", right))  # `udp dport` after it needs no other
        if left == {"meta": {"key": "nfproto"}} and op == "==" and isinstance(right, str):
            self.deps.add(("nfproto", right))  # nor `ip daddr` after `meta nfproto ipv4`
        if isinstance(left, dict) and "&" in left:  # (x & mask) op value
            src, mask = left["&"]
            kinds, size = self.load(src)
            self.out.append(bitwise(1, encode(kinds[0], mask), bytes(size)))
            self.out.append(cmp(self._op(op), 1, encode(kinds[0], right)))
            return
        if isinstance(right, str) and right.startswith("@"):  # a named set
            if op not in CMP_OPS:
                raise KernelError(f"nftables: {op!r} with a set is not supported")
            self.load(left)
            self.out.append(lookup(self._set(right[1:]), 1, invert=op == "!="))
            return
        if isinstance(left, dict) and "fib" in left:
            self._fib(left["fib"], op, right)
            return
        if isinstance(right, dict) and "prefix" in right:
            self._prefix(left, op, right["prefix"])
            return
        kinds, size = self.load(left)
        kind = kinds[0]
        if op == "in" or (kind in FLAGS and isinstance(right, list)):  # any of these flags
            mask = encode(kind, right)
            self.out += [bitwise(1, mask, bytes(size)), cmp(1, 1, bytes(size))]
            return
        if op in ORDER_OPS:  # as nft: a host-order value is turned to network order first
            value = encode(kind, right)
            if TYPES[kind][2] == HOST and size > 1:
                self.out.append(byteorder_hton(1, size))
                value = value[::-1] if sys.byteorder == "little" else value
            self.out.append(cmp(ORDER_OPS[op], 1, value))
            return
        self.out.append(cmp(self._op(op), 1, encode(kind, right)))

    def _op(self, op: Any) -> int:
        if op not in CMP_OPS:
            raise KernelError(f"nftables: operator {op!r} is not supported")
        return CMP_OPS[op]

    def _set(self, name: str) -> str:
        if name not in self.sets:
            raise KernelError(f"nftables: set {name!r} is not declared")
        return name

    def _fib(self, fib: dict[str, Any], op: Any, right: Any) -> None:
        result = FIB_RESULTS.get(str(fib.get("result")))
        flags = 0
        for f in fib.get("flags") or []:
            if f not in FIB_FLAGS:
                raise KernelError(f"nftables: fib flag {f!r} is not supported")
            flags |= FIB_FLAGS[f]
        if result is None:
            raise KernelError(f"nftables: fib {fib.get('result')!r} is not supported")
        if fib.get("result") == "oif" and isinstance(right, bool):  # fib ... oif missing/exists
            # the register holds a u32 0/1, compared whole, as nft up to 1.1.3 writes it (Debian
            # 12's and 13's: they show a one-byte compare, as 1.1.7 writes it, as "missing/8")
            self.out += [fib_load(result, flags | FIB_PRESENT, 1), cmp(self._op(op), 1, struct.pack("=I", int(right)))]
        elif fib.get("result") == "type":
            self.out += [fib_load(result, flags, 1), cmp(self._op(op), 1, encode("fib_addrtype", right))]
        else:
            raise KernelError(f"nftables: fib {fib.get('result')!r} compared with {right!r} is not supported")

    def _prefix(self, left: Any, op: Any, prefix: dict[str, Any]) -> None:
        """An address prefix, as nft writes it: only the prefix's whole bytes loaded and compared
        where it ends on a byte, else the address masked."""
        net = ipaddress.ip_network(f"{prefix.get('addr')}/{prefix.get('len')}")
        kind, size, _ = self.source(left)
        if kind != f"ipv{net.version}_addr" or "payload" not in left:
            raise KernelError(f"nftables: prefix {net} on {str(left)[:60]} is not supported")
        base, offset, _, _, _ = PAYLOAD[(left["payload"]["protocol"], left["payload"]["field"])]
        if net.prefixlen % 8 == 0:
            n = net.prefixlen // 8
            self.out += [payload_load(base, offset, n, 1), cmp(self._op(op), 1, net.network_address.packed[:n])]
        else:
            self.out += [
                payload_load(base, offset, size, 1),
                bitwise(1, net.netmask.packed, bytes(size)),
                cmp(self._op(op), 1, net.network_address.packed),
            ]

    def statement(self, s: dict[str, Any]) -> None:
        if not isinstance(s, dict) or len(s) != 1:
            raise KernelError(f"nftables: statement {str(s)[:80]} is not supported")
        ((kind, body),) = s.items()
        if kind == "match":
            self.match(body)
        elif kind in ("accept", "drop", "return"):
            self.out.append(verdict(kind))
        elif kind in ("jump", "goto"):
            self.out.append(verdict(kind, body["target"]))
        elif kind == "mangle":
            self._mangle(body)
        elif kind == "dnat":
            self._dnat(body)
        elif kind == "masquerade" and not body:
            self.out.append(masquerade())
        else:
            raise KernelError(f"nftables: statement {kind!r} is not supported")

    def _mangle(self, body: dict[str, Any]) -> None:
        """meta mark set meta mark | BITS, and meta mark set meta mark & BITS: the only mangles
        pybridge writes (the kernel's bitwise is (reg & mask) ^ xor)."""
        value = body.get("value")
        mark = {"meta": {"key": "mark"}}
        if not isinstance(value, dict):
            raise KernelError(f"nftables: mangle {str(body)[:80]} is not supported")
        op = next((o for o in ("|", "&") if o in value), None)
        if (
            body.get("key") != mark
            or op is None
            or len(value) != 1
            or value[op][0] != mark
            or not isinstance(value[op][1], int)
            or not 0 <= value[op][1] <= 0xFFFFFFFF
        ):
            raise KernelError(f"nftables: mangle {str(body)[:80]} is not supported")
        bits = value[op][1]
        mask, xor = (~bits & 0xFFFFFFFF, bits) if op == "|" else (bits, 0)
        self.out += [
            meta_load(META["mark"][0], 1),
            bitwise(1, encode("mark", mask), encode("mark", xor)),
            meta_set(META["mark"][0], 1),
        ]

    def _dnat(self, body: dict[str, Any]) -> None:
        """dnat to an address and a port, each looked up in a map by the same key."""
        family = FAMILIES.get(body.get("family", ""))
        addr, port = body.get("addr", {}).get("map"), body.get("port", {}).get("map")
        if family is None or not addr or not port or addr.get("key") != port.get("key"):
            raise KernelError(f"nftables: dnat {str(body)[:80]} is not supported")
        self.needs(addr["key"])
        for reg, m in ((1, addr), (2, port)):
            self.load(m["key"], base=16 * (reg - 1))
            self.out.append(lookup(self._set(m["data"].lstrip("@")), reg, dreg=reg))
        self.out.append(dnat(family, 1, 2))


# commands ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One nf_tables message of a batch: its type, flags beyond NLM_F_REQUEST, family, body, and
    what it does (for an error)."""

    kind: int
    family: int
    body: bytes
    flags: int = 0
    what: str = ""


def _table(obj: dict[str, Any]) -> tuple[int, str]:
    family = FAMILIES.get(obj.get("family", ""))
    table = obj.get("table", obj.get("name"))
    if family is None or not isinstance(table, str) or not table:
        raise KernelError(f"nftables: no table in {str(obj)[:80]}")
    return family, table


def set_type(decl: dict[str, Any]) -> SetType:
    """The SetType of a set declaration as nftrules writes it ({"type": ..., "map": ...}, or
    {"type": {"typeof": expression or concatenation}})."""
    key = decl["type"]
    if isinstance(key, dict) and "typeof" in key:
        parts = key["typeof"]["concat"] if "concat" in key["typeof"] else [key["typeof"]]
        described = tuple(_typeof_part(p) for p in parts)
        kinds = tuple(PAYLOAD[d][3] if d[0] != "raw" else "raw32" for d in described)
        return SetType(kinds, decl.get("map"), described)
    return SetType(tuple(key) if isinstance(key, list) else (key,), decl.get("map"))


def _typeof_part(x: Any) -> tuple[Any, ...]:
    p = x.get("payload") if isinstance(x, dict) else None
    if isinstance(p, dict) and (p.get("protocol"), p.get("field")) in TYPEOF_PAYLOAD:
        return (p["protocol"], p["field"])
    if (
        isinstance(p, dict)
        and p.get("base") in BASES
        and (p.get("offset"), p.get("len")) != (None, None)
        and isinstance(p.get("offset"), int)
        and p["offset"] % 8 == 0
        and p.get("len") == 32
    ):
        return ("raw", p["base"], p["offset"], p["len"])
    raise KernelError(f"nftables: typeof {str(x)[:80]} is not supported")


def typeof_udata(described: tuple[tuple[Any, ...], ...]) -> bytes:
    """A typeof key as nft writes it in the set's user data (NFTNL_UDATA_SET_KEY_TYPEOF): the
    expression's kind and its own description, nested for a concatenation."""

    def u(kind: int, value: bytes) -> bytes:
        return bytes([kind, len(value)]) + value

    def n(value: int) -> bytes:
        return struct.pack("=I", value)

    def payload(d: tuple[Any, ...]) -> bytes:
        if d[0] == "raw":
            _, base, offset, length = d
            data = u(0, n(0)) + u(1, n(0)) + u(2, n(BASES[base] + 1)) + u(3, n(offset)) + u(4, n(length))
        else:
            desc, field = TYPEOF_PAYLOAD[d]
            data = u(0, n(desc)) + u(1, n(field))
        return u(0, n(EXPR_PAYLOAD)) + u(1, data)

    if len(described) == 1:
        return u(UDATA_KEY_TYPEOF, payload(described[0]))
    parts = b"".join(u(i, payload(d)) for i, d in enumerate(described))
    return u(UDATA_KEY_TYPEOF, u(0, n(EXPR_CONCAT)) + u(1, parts))


class Compiler:
    """libnftables JSON commands -> messages. `sets` knows the type of every set the commands
    may name (pybridge's own, declared by nftrules); a set declared in the same commands is
    added to it."""

    def __init__(self, sets: dict[str, SetType]):
        self.sets = dict(sets)
        self._ids = 0

    def compile(self, commands: list[dict[str, Any]]) -> list[Message]:
        out: list[Message] = []
        for c in commands:
            if not isinstance(c, dict) or len(c) != 1:
                raise KernelError(f"nftables: command {str(c)[:80]} is not supported")
            ((verb, body),) = c.items()
            if not isinstance(body, dict) or len(body) != 1:
                raise KernelError(f"nftables: {verb} {str(body)[:80]} is not supported")
            ((kind, obj),) = body.items()
            handler = getattr(self, f"_{verb}_{kind}", None)
            if handler is None:
                raise KernelError(f"nftables: {verb} {kind} is not supported")
            out += handler(obj)
        return out

    def _add_table(self, obj: dict[str, Any]) -> list[Message]:
        family, name = _table(obj)
        return [Message(NEWTABLE, family, attr(1, text(name)) + attr(2, u32(0)), NLM_F_CREATE, f"add table {name}")]

    def _delete_table(self, obj: dict[str, Any]) -> list[Message]:
        family, name = _table(obj)
        return [Message(DELTABLE, family, attr(1, text(name)), 0, f"delete table {name}")]

    def _add_set(self, obj: dict[str, Any], is_map: bool = False) -> list[Message]:
        family, table = _table(obj)
        name = obj["name"]
        st = set_type(obj)
        if is_map != (st.data is not None) or obj.get("flags"):
            raise KernelError(f"nftables: set {name!r} as declared is not supported")
        self.sets[name] = st
        self._ids += 1
        byteorder = TYPES[st.key[0]][2] if len(st.key) == 1 else 0
        udata = bytes([UDATA_KEYBYTEORDER, 4]) + struct.pack("=I", byteorder)
        if st.typeof is not None:
            udata += typeof_udata(st.typeof)
        body = (
            attr(1, text(table))
            + attr(2, text(name))
            + attr(3, u32(SET_MAP if is_map else 0))
            + attr(4, u32(st.key_type))
            + attr(5, u32(st.key_len))
        )
        if st.data is not None:
            dtype, dlen, dorder = TYPES[st.data]
            body += attr(6, u32(dtype)) + attr(7, u32(dlen))
            udata += bytes([UDATA_DATABYTEORDER, 4]) + struct.pack("=I", dorder)
        body += attr(10, u32(self._ids)) + attr(13, udata)
        return [Message(NEWSET, family, body, NLM_F_CREATE, f"add set {name}")]

    def _add_map(self, obj: dict[str, Any]) -> list[Message]:
        return self._add_set(obj, is_map=True)

    def _add_chain(self, obj: dict[str, Any]) -> list[Message]:
        family, table = _table(obj)
        name = obj["name"]
        body = attr(1, text(table)) + attr(3, text(name))
        if "hook" in obj:
            hook, prio = HOOKS.get(obj["hook"]), obj.get("prio")
            if (
                hook is None
                or not isinstance(prio, int)
                or obj.get("type") not in ("filter", "nat")
                or obj.get("policy", "accept") != "accept"
            ):
                raise KernelError(f"nftables: base chain {name!r} as declared is not supported")
            body += nest(4, attr(1, u32(hook)), attr(2, u32(prio))) + attr(5, u32(1)) + attr(7, text(obj["type"]))
        return [Message(NEWCHAIN, family, body, NLM_F_CREATE, f"add chain {name}")]

    def _rule_body(self, obj: dict[str, Any]) -> tuple[int, bytes, str]:
        family, table = _table(obj)
        chain = obj["chain"]
        rule = _Rule(self.sets)
        for s in obj.get("expr") or []:
            rule.statement(s)
        body = attr(1, text(table)) + attr(2, text(chain)) + nest(4, *rule.out)
        comment = obj.get("comment")
        if comment is not None:
            raw = text(comment)
            if len(raw) > 128:
                raise KernelError("nftables: a rule's comment is too long")
            body += attr(7, bytes([0, len(raw)]) + raw)  # NFTNL_UDATA_RULE_COMMENT
        return family, body, chain

    def _add_rule(self, obj: dict[str, Any]) -> list[Message]:
        family, body, chain = self._rule_body(obj)
        return [Message(NEWRULE, family, body, NLM_F_CREATE | NLM_F_APPEND, f"add rule to {chain}")]

    def _insert_rule(self, obj: dict[str, Any]) -> list[Message]:
        """At the head of the chain (no position: nothing of the chain is read)."""
        family, body, chain = self._rule_body(obj)
        return [Message(NEWRULE, family, body, NLM_F_CREATE, f"insert rule into {chain}")]

    def _delete_rule(self, obj: dict[str, Any]) -> list[Message]:
        family, table = _table(obj)
        handle = obj.get("handle")
        if not isinstance(handle, int) or isinstance(handle, bool) or handle <= 0:
            raise KernelError(f"nftables: rule handle {handle!r} is not one")
        body = attr(1, text(table)) + attr(2, text(obj["chain"])) + attr(3, struct.pack(">Q", handle))
        return [Message(DELRULE, family, body, 0, f"delete rule {handle} of {obj['chain']}")]

    def _elements(self, kind: int, obj: dict[str, Any], verb: str) -> list[Message]:
        family, table = _table(obj)
        name = obj["name"]
        st = self.sets.get(name)
        if st is None:
            raise KernelError(f"nftables: set {name!r} is not declared")
        head = attr(1, text(table)) + attr(2, text(name))
        items = []
        for e in obj.get("elem") or []:
            if st.data is not None:
                if kind == NEWSETELEM:
                    if not isinstance(e, list) or len(e) != 2:
                        raise _fail(f"an element of map {name}", e)
                    key, value = e
                    items.append(nest(1, _data(1, st.encode_key(key)), _data(2, encode(st.data, value))))
                else:
                    key = e[0] if isinstance(e, list) else e
                    items.append(nest(1, _data(1, st.encode_key(key))))
            else:
                items.append(nest(1, _data(1, st.encode_key(e))))
        out: list[Message] = []
        chunk: list[bytes] = []
        size = 0
        for item in items:
            if chunk and size + len(item) > MAX_NEST:
                out.append(
                    Message(
                        kind,
                        family,
                        head + nest(3, *chunk),
                        NLM_F_CREATE if kind == NEWSETELEM else 0,
                        f"{verb} elements of {name}",
                    )
                )
                chunk, size = [], 0
            chunk.append(item)
            size += len(item)
        if chunk:
            out.append(
                Message(
                    kind,
                    family,
                    head + nest(3, *chunk),
                    NLM_F_CREATE if kind == NEWSETELEM else 0,
                    f"{verb} elements of {name}",
                )
            )
        return out

    def _add_element(self, obj: dict[str, Any]) -> list[Message]:
        return self._elements(NEWSETELEM, obj, "add")

    def _delete_element(self, obj: dict[str, Any]) -> list[Message]:
        return self._elements(DELSETELEM, obj, "delete")

    def _flush_set(self, obj: dict[str, Any]) -> list[Message]:
        family, table = _table(obj)
        name = obj["name"]
        if name not in self.sets:
            raise KernelError(f"nftables: set {name!r} is not declared")
        return [Message(DELSETELEM, family, attr(1, text(table)) + attr(2, text(name)), 0, f"flush set {name}")]

    _flush_map = _flush_set


# reading back ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chain:
    name: str
    base: tuple[Any, ...] | None  # (type, hook, priority) of a base chain


def decode_chain(body: dict[int, bytes]) -> Chain:
    hook = attributes(body.get(4, b""))
    base = None
    if hook:
        prio = struct.unpack(">i", hook[2])[0] if len(hook.get(2, b"")) == 4 else None
        base = (name_of(body.get(7)), HOOK_NAMES.get(number(hook.get(1)), str(number(hook.get(1)))), prio)
    return Chain(name_of(body.get(3)), base)


def decode_elements(st: SetType, body: dict[int, bytes]) -> Iterator[tuple[object, object]]:
    """(key, value or None) of each element in one NEWSETELEM message of a set of type st; bytes
    that are not of its type come out as a string naming them, so that they differ from every
    element pybridge wants."""
    for item in attribute_list(body.get(3, b"")):
        e = attributes(item)
        raw_key = attributes(e.get(1, b"")).get(1, b"")
        key = st.decode_key(raw_key)
        if key is None:
            key = f"<{raw_key.hex()}>"
        value = None
        if st.data is not None:
            raw_value = attributes(e.get(2, b"")).get(1, b"")
            value = decode(st.data, raw_value)
            if value is None:
                value = f"<{raw_value.hex()}>"
        yield key, value


def rule_comment(body: dict[int, bytes]) -> str | None:
    """The comment in a rule's user data (NFTNL_UDATA_RULE_COMMENT), if any."""
    udata, at = body.get(7, b""), 0
    while at + 2 <= len(udata):
        kind, length = udata[at], udata[at + 1]
        if kind == 0:
            return name_of(udata[at + 2 : at + 2 + length])
        at += 2 + length
    return None


def declared_as(st: SetType, body: dict[int, bytes]) -> bool:
    """Whether a set the kernel holds (a NEWSET message's attributes) is declared with type st:
    a map exactly when st has data, and its key's (and data's) type and length."""
    is_map = bool(number(body.get(3)) & SET_MAP)
    if is_map != (st.data is not None):
        return False
    if number(body.get(4)) != st.key_type or number(body.get(5)) != st.key_len:
        return False
    if st.data is not None:
        dtype, dlen, _ = TYPES[st.data]
        return number(body.get(6)) == dtype and number(body.get(7)) == dlen
    return True
