"""Pure nftables rendering: pybridge's firewall as data in one `inet` table of its own.

Nothing here is text for a parser: every command is a JSON object for libnftables' JSON API,
and every value from the state sits in a JSON string or number of its own. The table's chains
are fixed, the same whatever the state; what networks, published ports and foreign bridges
change are the elements of its sets and maps:

    raw       prerouting, priority raw: drops 127.0.0.0/8 not from lo, and DNS to a gateway from
              anywhere but the host or the gateway's own bridge (dns_ok4/6), from a source the
              route to which is not that bridge (not of the network's subnets); in cluster mode,
              VXLAN (vxlan_ports) from a container (in from a bridge, ours or not), and VXLAN of a
              network (VNI) from any host but those that have it (vxlan_members4/6: underlay
              address . VNI), which would otherwise put frames on a cluster network's bridge.
    out       output, priority filter - 1: in cluster mode, VXLAN that a process sends (any
              user's socket, raw or not: only the kernel's VXLAN devices, whose sockets belong to
              no process, send to the VXLAN port), which another host would take for ours.
    input     input, priority filter - 1: marks a network's DNS queries to its gateway (so that a
              firewalld that rejects what no zone allows lets them in: plugin.kernel.firewalld).
    forward   forward, priority filter - 1 (before iptables' FORWARD, whose policy dockerd sets
              to DROP): nothing in or out of an internal network; published ports (published4/6);
              ICC (self, icc); nothing else enters a network of ours but replies; nothing of ours
              reaches a bridge that is not ours (foreign) unless a published port leads there.
              What it lets through goes through `allow`, which marks it for the one static
              iptables rule (plugin.kernel.xtables).
    unmark    forward, priority filter - 2: clears that bit on every packet first, so that only
              `allow` ever sets it (before every instance's forward chain: two instances share
              the bit, and one must not clear what the other's `allow` set).
    nat-pre,  nat prerouting/output, priority dstnat - 1: to a local address -> `ports`: never a
    nat-out   gateway's DNS port, then one DNAT per key (to4_at/port4_at, to4_any/port4_any, v6).
    post      nat postrouting: lo never, hairpin (routed, or bridged back by br_netfilter: no
              input interface then), loopback, and what leaves a masqueraded
              network (masq) for anywhere but its own bridge.

So publishing a port, withdrawing it, creating or removing a network, a bridge appearing: each
is a few elements added or deleted in one transaction, whatever else is there. (Chains per
network would be what the issue first sketched; libnftables reads every chain of the ruleset
before each command, so each change would grow with the number of networks: measured 1.0 ms
with none, 2.3 ms with 200.)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..domain.errors import KernelError
from ..domain.model import Endpoint, Network
from ..domain.naming import is_valid_ifname

FAMILY = "inet"
DNS_PORT = 53
DEFAULT_MARK = 0x01000000

# name -> declaration (type, map data type). Set contents are what changes. No set has the
# interval flag: libnftables reads every element of every interval set of the table before each
# command (measured: 200 prefixes add 0.4 ms to every change), and plain sets cost nothing there.
SETS: dict[str, dict[str, Any]] = {
    "bridges": {"type": "ifname"},
    "internal": {"type": "ifname"},
    "icc": {"type": "ifname"},
    "self": {"type": ["ifname", "ifname"]},
    "foreign": {"type": "ifname"},
    "gateways4": {"type": "ipv4_addr"},
    "gateways6": {"type": "ipv6_addr"},
    "dns_ok4": {"type": ["ifname", "ipv4_addr"]},
    "dns_ok6": {"type": ["ifname", "ipv6_addr"]},
    "masq": {"type": "ifname"},
    # gateway modes (options.GATEWAY_MODES) other than nat, per family; trusted: host interface . bridge
    "routed4": {"type": "ifname"},
    "routed6": {"type": "ifname"},
    "unprotected4": {"type": "ifname"},
    "unprotected6": {"type": "ifname"},
    "trusted": {"type": ["ifname", "ifname"]},
    "dns_protos": {"type": "inet_proto"},  # tcp and udp, always (FIXED)
    # cluster mode: VXLAN on this port (empty: off), a network's (its VNI, as the 32 bits of the
    # VXLAN header that hold it) only from the hosts that have that network
    "vxlan_ports": {"type": "inet_service"},
    "vxlan_members4": {
        "type": {
            "typeof": {
                "concat": [
                    {"payload": {"protocol": "ip", "field": "saddr"}},
                    {"payload": {"base": "th", "offset": 96, "len": 32}},
                ]
            }
        }
    },
    "vxlan_members6": {
        "type": {
            "typeof": {
                "concat": [
                    {"payload": {"protocol": "ip6", "field": "saddr"}},
                    {"payload": {"base": "th", "offset": 96, "len": 32}},
                ]
            }
        }
    },
    # an encrypted underlay (WireGuard): VXLAN from a member's tunnel address only through the
    # tunnel's device (vxlan_tunnel_links), never from the underlay with that source forged
    "vxlan_tunnel_src4": {"type": "ipv4_addr"},
    "vxlan_tunnel_src6": {"type": "ipv6_addr"},
    "vxlan_tunnel_links": {"type": "ifname"},
    "published4": {"type": ["ifname", "ipv4_addr", "inet_proto", "inet_service"]},
    "published6": {"type": ["ifname", "ipv6_addr", "inet_proto", "inet_service"]},
}
# A published port is two elements, the container's address and its port, in two maps with the
# same key (a map to "address . port" crashes nft 1.0.6's JSON parser): any local address
# (proto . port) or one address (address . proto . port).
for _v, _addr in ((4, "ipv4_addr"), (6, "ipv6_addr")):
    for _where, _key in (("any", ["inet_proto", "inet_service"]), ("at", [_addr, "inet_proto", "inet_service"])):
        SETS[f"to{_v}_{_where}"] = {"type": _key, "map": _addr}
        SETS[f"port{_v}_{_where}"] = {"type": _key, "map": "inet_service"}

# elements every table holds, whatever the state
FIXED: dict[str, dict[str, Any]] = {"dns_protos": {"tcp": None, "udp": None}}

# base chains: name -> (type, hook, priority)
BASE_CHAINS = {
    "raw": ("filter", "prerouting", -300),
    "unmark": ("filter", "forward", -2),
    "forward": ("filter", "forward", -1),
    "input": ("filter", "input", -1),
    "out": ("filter", "output", -1),
    "nat-pre": ("nat", "prerouting", -101),
    "nat-out": ("nat", "output", -101),
    "post": ("nat", "postrouting", 100),
}
CHAINS = ("raw", "unmark", "forward", "input", "out", "nat-pre", "nat-out", "post", "allow", "ports")


def table_name(prefix: str) -> str:
    """Our table, named from the instance's chain prefix ('PYBRIDGETEST' -> 'pybridgetest')."""
    return prefix.lower()


