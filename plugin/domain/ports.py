"""Published ports: parse dockerd's com.docker.network.portmap and assign host ports. Pure.

Assignment is all-or-nothing: either every binding of an endpoint gets a host port, or the
request fails naming the binding that could not, and nothing is held.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

from .addresses import parse_ip
from .errors import Conflict, Exhausted, InvalidRequest

PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}
EPHEMERAL = (49153, 60999)


@dataclass(frozen=True)
class PortRequest:
    proto: str
    container_port: int
    host_ip: str
    host_port: int  # 0: pick one
    host_port_end: int
    family: int = 0


@dataclass(frozen=True)
class PortBinding:
    proto: str
    container_port: int
    host_ip: str  # "" means every host address of the family
    host_port: int
    family: int = 0  # 4, 6, or 0 for both (HostIP "" from dockerd)

    def applies_to(self, version: int) -> bool:
        return self.family in (0, version)

    def __str__(self) -> str:
        if not self.host_port:  # a routed gateway mode's: the container's own port
            return f"{self.container_port}/{self.proto} routed (IPv{self.family})"
        host = self.host_ip or ("[::]" if self.family == 6 else "0.0.0.0")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.host_port}/{self.proto}"


def _port(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise InvalidRequest(f"invalid {field} {value!r} in com.docker.network.portmap")
    return value


def parse_portmap(items: list[Any], default_host_ip: str = "") -> list[PortRequest]:
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidRequest(f"com.docker.network.portmap[{i}] must be an object")
        proto = PROTOCOLS.get(item["Proto"]) if isinstance(item.get("Proto"), int) else None
        if proto is None:
            raise InvalidRequest(f"unsupported protocol {item.get('Proto')!r} in com.docker.network.portmap")
        cport = _port("Port", item.get("Port"))
        hp = _port("HostPort", item.get("HostPort") or 0)
        end = _port("HostPortEnd", item.get("HostPortEnd") or hp)
        host_ip = item.get("HostIP") or default_host_ip or ""
        if not isinstance(host_ip, str):
            raise InvalidRequest("HostIP in com.docker.network.portmap must be a string")
        family = 0
        if host_ip:
            addr = parse_ip("HostIP in com.docker.network.portmap", host_ip)
            family = addr.version
            host_ip = "" if addr.is_unspecified else str(addr)
        if cport == 0 or (hp and end < hp):
            raise InvalidRequest(f"invalid port mapping {item!r}")
        out.append(PortRequest(proto, cport, host_ip, hp, max(end, hp), family))
    return out


def split_routed(
    requests: list[PortRequest], families: set[int], routed: frozenset[int]
) -> tuple[list[PortRequest], list[PortBinding]]:
    """A routed gateway mode publishes a container's port at its own address, with no host port
    (Docker's rule: the host address only says which family). Returns the requests that still
    need a host port (each for the families left) and the routed ports as bindings (host port 0)."""
    nat, direct = [], []
    for r in requests:
        wanted = {r.family} if r.family else set(families)
        for v in sorted(wanted & routed):
            b = PortBinding(r.proto, r.container_port, "", 0, v)
            if b not in direct:
                direct.append(b)
        left = wanted - routed
        if left == wanted:
            nat.append(r)
        elif len(left) == 1:
            nat.append(replace(r, family=left.pop()))
    return nat, direct


def _clash(a: PortBinding, proto: str, host_ip: str, family: int, port: int) -> bool:
    same_family = a.family == 0 or family == 0 or a.family == family
    same_ip = not a.host_ip or not host_ip or a.host_ip == host_ip
    return a.proto == proto and a.host_port == port and same_family and same_ip


HeldOn = Callable[[str, int], Iterable[PortBinding]]  # (protocol, host port) -> bindings held there


class _Held:
    """Bindings by (protocol, host port): a candidate port is compared only with the bindings
    on that very port, looked up once (in the state store's index, or in a list indexed here)."""

    def __init__(self, held: Iterable[PortBinding] | HeldOn):
        self._by_port: dict[tuple[str, int], list[PortBinding]] = defaultdict(list)
        self._lookup: HeldOn | None = held if callable(held) else None
        self._seen: set[tuple[str, int]] = set()
        if not callable(held):
            for b in held:
                self.add(b)

    def add(self, b: PortBinding) -> None:
        self._by_port[(b.proto, b.host_port)].append(b)

    def free(self, r: PortRequest, port: int) -> bool:
        key = (r.proto, port)
        if self._lookup is not None and key not in self._seen:
            self._seen.add(key)
            self._by_port[key].extend(self._lookup(r.proto, port))
        return not any(_clash(b, r.proto, r.host_ip, r.family, port) for b in self._by_port.get(key, ()))


def assign(
    requests: Iterable[PortRequest], held: Iterable[PortBinding] | HeldOn, start: dict[str, int] | None = None
) -> list[PortBinding]:
    """Host ports for every request, avoiding the bindings already held (and each other).

    `held` is every binding held, or a lookup of those on one port (the state store's index):
    then the cost does not grow with the bindings held elsewhere. A port to pick is looked for
    from start[protocol] on (where the previous pick in the ephemeral range ended), so picking
    does not probe again, one by one, the ports picked before. Within one call a request
    continues from the last port picked in the same range."""
    taken = _Held(held)
    out: list[PortBinding] = []
    cursor: dict[tuple[Any, ...], int] = {}  # next port to try, per kind of binding and range

    def first_free(r: PortRequest, lo: int, hi: int) -> int | None:
        return next((p for p in range(lo, hi + 1) if taken.free(r, p)), None)

    for r in requests:
        lo, hi = (r.host_port, r.host_port_end) if r.host_port else EPHEMERAL
        key = (r.proto, r.host_ip, r.family, lo, hi)
        first = lo if r.host_port else (start or {}).get(r.proto, lo)
        begin = cursor.get(key, first if lo <= first <= hi else lo)
        port = first_free(r, begin, hi)
        if port is None and begin > lo:
            port = first_free(r, lo, begin - 1)
        if port is not None:
            cursor[key] = port + 1
        if port is None:
            shown = str(PortBinding(r.proto, r.container_port, r.host_ip, lo, r.family))
            where = shown if hi == lo else shown.replace(f":{lo}/", f":{lo}-{hi}/")
            if r.host_port:
                raise Conflict(f"host port {where} is already published by another container")
            raise Exhausted(f"no free host port left for {r.container_port}/{r.proto}")
        binding = PortBinding(r.proto, r.container_port, r.host_ip, port, r.family)
        taken.add(binding)
        out.append(binding)
    return out
