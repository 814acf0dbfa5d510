"""Pure address picking: which addresses of a subnet are usable, and the next free one.

Allocation walks round-robin from the last address handed out (like CNI host-local), so a
released address is not reused at once. The cost depends on how many taken addresses sit right
after the cursor, not on how many leases the pool holds.
"""

from __future__ import annotations

from typing import Callable, Iterable

from ..domain.model import IPNetwork

TakenFrom = Callable[[int], Iterable[int]]


def usable_range(subnet: IPNetwork, ip_range: IPNetwork | None = None) -> tuple[int, int]:
    """(first, last) usable address of subnet, narrowed to ip_range. IPv4 excludes the network
    and broadcast addresses (except in /31 and /32); IPv6 excludes the subnet-router anycast."""
    lo, hi = int(subnet.network_address), int(subnet.broadcast_address)
    if subnet.version == 4 and subnet.prefixlen < 31:
        lo, hi = lo + 1, hi - 1
    elif subnet.version == 6 and subnet.prefixlen < 127:
        lo += 1
    if ip_range is not None:
        lo = max(lo, int(ip_range.network_address))
        hi = min(hi, int(ip_range.broadcast_address))
    return lo, hi


def is_usable(subnet: IPNetwork, address: int) -> bool:
    lo, hi = usable_range(subnet)
    return lo <= address <= hi


def pick_address(lo: int, hi: int, cursor: int, taken_from: TakenFrom) -> int | None:
    """The first free address after cursor in [lo, hi], wrapping around once.

    taken_from(start) yields the taken addresses >= start in ascending order.
    """
    for start, end in ((max(lo, cursor + 1), hi), (lo, min(cursor, hi))):
        if start > end:
            continue
        cand = start
        for t in taken_from(cand):
            if t < cand:
                continue
            if t > cand or t > end:
                break
            cand = t + 1
            if cand > end:
                break
        if cand <= end:
            return cand
    return None
