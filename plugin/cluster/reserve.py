"""The reserve: addresses of a cluster network this host has claimed in etcd ahead of need (its
claim and its listing, kind "reserve", under its lease), so that a container's address is handed
out with no etcd round trip (issue 23, item 6: under 3 x 20 concurrent starts, every start waited
for etcd's transactions one behind the other).

This is only the bookkeeping, in memory: ClusterService claims (a batch in one transaction, on a
thread of its own), hands out, gives back, and writes the reserve into etcd again in its resync.
A plugin that restarts has an empty reserve; its resync deletes the claims it no longer wants.

How much is kept: TARGET per network that has asked, never more than a share of what is free
(free // (SHARE x hosts on the network)), so that a nearly full subnet's last addresses are not
held in reserves while another host needs them; what is over that share is given back. A call
that finds the reserve empty waits, with the others that do, for the next batch (one etcd
transaction for all of them) rather than claiming alone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Collection

TARGET = 8
SHARE = 4


@dataclass
class _Net:
    lo: int
    hi: int
    free: list[int] = field(default_factory=list)  # claimed ahead, not handed out, oldest first
    waiting: int = 0  # calls waiting for the next batch
    handed: set[int] = field(default_factory=set)  # handed out: etcd's record still says "reserve"


class Reserve:
    def __init__(self, target: int = TARGET) -> None:
        self.target = target
        self._cond = threading.Condition()
        self._nets: dict[str, _Net] = {}
        self.hits = 0
        self.misses = 0

    def take(self, network: str, lo: int, hi: int, avoid: Collection[int] = ()) -> int | None:
        """An address of the reserve in [lo, hi] and not in `avoid`, handed out now (None: none);
        the network is in demand from now on (the range is the last one asked for)."""
        with self._cond:
            return self._take(self._demand(network, lo, hi), lo, hi, avoid)

    def wait(self, network: str, lo: int, hi: int, avoid: Collection[int], timeout: float) -> int | None:
        """As take, waiting up to `timeout` for the next batch (which claims one more for each
        waiting call); None when none came (the caller claims alone)."""
        with self._cond:
            net = self._demand(network, lo, hi)
            net.waiting += 1
            self._cond.notify_all()
            try:
                got = self._cond.wait_for(lambda: self._take(net, lo, hi, avoid), timeout)
            finally:
                net.waiting -= 1
            if got is None:
                self.misses += 1
            return got

    def _take(self, net: _Net, lo: int, hi: int, avoid: Collection[int]) -> int | None:
        for i, a in enumerate(net.free):
            if lo <= a <= hi and a not in avoid:
                del net.free[i]
                net.handed.add(a)
                self.hits += 1
                return a
        return None

    def _demand(self, network: str, lo: int, hi: int) -> _Net:
        net = self._nets.get(network)
        if net is None:
            net = self._nets[network] = _Net(lo, hi)
        net.lo, net.hi = lo, hi
        return net

    def wanted(self, network: str, cap: int) -> int:
        """How many to claim now: the target (no more than `cap`) and one for each call waiting,
        less what the reserve has; negative: how many to give back."""
        with self._cond:
            net = self._nets.get(network)
            if net is None:
                return 0
            return max(0, min(self.target, cap)) + net.waiting - len(net.free)

    def waiters(self) -> bool:
        with self._cond:
            return any(n.waiting for n in self._nets.values())

    def networks(self) -> dict[str, tuple[int, int]]:
        """The networks in demand, with the range last asked for."""
        with self._cond:
            return {n: (net.lo, net.hi) for n, net in self._nets.items()}

    def add(self, network: str, addresses: Collection[int]) -> bool:
        """Claimed addresses into the reserve; False when the network is no longer in demand
        here (it was forgotten meanwhile: the caller gives them back)."""
        with self._cond:
            net = self._nets.get(network)
            if net is None:
                return False
            net.free.extend(a for a in addresses if a not in net.free)
            self._cond.notify_all()
            return True

    def excess(self, network: str, count: int) -> list[int]:
        """The newest `count` addresses of the reserve, taken out of it (to be given back)."""
        with self._cond:
            net = self._nets.get(network)
            if net is None or count <= 0:
                return []
            out = net.free[-count:]
            del net.free[-count:]
            return out

    def drop(self, network: str, address: int, handed: bool = False) -> bool:
        """Take `address` out of the reserve: True when it was there, not handed out. `handed`:
        it is handed out here now (asked for by name); else it is given up (to another host)."""
        with self._cond:
            net = self._nets.get(network)
            if net is None or address not in net.free:
                return False
            net.free.remove(address)
            if handed:
                net.handed.add(address)
                self.hits += 1
            return True

    def handed(self, network: str) -> set[int]:
        """Handed out since the last call, whose records still say "reserve"."""
        with self._cond:
            net = self._nets.get(network)
            if net is None:
                return set()
            out, net.handed = net.handed, set()
            return out

    def addresses(self, network: str) -> set[int]:
        with self._cond:
            net = self._nets.get(network)
            return set(net.free) if net is not None else set()

    def forget(self, network: str) -> list[int]:
        """The network is gone here: its reserve (to be given back) and its demand."""
        with self._cond:
            net = self._nets.pop(network, None)
            self._cond.notify_all()
            return list(net.free) if net is not None else []
