"""Pure subnet logic: default pool specs, carving a free subnet, naming conflicts."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..domain.errors import ConfigError
from ..domain.model import IPNetwork, Taken


@dataclass(frozen=True)
class PoolSpec:
    """A default pool: automatic subnets of /size are carved from base."""

    base: IPNetwork
    size: int

    def __str__(self) -> str:
        return f"{self.base}:{self.size}"


def parse_pool_specs(text: str, version: int) -> tuple[PoolSpec, ...]:
    """'172.16.0.0/12:24,192.168.0.0/16:24' -> PoolSpecs. Raises ConfigError naming the entry."""
    specs = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        base_text, sep, size_text = item.rpartition(":")
        if not sep or not size_text.isdigit():
            raise ConfigError(f"invalid default pool {item!r}: expected BASE/LEN:SIZE, e.g. 172.16.0.0/12:24")
        try:
            base = ipaddress.ip_network(base_text)
        except ValueError:
            raise ConfigError(f"invalid default pool {item!r}: {base_text!r} is not a network") from None
        size = int(size_text)
        if base.version != version or not base.prefixlen <= size <= base.max_prefixlen - 2:
            raise ConfigError(
                f"invalid default pool {item!r}: size must be IPv{version}, "
                f"between /{base.prefixlen} and /{base.max_prefixlen - 2}"
            )
        specs.append(PoolSpec(base, size))
    return tuple(specs)


def first_conflict(subnet: IPNetwork, taken: Iterable[Taken]) -> Taken | None:
    for t in taken:
        if t.network.version == subnet.version and t.network.overlaps(subnet):
            return t
    return None


def find_free_subnet(specs: Sequence[PoolSpec], taken: Sequence[Taken]) -> IPNetwork | None:
    """The first /size subnet of the specs, in order, that overlaps nothing taken.

    Skips past a whole taken range at once, so the cost grows with the number of taken ranges,
    not with the number of candidate subnets.
    """
    for spec in specs:
        cls = ipaddress.IPv4Network if spec.base.version == 4 else ipaddress.IPv6Network
        step = 1 << (spec.base.max_prefixlen - spec.size)
        cand = int(spec.base.network_address)
        end = int(spec.base.broadcast_address)
        relevant = [
            t.network for t in taken if t.network.version == spec.base.version and t.network.overlaps(spec.base)
        ]
        while cand + step - 1 <= end:
            net = cls((cand, spec.size))
            hit = next((t for t in relevant if t.overlaps(net)), None)
            if hit is None:
                return net
            past = int(hit.broadcast_address) + 1
            cand = max(cand + step, (past + step - 1) // step * step)
    return None
