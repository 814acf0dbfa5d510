"""Immutable DNS record snapshots, one per network. Pure: built from what Docker reports.

A query is answered only from the snapshot of the network it arrived on, so names of other
networks never leak. Reloading swaps a whole snapshot; nothing is edited in place.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterable

from ..domain.model import ContainerInfo

RENDERED = 2048  # containers whose names and PTR entries build() keeps ready (under 1 KB each)


@dataclass(frozen=True)
class Snapshot:
    network: str  # the network's name
    names: dict = field(default_factory=dict)  # fqdn -> (tuple of v4, tuple of v6)
    ptr: dict = field(default_factory=dict)  # reverse name -> target fqdn
    host_domain: str = ""  # app.pybridge.internal: NAME.<this> is NAME.app

    def lookup(self, qname: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        name = qname.lower().rstrip(".") + "."
        if self.host_domain and name.endswith("." + self.host_domain + "."):
            # web.app.pybridge.internal. -> web.app. (only the network-qualified form: the host
            # asks for NAME.NETWORK.SUFFIX, never for a bare NAME.SUFFIX)
            name = name[: -len(self.host_domain) - 1] + self.network.lower().strip(".") + "."
        return self.names.get(name)

    def reverse(self, qname: str) -> str | None:
        return self.ptr.get(qname.lower().rstrip(".") + ".")

    def listing(self) -> list[dict]:
        rows = [{"name": n, "A": list(v4), "AAAA": list(v6)} for n, (v4, v6) in sorted(self.names.items())]
        rows += [{"name": n, "PTR": t} for n, t in sorted(self.ptr.items())]
        return rows


def _fqdn(name: str) -> str:
    return name.lower().strip(".") + "."


def build(
    network_name: str, containers: Iterable[ContainerInfo], gateways: Iterable[str] = (), host_domain: str = ""
) -> Snapshot:
    """Names: container name, each alias, the 12-character short ID, and each of those
    qualified with the network name; the gateway as 'gateway'. Names shared by several
    containers carry all their addresses. PTR for every address points at name.network."""
    v4: dict[str, dict[str, None]] = {}  # (dicts as ordered sets: an alias many share stays linear)
    v6: dict[str, dict[str, None]] = {}
    ptr: dict[str, str] = {}
    net = network_name.lower()

    def add(keys: Iterable[str], a4: str, a6: str) -> None:
        for key in keys:
            if a4:
                v4.setdefault(key, {})[a4] = None
            if a6:
                v6.setdefault(key, {})[a6] = None

    for c in sorted(containers, key=lambda c: c.name):
        keys, ptrs = _rendered(c, net)
        add(keys, c.ipv4, c.ipv6)
        for reverse, target in ptrs:
            ptr.setdefault(reverse, target)
    for gw in gateways:
        ip = _ip(gw)
        if ip is None:
            continue
        add(_keys("gateway", net), gw if ip.version == 4 else "", gw if ip.version == 6 else "")
        target = _ptr_target("gateway", "gateway", net)
        if target:
            ptr.setdefault(ip.reverse_pointer + ".", target)
    names = {k: (tuple(v4.get(k, ())), tuple(v6.get(k, ()))) for k in set(v4) | set(v6)}
    return Snapshot(network=network_name, names=names, ptr=ptr, host_domain=host_domain.lower().strip("."))


def _keys(name: str, net: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys((_fqdn(name), _fqdn(f"{name}.{net}"))))


@functools.lru_cache(maxsize=RENDERED)
def _rendered(c: ContainerInfo, net: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The names a container answers for on network `net`, and its PTR entries. Kept for the
    next build: a network's snapshot is built again whole whenever one of its containers
    changes, and parsing names and addresses was most of that (73 ms for 1,000 containers)."""
    name = c.name.lstrip("/")
    keys: dict[str, None] = {}
    for n in sorted({name, c.id[:12], *c.aliases}):
        if n and _valid(n):
            keys.update(dict.fromkeys(_keys(n, net)))
    target = _ptr_target(name, c.id[:12], net)
    ptrs = []
    for addr in (c.ipv4, c.ipv6):
        ip = _ip(addr)
        if ip is not None and target:
            ptrs.append((ip.reverse_pointer + ".", target))
    return tuple(keys), tuple(ptrs)


_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}")


def _valid(name: str) -> bool:
    """A name DNS can carry: labels of 1-63 letters, digits, '-' or '_', 253 characters in all."""
    return 0 < len(name) < 254 and all(_LABEL.fullmatch(label) for label in name.strip(".").split("."))


def _ptr_target(name: str, short_id: str, net: str) -> str:
    """The name a PTR points at: name.network, else the first of name, id.network, id that DNS
    can carry (a container name over 63 characters is not a DNS label)."""
    for candidate in (f"{name}.{net}", name, f"{short_id}.{net}", short_id):
        if _valid(candidate):
            return _fqdn(candidate)
    return ""


def _ip(text: str):
    try:
        return ipaddress.ip_address(text) if text else None
    except ValueError:
        return None
