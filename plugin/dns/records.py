"""Immutable DNS record snapshots, one per network. Pure: built from what Docker reports.

A query is answered only from the snapshot of the network it arrived on, so names of other
networks never leak. Reloading swaps a whole snapshot; nothing is edited in place.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable

from ..domain.model import ContainerInfo


@dataclass(frozen=True)
class Snapshot:
    network: str                                   # the network's name
    names: dict = field(default_factory=dict)      # fqdn -> (tuple of v4, tuple of v6)
    ptr: dict = field(default_factory=dict)        # reverse name -> target fqdn

    def lookup(self, qname: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        return self.names.get(qname.lower().rstrip(".") + ".")

    def reverse(self, qname: str) -> str | None:
        return self.ptr.get(qname.lower().rstrip(".") + ".")

    def listing(self) -> list[dict]:
        rows = [{"name": n, "A": list(v4), "AAAA": list(v6)} for n, (v4, v6) in sorted(self.names.items())]
        rows += [{"name": n, "PTR": t} for n, t in sorted(self.ptr.items())]
        return rows


def _fqdn(name: str) -> str:
    return name.lower().strip(".") + "."


def build(network_name: str, containers: Iterable[ContainerInfo], gateways: Iterable[str] = ()) -> Snapshot:
    """Names: container name, each alias, the 12-character short ID, and each of those
    qualified with the network name; the gateway as 'gateway'. Names shared by several
    containers carry all their addresses. PTR for every address points at name.network."""
    v4: dict[str, list[str]] = {}
    v6: dict[str, list[str]] = {}
    ptr: dict[str, str] = {}
    net = network_name.lower()

    def add(name: str, a4: str, a6: str) -> None:
        for key in {_fqdn(name), _fqdn(f"{name}.{net}")}:
            if a4 and a4 not in v4.setdefault(key, []):
                v4[key].append(a4)
            if a6 and a6 not in v6.setdefault(key, []):
                v6[key].append(a6)

    for c in sorted(containers, key=lambda c: c.name):
        name = c.name.lstrip("/")
        for n in {name, c.id[:12], *c.aliases}:
            if n and _valid(n):
                add(n, c.ipv4, c.ipv6)
        for addr in (c.ipv4, c.ipv6):
            if addr:
                ptr.setdefault(ipaddress.ip_address(addr).reverse_pointer + ".", _fqdn(f"{name}.{net}"))
    for gw in gateways:
        ip = ipaddress.ip_address(gw)
        add("gateway", gw if ip.version == 4 else "", gw if ip.version == 6 else "")
        ptr.setdefault(ip.reverse_pointer + ".", _fqdn(f"gateway.{net}"))
    names = {k: (tuple(v4.get(k, ())), tuple(v6.get(k, ()))) for k in set(v4) | set(v6)}
    return Snapshot(network=network_name, names=names, ptr=ptr)


def _valid(name: str) -> bool:
    return 0 < len(name) < 254 and all(0 < len(label) < 64 for label in name.strip(".").split("."))
