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
import zlib
from typing import Collection, Iterable


def home(host: str, lo: int, hi: int) -> int:
    """The address after which this host's first walk in [lo, hi] starts."""
    return lo - 1 + zlib.crc32(host.encode()) % (hi - lo + 1)


class AddressBook:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken: dict[str, set[int]] = {}
        self._pending: dict[str, set[int]] = {}

    def known(self, network: str) -> bool:
        with self._lock:
            return network in self._taken

    def load(self, network: str, addresses: Iterable[int]) -> None:
        with self._lock:
            self._taken[network] = set(addresses)

    def replace_all(self, by_network: dict[str, set[int]]) -> None:
        with self._lock:
            self._taken = {n: set(a) for n, a in by_network.items()}

    def taken(self, network: str, address: int) -> None:
        with self._lock:
            self._taken.setdefault(network, set()).add(address)

    def freed(self, network: str, address: int) -> None:
        with self._lock:
            self._taken.get(network, set()).discard(address)

    def reserve(self, network: str, lo: int, hi: int, cursor: int, avoid: Collection[int] = ()) -> int | None:
        """The first address after cursor (wrapping once) that is neither taken, nor being
        claimed by another thread here, nor in `avoid`; it is being claimed from now on (settle()
        ends that)."""
        with self._lock:
            taken = self._taken.setdefault(network, set())
            pending = self._pending.setdefault(network, set())
            size = hi - lo + 1
            start = cursor + 1 if lo <= cursor + 1 <= hi else lo
            for i in range(size):
                candidate = lo + (start - lo + i) % size
                if candidate not in taken and candidate not in pending and candidate not in avoid:
                    pending.add(candidate)
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
