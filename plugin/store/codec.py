"""Domain records <-> JSON documents stored in SQLite. Versioned by the schema in db.py."""

from __future__ import annotations

import ipaddress
import json

from ..domain.model import Endpoint, Network, Subnet
from ..domain.ports import PortBinding


def _iface(value):
    return ipaddress.ip_interface(value) if value else None


def network_to_json(n: Network) -> str:
    return json.dumps({
        "bridge": n.bridge, "mtu": n.mtu, "internal": n.internal, "ipv6": n.ipv6, "icc": n.icc,
        "masquerade": n.masquerade, "host_binding_ipv4": n.host_binding_ipv4,
        "bridge_owned": n.bridge_owned, "options": dict(n.options),
        "subnets": [{"pool": str(s.pool), "gateway": str(s.gateway) if s.gateway else "",
                     "aux": dict((k, str(v)) for k, v in s.aux)} for s in n.subnets],
    }, sort_keys=True)


def network_from_json(network_id: str, text: str) -> Network:
    d = json.loads(text)
    subnets = tuple(Subnet(pool=ipaddress.ip_network(s["pool"]), gateway=_iface(s["gateway"]),
                           aux=tuple((k, ipaddress.ip_interface(v)) for k, v in sorted(s["aux"].items())))
                    for s in d["subnets"])
    return Network(id=network_id, bridge=d["bridge"], subnets=subnets, mtu=d["mtu"],
                   internal=d["internal"], ipv6=d["ipv6"], icc=d["icc"], masquerade=d["masquerade"],
                   host_binding_ipv4=d["host_binding_ipv4"], bridge_owned=d["bridge_owned"],
                   options=tuple(sorted(d["options"].items())))


def endpoint_to_json(e: Endpoint) -> str:
    return json.dumps({
        "host_ifname": e.host_ifname, "container_ifname": e.container_ifname, "mac": e.mac,
        "address4": str(e.address4) if e.address4 else "",
        "address6": str(e.address6) if e.address6 else "",
        "sandbox_key": e.sandbox_key, "options": dict(e.options),
        "ports": [[p.proto, p.container_port, p.host_ip, p.host_port, p.family] for p in e.ports],
    }, sort_keys=True)


def endpoint_from_json(endpoint_id: str, network_id: str, text: str) -> Endpoint:
    d = json.loads(text)
    return Endpoint(id=endpoint_id, network_id=network_id, host_ifname=d["host_ifname"],
                    container_ifname=d["container_ifname"], mac=d["mac"],
                    address4=_iface(d["address4"]), address6=_iface(d["address6"]),
                    sandbox_key=d["sandbox_key"], options=tuple(sorted(d["options"].items())),
                    ports=tuple(PortBinding(*p) for p in d.get("ports", [])))