# expressions -------------------------------------------------------------------------------


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _payload(proto: str, fld: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": fld}}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _jump(chain: str) -> dict[str, Any]:
    return {"jump": {"target": chain}}


def _concat(*items: Any) -> dict[str, Any]:
    return {"concat": list(items)}


_DNS_PORT = [_match(_meta("l4proto"), "@dns_protos"), _match(_payload("th", "dport"), DNS_PORT)]
_RETURN, _DROP, _ACCEPT = {"return": None}, {"drop": None}, {"accept": None}
_MASQ = {"masquerade": None}
_CT_DNAT = _match({"ct": {"key": "status"}}, "dnat", "in")
_CT_REPLY = _match({"ct": {"key": "state"}}, ["established", "related"], "in")
_IP = {4: "ip", 6: "ip6"}
_ICMP = {4: "icmp", 6: "icmpv6"}
_IIF, _OIF = _meta("iifname"), _meta("oifname")
_PAIR = _concat(_IIF, _OIF)
_LOOPBACK = {"prefix": {"addr": "127.0.0.0", "len": 8}}
_VNI_FIELD = {"payload": {"base": "th", "offset": 96, "len": 32}}  # VXLAN header: VNI . reserved


def fixed_rules(mark: int) -> dict[str, list[list[dict[str, Any]]]]:
    """Every rule of our table: the chains never change, only the sets they look up."""
    allow = _jump("allow")
    # our bit is ours alone: cleared on everything (unmark, a chain of its own before every
    # instance's forward chain: another pybridge instance's table must not clear what ours set),
    # set only by `allow` (another table's chain, tc or BPF may have set it, and the static rule
    # accepts what carries it)
    unmark = [[{"mangle": {"key": _meta("mark"), "value": {"&": [_meta("mark"), ~mark & 0xFFFFFFFF]}}}]]
    forward = [
        [_match(_IIF, "@internal"), _match(_PAIR, "@self", "!="), _DROP],  # nothing leaves internal
        [_match(_OIF, "@internal"), _match(_PAIR, "@self", "!="), _DROP],
    ]  # nor enters, replies neither
    for v in (4, 6):
        forward.append(
            [
                _CT_DNAT,
                _match(
                    _concat(_OIF, _payload(_IP[v], "daddr"), _meta("l4proto"), _payload("th", "dport")),
                    f"@published{v}",
                ),
                allow,
            ]
        )
    forward += [
        [_match(_PAIR, "@self"), _match(_IIF, "@icc"), allow],  # ICC
        [_match(_PAIR, "@self"), _DROP],
    ]
    for v in (4, 6):  # direct routing
        nf, published = (
            _match(_meta("nfproto"), f"ipv{v}"),
            _match(
                _concat(_OIF, _payload(_IP[v], "daddr"), _meta("l4proto"), _payload("th", "dport")), f"@published{v}"
            ),
        )
        forward += [
            [nf, _match(_OIF, f"@routed{v}"), published, allow],  # routed: published ports,
            [nf, _match(_OIF, f"@routed{v}"), _match(_meta("l4proto"), _ICMP[v]), allow],  # and ICMP
            [
                nf,
                _match(_OIF, f"@unprotected{v}"),
                _match(_IIF, "@bridges", "!="),
                _match(_IIF, "@foreign", "!="),
                allow,
            ],  # nat-unprotected: any port
            [_match(_PAIR, "@trusted"), published, allow],
        ]  # trusted host interfaces
    forward += [
        [_match(_OIF, "@bridges"), _CT_REPLY, allow],  # into ours: replies only
        [_match(_OIF, "@bridges"), _DROP],
        [_match(_IIF, "@bridges"), _CT_REPLY, allow],  # out of ours
        [_match(_IIF, "@bridges"), _CT_DNAT, allow],
        [_match(_IIF, "@bridges"), _match(_OIF, "@foreign"), _DROP],
        [_match(_IIF, "@bridges"), allow],
    ]
    raw = [[_match(_payload("ip", "daddr"), _LOOPBACK), _match(_IIF, "lo", "!="), _DROP]]
    vxlan = [_match(_meta("l4proto"), "udp"), _match(_payload("udp", "dport"), "@vxlan_ports")]
    raw += [
        [*vxlan, _match(_IIF, "@bridges"), _DROP],  # VXLAN from a container
        [*vxlan, _match(_IIF, "@foreign"), _DROP],
    ]
    for v in (4, 6):  # a network's, from its hosts only
        raw.append([*vxlan, _match(_concat(_payload(_IP[v], "saddr"), _VNI_FIELD), f"@vxlan_members{v}", "!="), _DROP])
        # over WireGuard: a member's tunnel address counts only through the tunnel
        raw.append(
            [
                *vxlan,
                _match(_payload(_IP[v], "saddr"), f"@vxlan_tunnel_src{v}"),
                _match(_IIF, "@vxlan_tunnel_links", "!="),
                _DROP,
            ]
        )
    # a process's socket (raw or not, any user): nft finds no uid on the kernel's VXLAN sockets
    out = [[*vxlan, _match(_meta("skuid"), 0, ">="), _DROP]]
    inbound = []
    ports, post = (
        [],
        [
            [_match(_OIF, "lo"), _RETURN],
            [_CT_DNAT, _match(_PAIR, "@self"), _MASQ],
            # DNATed back onto the bridge it came from and bridged there (br_netfilter
            # bridges it, and postrouting then has no input interface): a container
            # reaching a published port of its own network, itself included, through
            # a host address. The host's own connections (a local source) are not.
            [
                _CT_DNAT,
                _match(_meta("iif"), 0),
                _match(_OIF, "@bridges"),
                _match({"fib": {"result": "type", "flags": ["saddr"]}}, "local", "!="),
                _MASQ,
            ],
            [_match(_payload("ip", "saddr"), _LOOPBACK), _CT_DNAT, _match(_OIF, "@bridges"), _MASQ],
            *(
                [_match(_meta("nfproto"), f"ipv{v}"), _match(_IIF, f"@routed{v}"), _RETURN] for v in (4, 6)
            ),  # routed: no NAT
            [_match(_IIF, "@masq"), _match(_PAIR, "@self", "!="), _MASQ],
        ],
    )
    for v in (4, 6):
        ip = _IP[v]
        dns = [*_DNS_PORT, _match(_payload(ip, "daddr"), f"@gateways{v}"), _match(_IIF, "lo", "!=")]
        raw.append([*dns, _match(_concat(_IIF, _payload(ip, "daddr")), f"@dns_ok{v}", "!="), _DROP])
        inbound.append([*dns, _match(_concat(_IIF, _payload(ip, "daddr")), f"@dns_ok{v}"), allow])
        # the source must be on the bridge it came from: of the network's own subnets
        raw.append([*dns, _match({"fib": {"result": "oif", "flags": ["saddr", "iif"]}}, False), _DROP])
        ports.append([*_DNS_PORT, _match(_payload(ip, "daddr"), f"@gateways{v}"), _RETURN])
        for where, key in (
            ("at", _concat(_payload(ip, "daddr"), _meta("l4proto"), _payload("th", "dport"))),
            ("any", _concat(_meta("l4proto"), _payload("th", "dport"))),
        ):
            ports.append(
                [
                    {
                        "dnat": {
                            "family": ip,
                            "addr": {"map": {"key": key, "data": f"@to{v}_{where}"}},
                            "port": {"map": {"key": key, "data": f"@port{v}_{where}"}},
                        }
                    }
                ]
            )
    local = [[_match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"), _jump("ports")]]
    return {
        "allow": [[{"mangle": {"key": _meta("mark"), "value": {"|": [_meta("mark"), mark]}}}, _ACCEPT]],
        "raw": raw,
        "unmark": unmark,
        "forward": forward,
        "input": inbound,
        "out": out,
        "nat-pre": local,
        "nat-out": [list(r) for r in local],
        "ports": ports,
        "post": post,
    }


# Values from the state reach nft as JSON strings and numbers, never as text to parse; and still
# each is checked for what it must be, for nft reads a string starting with '@' or '$' as a
# reference: names are interface names, addresses are addresses, ports are ports.


def _ifname(name: object) -> str:
    if not isinstance(name, str) or not is_valid_ifname(name):
        raise KernelError(f"refusing to write an unsafe interface name {str(name)[:64]!r} into the firewall")
    return name


def _address(value: object, version: int | None = None) -> str:
    try:
        if isinstance(value, bool) or not isinstance(value, (str, int, ipaddress.IPv4Address, ipaddress.IPv6Address)):
            raise ValueError(value)
        addr = ipaddress.ip_address(value if not isinstance(value, str) or value.strip() == value else "!")
    except ValueError:
        raise KernelError(f"refusing to write an unsafe address {str(value)[:64]!r} into the firewall") from None
    if version is not None and addr.version != version:
        raise KernelError(f"refusing to write {addr} as an IPv{version} address into the firewall")
    if getattr(addr, "scope_id", None):
        raise KernelError(f"refusing to write an unsafe address {str(value)[:64]!r} (it has a scope) into the firewall")
    return str(addr)


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 65535:
        raise KernelError(f"refusing to write an unsafe port {str(value)[:64]!r} into the firewall")
    return value


def _proto(value: object) -> str:
    if not isinstance(value, str) or value not in ("tcp", "udp", "sctp"):
        raise KernelError(f"refusing to write an unsafe protocol {str(value)[:64]!r} into the firewall")
    return value


# contents: what changes, as hashable python values --------------------------------------------

Elements = dict[str, dict[Any, Any]]  # set name -> {key: value (None for plain sets)}


def network_elements(n: Network) -> Elements:
    br = _ifname(n.bridge)
    out: Elements = {"bridges": {br: None}, "self": {(br, br): None}}
    if n.internal:
        out["internal"] = {br: None}
    if n.icc:
        out["icc"] = {br: None}
    for gw in n.gateways():
        v = gw.version
        ip = _address(gw.ip, v)
        out.setdefault(f"gateways{v}", {})[ip] = None
        out.setdefault(f"dns_ok{v}", {})[(br, ip)] = None
    if not n.internal and n.masquerade:
        out["masq"] = {br: None}
    for mode, families in (("routed", n.routed), ("unprotected", n.unprotected)):
        for family in families:
            out[f"{mode}{family}"] = {br: None}
    if n.trusted:
        out["trusted"] = {(_ifname(t), br): None for t in n.trusted}
    return out


def endpoint_elements(n: Network, e: Endpoint, ports: Iterable[Any] | None = None) -> Elements:
    """The map and set elements of the ports this endpoint publishes (or `ports`)."""
    out: Elements = {}
    if n.internal or e.network_id != n.id:
        return out
    br = _ifname(n.bridge)
    for b in e.ports if ports is None else ports:
        proto, cport = _proto(b.proto), _port(b.container_port)
        for v, addr in ((4, e.address4), (6, e.address6)):
            if addr is None or not b.applies_to(v):
                continue
            if b.host_ip and ipaddress.ip_address(_address(b.host_ip)).version != v:
                continue
            ip = _address(addr.ip, v)
            out.setdefault(f"published{v}", {})[(br, ip, proto, cport)] = None
            if v in n.routed:  # no host port: the container's port, at its own address
                continue
            host_port = _port(b.host_port)
            where, key = (
                ("at", (_address(b.host_ip, v), proto, host_port)) if b.host_ip else ("any", (proto, host_port))
            )
            out.setdefault(f"to{v}_{where}", {})[key] = ip
            out.setdefault(f"port{v}_{where}", {})[key] = cport
    return out


def foreign_elements(foreign: Iterable[str], own: Iterable[str] = ()) -> Elements:
    mine = set(own)
    return {"foreign": {f: None for f in foreign if f not in mine and is_valid_ifname(f)}}


def vxlan_elements(port: int, members: Iterable[tuple[int, str]], tunnel: str = "") -> Elements:
    """Cluster mode: the VXLAN port, and (VNI, underlay address) of each network's other hosts:
    a VNI is the upper 24 bits of the 32 after the VXLAN flags (the lower 8 are reserved, 0).
    `tunnel`: the WireGuard device VXLAN runs over (the members' addresses are tunnel addresses
    then, and count only when they arrive through it)."""
    out: Elements = {
        "vxlan_ports": {_port(port): None} if port else {},
        "vxlan_members4": {},
        "vxlan_members6": {},
        "vxlan_tunnel_src4": {},
        "vxlan_tunnel_src6": {},
        "vxlan_tunnel_links": {},
    }
    if tunnel:
        if not is_valid_ifname(tunnel):
            raise KernelError(f"refusing to write an unsafe tunnel device {tunnel[:64]!r} into the firewall")
        out["vxlan_tunnel_links"][tunnel] = None
    for member in members:
        vni, host = member if isinstance(member, tuple) and len(member) == 2 else (None, None)
        if isinstance(vni, bool) or not isinstance(vni, int) or not 0 <= vni < 1 << 24:
            raise KernelError(f"refusing to write an unsafe VXLAN member {str(member)[:64]!r} into the firewall")
        ip = _address(host)
        version = ipaddress.ip_address(ip).version
        out[f"vxlan_members{version}"][(ip, vni << 8)] = None
        if tunnel:
            out[f"vxlan_tunnel_src{version}"][ip] = None
    return out


def set_vxlan(table: str, elements: Elements) -> list[dict[str, Any]]:
    cmds = [{"flush": {"set": {"family": FAMILY, "table": table, "name": name}}} for name in elements]
    return cmds + _adds(table, elements)


def merge(*parts: Elements) -> Elements:
    out: Elements = {}
    for p in parts:
        for name, elems in p.items():
            out.setdefault(name, {}).update(elems)
    return out


def desired(networks: Iterable[Network], endpoints: Iterable[Endpoint], foreign: Iterable[str]) -> Elements:
    """Every set's elements for this state."""
    networks = list(networks)
    by_id = {n.id: n for n in networks}
    parts = [network_elements(n) for n in networks]
    parts += [endpoint_elements(by_id[e.network_id], e) for e in endpoints if e.network_id in by_id]
    parts.append(foreign_elements(foreign, (n.bridge for n in networks)))
    return merge(FIXED, *parts)


# to JSON -----------------------------------------------------------------------------------


def _component(x: Any) -> Any:
    if isinstance(x, str) and "/" in x:
        net = ipaddress.ip_network(x)
        return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}
    return x


def _key_json(key: Any) -> Any:
    return _concat(*map(_component, key)) if isinstance(key, tuple) else _component(key)


def _elem_json(key: Any, value: Any) -> Any:
    return _key_json(key) if value is None else [_key_json(key), value]


def element_command(verb: str, table: str, name: str, elems: dict[str, Any]) -> dict[str, Any]:
    return {
        verb: {
            "element": {
                "family": FAMILY,
                "table": table,
                "name": name,
                "elem": [_elem_json(k, v) for k, v in elems.items()],
            }
        }
    }


def _set_decl(table: str, name: str) -> dict[str, Any]:
    d = SETS[name]
    kind = "map" if "map" in d else "set"
    body = {"family": FAMILY, "table": table, "name": name, "type": d["type"]}
    if "map" in d:
        body["map"] = d["map"]
    if "flags" in d:
        body["flags"] = list(d["flags"])
    return {"add": {kind: body}}


def _chain(table: str, name: str) -> dict[str, Any]:
    body: dict[str, str | int] = {"family": FAMILY, "table": table, "name": name}
    if name in BASE_CHAINS:
        kind, hook, prio = BASE_CHAINS[name]
        body.update({"type": kind, "hook": hook, "prio": prio, "policy": "accept"})
    return {"add": {"chain": body}}


def _adds(table: str, elements: Elements) -> list[dict[str, Any]]:
    return [element_command("add", table, name, elems) for name, elems in sorted(elements.items()) if elems]


def _deletes(table: str, elements: Elements) -> list[dict[str, Any]]:
    return [
        element_command("delete", table, name, {k: None for k in elems})
        for name, elems in sorted(elements.items())
        if elems
    ]


def full(table: str, mark: int, elements: Elements) -> list[dict[str, Any]]:
    """Replace the whole table in one transaction (start, healing)."""
    tbl = {"family": FAMILY, "name": table}
    cmds: list[dict[str, Any]] = [
        {"add": {"table": dict(tbl)}},
        {"delete": {"table": dict(tbl)}},
        {"add": {"table": dict(tbl)}},
    ]
    cmds += [_set_decl(table, s) for s in SETS]
    cmds += [_chain(table, c) for c in CHAINS]
    for c, rules in fixed_rules(mark).items():
        cmds += [{"add": {"rule": {"family": FAMILY, "table": table, "chain": c, "expr": r}}} for r in rules]
    return cmds + _adds(table, merge(FIXED, elements))


def add_network(table: str, n: Network) -> list[dict[str, Any]]:
    return _adds(table, network_elements(n))


def remove_network(table: str, n: Network, endpoints: Iterable[Endpoint] = ()) -> list[dict[str, Any]]:
    """Its endpoints' elements and its own."""
    return _deletes(table, merge(*(endpoint_elements(n, e) for e in endpoints), network_elements(n)))


def change_ports(table: str, n: Network, before: Endpoint | None, after: Endpoint | None) -> list[dict[str, Any]]:
    """Delete the elements only `before` had, add those `after` has."""
    old = endpoint_elements(n, before) if before is not None else {}
    new = endpoint_elements(n, after) if after is not None else {}
    gone = {s: {k: v for k, v in e.items() if new.get(s, {}).get(k, object()) != v} for s, e in old.items()}
    come = {s: {k: v for k, v in e.items() if old.get(s, {}).get(k, object()) != v} for s, e in new.items()}
    return _deletes(table, gone) + _adds(table, come)


def set_foreign(table: str, foreign: Iterable[str], own: Iterable[str] = ()) -> list[dict[str, Any]]:
    body = {"family": FAMILY, "table": table, "name": "foreign"}
    return [{"flush": {"set": body}}] + _adds(table, foreign_elements(foreign, own))


# from JSON (what `list table` shows) ---------------------------------------------------------


def normalize(x: Any) -> Any:
    """One key or value component as nft prints it -> our python value."""
    if isinstance(x, dict) and "concat" in x:
        return tuple(normalize(i) for i in x["concat"])
    if isinstance(x, dict) and "prefix" in x:
        p = x["prefix"]
        return str(ipaddress.ip_network(f"{p['addr']}/{p['len']}", strict=False))
    if isinstance(x, dict) and "range" in x:
        low, high = (ipaddress.ip_address(a) for a in x["range"])
        nets = list(ipaddress.summarize_address_range(low, high))
        return str(nets[0]) if len(nets) == 1 else f"{low}-{high}"
    if isinstance(x, dict) and "elem" in x:
        return normalize(x["elem"]["val"])
    if isinstance(x, str):
        try:
            return str(ipaddress.ip_address(x))
        except ValueError:
            return x
    return x


@dataclass
class Listed:
    """Our table as the kernel holds it."""

    exists: bool = False
    chains: dict[str, int] = field(default_factory=dict)  # chain -> number of rules
    base: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # base chain -> (type, hook, prio)
    sets: set[str] = field(default_factory=set)
    elements: Elements = field(default_factory=dict)


def parse_listing(objects: list[dict[str, Any]]) -> Listed:
    out = Listed()
    for obj in objects:
        if "table" in obj:
            out.exists = True
        elif "chain" in obj:
            c = obj["chain"]
            out.chains.setdefault(c["name"], 0)
            if "hook" in c:
                out.base[c["name"]] = (c.get("type"), c.get("hook"), c.get("prio"))
        elif "rule" in obj:
            name = obj["rule"]["chain"]
            out.chains[name] = out.chains.get(name, 0) + 1
        elif "set" in obj or "map" in obj:
            s = obj.get("set") or obj.get("map") or {}
            out.sets.add(s["name"])
            elems = out.elements.setdefault(s["name"], {})
            for item in s.get("elem", []):
                if isinstance(item, list):
                    elems[normalize(item[0])] = normalize(item[1])
                else:
                    elems[normalize(item)] = None
    return out


def drift(mark: int, elements: Elements, listed: Listed) -> list[str]:
    """Differences between our table in the kernel and what the state wants, element by element."""
    if not listed.exists:
        return ["table is missing"]
    problems = []
    wanted = {c: len(r) for c, r in fixed_rules(mark).items()}
    for c, count in sorted(wanted.items()):
        rules = listed.chains.get(c)
        if rules is None:
            problems.append(f"chain {c} is missing")
        elif rules != count:
            problems.append(f"chain {c} has {rules} rules, expected {count}")
    for c, spec in BASE_CHAINS.items():
        if c in listed.base and listed.base[c] != spec:
            problems.append(f"chain {c} is hooked as {listed.base[c]}, expected {spec}")
    problems += [f"chain {c} is not ours to have" for c in sorted(set(listed.chains) - set(wanted))]
    for name in SETS:
        if name not in listed.sets:
            problems.append(f"set {name} is missing")
            continue
        want, have = elements.get(name, {}), listed.elements.get(name, {})
        for k in sorted(set(want) | set(have), key=repr):
            if k not in have:
                problems.append(f"{name}: element {show(k, want[k])} is missing")
            elif k not in want:
                problems.append(f"{name}: element {show(k, have[k])} is not in the state")
            elif want[k] != have[k]:
                problems.append(f"{name}: element {show(k, have[k])} should be {show(k, want[k])}")
    return problems


def show(key: Any, value: Any) -> str:
    k = " . ".join(map(str, key)) if isinstance(key, tuple) else str(key)
    return k if value is None else f"{k} : {value}"
