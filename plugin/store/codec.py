"""Domain records <-> JSON documents stored in SQLite. Versioned by the schema in db.py."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from ..domain.addresses import parse_cidr, parse_ip_interface
from ..domain.errors import CorruptState
from ..domain.model import Endpoint, IPInterface, Network, Subnet
from ..domain.naming import is_valid_ifname
from ..domain.ports import PortBinding, PROTOCOLS

# What a stored document can fail with when it was damaged (by hand, a disk, an old bug).
DECODE_ERRORS = (ValueError, KeyError, TypeError, AttributeError, IndexError)


def _iface(value: object) -> IPInterface | None:
    return parse_ip_interface("stored address", value) if value else None


def _iface4(value: object) -> ipaddress.IPv4Interface | None:
    found = parse_ip_interface("stored IPv4 address", value, 4) if value else None
    return found if isinstance(found, ipaddress.IPv4Interface) else None


def _iface6(value: object) -> ipaddress.IPv6Interface | None:
    found = parse_ip_interface("stored IPv6 address", value, 6) if value else None
    return found if isinstance(found, ipaddress.IPv6Interface) else None


def _aux(value: object) -> IPInterface:
    return parse_ip_interface("stored aux address", value)


def _ifname(value: str) -> str:
    if not is_valid_ifname(value):
        raise CorruptState(f"stored interface name {str(value)[:32]!r} is not valid")
    return value


def _port(p: Any) -> PortBinding:
    proto, cport, host_ip, hport, family = p
    if proto not in PROTOCOLS.values() or not all(isinstance(v, int) for v in (cport, hport, family)):
        raise CorruptState(f"stored port binding {str(p)[:64]!r} is not valid")
    if host_ip:
        parse_ip_interface("stored host IP", host_ip)
    return PortBinding(proto, cport, host_ip, hport, family)


def binding_to_json(b: PortBinding) -> str:
    return json.dumps([b.proto, b.container_port, b.host_ip, b.host_port, b.family])


def binding_from_json(key: str, endpoint_id: str, text: str) -> PortBinding:
    return _port(json.loads(text))


def network_to_json(n: Network) -> str:
    return json.dumps(
        {
            "bridge": n.bridge,
            "mtu": n.mtu,
            "internal": n.internal,
            "ipv6": n.ipv6,
            "icc": n.icc,
            "masquerade": n.masquerade,
            "host_binding_ipv4": n.host_binding_ipv4,
            "bridge_owned": n.bridge_owned,
            "options": dict(n.options),
            "cluster": n.cluster,
            "vni": n.vni,
            "mac": n.mac,
            "routed": sorted(n.routed),
            "unprotected": sorted(n.unprotected),
            "trusted": list(n.trusted),
            "subnets": [
                {
                    "pool": str(s.pool),
                    "gateway": str(s.gateway) if s.gateway else "",
                    "aux": dict((k, str(v)) for k, v in s.aux),
                }
                for s in n.subnets
            ],
        },
        sort_keys=True,
    )


def network_from_json(network_id: str, text: str) -> Network:
    d = json.loads(text)
    subnets = tuple(
        Subnet(
            pool=parse_cidr("stored subnet", s["pool"]),
            gateway=_iface(s["gateway"]),
            aux=tuple((k, _aux(v)) for k, v in sorted(s["aux"].items())),
        )
        for s in d["subnets"]
    )
    return Network(
        id=network_id,
        bridge=_ifname(d["bridge"]),
        subnets=subnets,
        mtu=d["mtu"],
        internal=d["internal"],
        ipv6=d["ipv6"],
        icc=d["icc"],
        masquerade=d["masquerade"],
        host_binding_ipv4=d["host_binding_ipv4"],
        bridge_owned=d["bridge_owned"],
        options=tuple(sorted(d["options"].items())),
        cluster=str(d.get("cluster", "")),
        vni=int(d.get("vni", 0)),
        mac=str(d.get("mac", "")),
        routed=_families(d.get("routed", [])),
        unprotected=_families(d.get("unprotected", [])),
        trusted=tuple(_ifname(t) for t in d.get("trusted", [])),
    )


def _families(value: object) -> frozenset[int]:
    if not isinstance(value, list) or not all(type(v) is int and v in (4, 6) for v in value):
        raise CorruptState(f"stored address families {str(value)[:32]!r} are not valid")
    return frozenset(value)


def endpoint_to_json(e: Endpoint) -> str:
    return json.dumps(
        {
            "host_ifname": e.host_ifname,
            "container_ifname": e.container_ifname,
            "mac": e.mac,
            "address4": str(e.address4) if e.address4 else "",
            "address6": str(e.address6) if e.address6 else "",
            "sandbox_key": e.sandbox_key,
            "options": dict(e.options),
            "ports": [[p.proto, p.container_port, p.host_ip, p.host_port, p.family] for p in e.ports],
        },
        sort_keys=True,
    )


def endpoint_from_json(endpoint_id: str, network_id: str, text: str) -> Endpoint:
    d = json.loads(text)
    return Endpoint(
        id=endpoint_id,
        network_id=network_id,
        host_ifname=_ifname(d["host_ifname"]),
        container_ifname=_ifname(d["container_ifname"]),
        mac=d["mac"],
        address4=_iface4(d["address4"]),
        address6=_iface6(d["address6"]),
        sandbox_key=d["sandbox_key"],
        options=tuple(sorted(d["options"].items())),
        ports=tuple(_port(p) for p in d.get("ports", [])),
    )
