"""Published ports: parse dockerd's com.docker.network.portmap and assign host ports. Pure.

Assignment is all-or-nothing: either every binding of an endpoint gets a host port, or the
request fails naming the binding that could not, and nothing is held.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

from .errors import Conflict, Exhausted, InvalidRequest

PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}
EPHEMERAL = (49153, 60999)


@dataclass(frozen=True)
class PortRequest:
    proto: str
    container_port: int
    host_ip: str
    host_port: int       # 0: pick one
    host_port_end: int


@dataclass(frozen=True)
class PortBinding:
    proto: str
    container_port: int
    host_ip: str         # "" means every host address
    host_port: int

    def __str__(self) -> str:
        return f"{self.host_ip or '0.0.0.0'}:{self.host_port}/{self.proto}"


def _port(field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise InvalidRequest(f"invalid {field} {value!r} in com.docker.network.portmap")
    return value


def parse_portmap(items: list, default_host_ip: str = "") -> list[PortRequest]:
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidRequest(f"com.docker.network.portmap[{i}] must be an object")
        proto = PROTOCOLS.get(item.get("Proto"))
        if proto is None:
            raise InvalidRequest(f"unsupported protocol {item.get('Proto')!r} in com.docker.network.portmap")
        cport = _port("Port", item.get("Port"))
        hp = _port("HostPort", item.get("HostPort") or 0)
        end = _port("HostPortEnd", item.get("HostPortEnd") or hp)
        host_ip = item.get("HostIP") or default_host_ip or ""
        if not isinstance(host_ip, str):
            raise InvalidRequest("HostIP in com.docker.network.portmap must be a string")
        if host_ip:
            try:
                addr = ipaddress.ip_address(host_ip)
            except ValueError:
                raise InvalidRequest(f"invalid HostIP {host_ip!r} in com.docker.network.portmap") from None
            if addr.version != 4:
                continue  # IPv6 publishing is not done yet (see README)
            host_ip = "" if addr.is_unspecified else str(addr)
        if cport == 0 or (hp and end < hp):
            raise InvalidRequest(f"invalid port mapping {item!r}")
        out.append(PortRequest(proto, cport, host_ip, hp, max(end, hp)))
    return out


def _clash(a_ip: str, b_ip: str) -> bool:
    return not a_ip or not b_ip or a_ip == b_ip


def assign(requests: Iterable[PortRequest], held: Iterable[PortBinding]) -> list[PortBinding]:
    """Host ports for every request, avoiding the bindings already held (and each other)."""
    taken = list(held)
    out: list[PortBinding] = []

    def free(proto: str, host_ip: str, port: int) -> bool:
        return not any(b.proto == proto and b.host_port == port and _clash(b.host_ip, host_ip)
                       for b in taken + out)

    for r in requests:
        lo, hi = (r.host_port, r.host_port_end) if r.host_port else EPHEMERAL
        port = next((p for p in range(lo, hi + 1) if free(r.proto, r.host_ip, p)), None)
        if port is None:
            where = f"{r.host_ip or '0.0.0.0'}:{lo}" + (f"-{hi}" if hi != lo else "") + f"/{r.proto}"
            if r.host_port:
                raise Conflict(f"host port {where} is already published by another container")
            raise Exhausted(f"no free host port left for {r.container_port}/{r.proto}")
        out.append(PortBinding(r.proto, r.container_port, r.host_ip, port))
    return out
