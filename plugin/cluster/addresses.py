"""Which addresses of each cluster network are taken, as this host knows it: etcd's addr/ keys
(kept current by the cluster watch) and this host's own claims, plus the candidates this host's
threads are claiming at this moment.

etcd's compare-and-swap decides who gets an address; this book only makes a collision rare, so
that an allocation is one transaction: threads of one host never try the same candidate, and each
host starts its walk at a place of its own in the subnet (its "home", from a hash of its name),
so hosts starting containers at the same moment do not race for the same addresses.
"""

from __future__ import annotations

import threading
import time
import zlib
from typing import Collection, Iterable


QUARANTINE = 120.0  # seconds an address that came free is passed over while others are free


def home(host: str, lo: int, hi: int) -> int:
    """The address after which this host's first walk in [lo, hi] starts."""
    return lo - 1 + zlib.crc32(host.encode()) % (hi - lo + 1)


class AddressBook:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken: dict[str, set[int]] = {}
        self._pending: dict[str, set[int]] = {}
        # network -> address -> when it came free: a cut-off host's addresses come free when its
        # lease expires, and it claims them back when it returns; reserves that top up at once
        # would otherwise take them first (and take that host's containers off the network)
        self._freed: dict[str, dict[int, float]] = {}
        # network -> how many times what it has taken or being claimed changed: the reserve's
        # loop re-counts a network's free addresses only when this moved
        self._versions: dict[str, int] = {}

    def _bump(self, network: str) -> None:
        self._versions[network] = self._versions.get(network, 0) + 1

    def version(self, network: str) -> int:
        with self._lock:
            return self._versions.get(network, 0)

    def _came_free(self, network: str, addresses: Iterable[int]) -> None:
        now = time.monotonic()
        freed = self._freed.setdefault(network, {})  # in the order they came free, oldest first
        for a in addresses:
            freed.pop(a, None)
            freed[a] = now
        while len(freed) > 4096:  # (forget the oldest: the first; no sort on every address)
            del freed[next(iter(freed))]

    def known(self, network: str) -> bool:
        with self._lock:
            return network in self._taken

    def load(self, network: str, addresses: Iterable[int]) -> None:
        with self._lock:
            new = set(addresses)
            self._came_free(network, self._taken.get(network, set()) - new)
            self._taken[network] = new
            self._bump(network)

    def replace_all(self, by_network: dict[str, set[int]]) -> None:
        with self._lock:
            for n, old in self._taken.items():
                self._came_free(n, old - by_network.get(n, set()))
            for n in {*self._taken, *by_network}:
                self._bump(n)
            self._taken = {n: set(a) for n, a in by_network.items()}

    def taken(self, network: str, address: int) -> None:
        with self._lock:
            self._taken.setdefault(network, set()).add(address)
            self._bump(network)

    def freed(self, network: str, address: int) -> None:
        with self._lock:
            taken = self._taken.get(network, set())
            if address in taken:
                taken.discard(address)
                self._came_free(network, (address,))
                self._bump(network)

    def reserve(self, network: str, lo: int, hi: int, cursor: int, avoid: Collection[int] = ()) -> int | None:
        """The first address after cursor (wrapping once) that is neither taken, nor being
        claimed by another thread here, nor in `avoid`, nor come free in the last QUARANTINE
        seconds (unless no other is free); it is being claimed from now on (settle() ends that)."""
        with self._lock:
            taken = self._taken.setdefault(network, set())
            pending = self._pending.setdefault(network, set())
            now = time.monotonic()
            recent = {a for a, t in self._freed.get(network, {}).items() if now - t < QUARANTINE}
            size = hi - lo + 1
            start = cursor + 1 if lo <= cursor + 1 <= hi else lo
            for skip in (recent, frozenset[int]()) if recent else (frozenset[int](),):
                for i in range(size):
                    candidate = lo + (start - lo + i) % size
                    if (
                        candidate not in taken
                        and candidate not in pending
                        and candidate not in avoid
                        and candidate not in skip
                    ):
                        pending.add(candidate)
                        self._bump(network)
                        return candidate
            return None

    def free(self, network: str, lo: int, hi: int) -> int:
        """How many addresses of [lo, hi] are neither taken nor being claimed."""
        with self._lock:
            busy = self._taken.get(network, set()) | self._pending.get(network, set())
            return hi - lo + 1 - sum(1 for a in busy if lo <= a <= hi)

    def settle(self, network: str, address: int, taken: bool) -> None:
        """The claim of `address` is over: taken (by this host or another), or not (etcd did not
        answer)."""
        with self._lock:
            self._pending.get(network, set()).discard(address)
            if taken:
                self._taken.setdefault(network, set()).add(address)
            self._bump(network)
