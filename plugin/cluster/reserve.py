"""The reserve: addresses of a cluster network this host has claimed in etcd ahead of need (its
claim and its listing, kind "reserve", under its lease), so that a container's address is handed
out with no etcd round trip (issue 23, item 6: under 3 x 20 concurrent starts, every start waited
for etcd's transactions one behind the other).

This is only the bookkeeping, in memory: ClusterService claims (a batch in one transaction, on a
thread of its own), hands out, gives back, and writes the reserve into etcd again in its resync.
A plugin that restarts has an empty reserve; its resync deletes the claims it no longer wants.

How much is kept: TARGET per network made here (doubled, up to MOST, each time calls had to wait
for a batch: a host that starts containers in bursts keeps more), never more than a share of what is free
(free // (SHARE x hosts on the network)), so that a nearly full subnet's last addresses are not
held in reserves while another host needs them; what is over that share is given back. A call
that finds the reserve empty waits, with the others that do, for the next batch (one etcd
transaction for all of them) rather than claiming alone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Collection

TARGET = 32
MOST = 64  # what a range's target grows to, doubling each time calls had to wait for a batch
SHARE = 2


Range = tuple[str, int, int]  # (network, first, last address): a network's IPv4 and IPv6 apart


@dataclass
class _Net:
    target: int
    free: list[int] = field(default_factory=list)  # claimed ahead, not handed out, oldest first
    waiting: int = 0  # calls waiting for the next batch
    handed: set[int] = field(default_factory=set)  # handed out: etcd's record still says "reserve"


class Reserve:
    def __init__(self, target: int = TARGET) -> None:
        self.target = target
        self._cond = threading.Condition()
        self._nets: dict[Range, _Net] = {}
        self.hits = 0
        self.misses = 0

    def demand(self, network: str, lo: int, hi: int) -> None:
        """The range is in demand from now on (a network made here: its first container's
        address is claimed ahead too)."""
        with self._cond:
            self._nets.setdefault((network, lo, hi), _Net(self.target))

    def take(self, network: str, lo: int, hi: int, avoid: Collection[int] = ()) -> int | None:
        """An address of the reserve of [lo, hi], not in `avoid`, handed out now (None: none);
        the range is in demand from now on."""
        with self._cond:
            return self._take(self._nets.setdefault((network, lo, hi), _Net(self.target)), avoid)

    def wait(self, network: str, lo: int, hi: int, avoid: Collection[int], timeout: float) -> int | None:
        """As take, waiting up to `timeout` for the next batch (which claims one more for each
        waiting call); None when none came (the caller claims alone)."""
        with self._cond:
            net = self._nets.setdefault((network, lo, hi), _Net(self.target))
            net.waiting += 1
            net.target = min(MOST, max(net.target, self.target) * 2)  # (bursts come again)
            try:
                got = self._cond.wait_for(lambda: self._take(net, avoid), timeout)
            finally:
                net.waiting -= 1
            if got is None:
                self.misses += 1
            return got

    def _take(self, net: _Net, avoid: Collection[int]) -> int | None:
        for i, a in enumerate(net.free):
            if a not in avoid:
                del net.free[i]
                net.handed.add(a)
                self.hits += 1
                return a
        return None

    def wanted(self, key: Range, cap: int) -> int:
        """How many to claim now: the target (no more than `cap`) and one for each call waiting,
        less what the reserve has; negative: how many to give back."""
        with self._cond:
            net = self._nets.get(key)
            if net is None:
                return 0
            return max(0, min(net.target, cap)) + net.waiting - len(net.free)

    def quiet(self, key: Range) -> tuple[int, int] | None:
        """What the reserve of `key` holds and its target, when nothing handed out from it waits
        to be written down and no call waits for it (else None: its loop has work)."""
        with self._cond:
            net = self._nets.get(key)
            if net is None or net.handed or net.waiting:
                return None
            return len(net.free), net.target

    def waiters(self) -> bool:
        """Whether any call waits for a batch."""
        with self._cond:
            return any(n.waiting for n in self._nets.values())

    def ranges(self) -> list[Range]:
        """The ranges in demand."""
        with self._cond:
            return list(self._nets)

    def add(self, key: Range, addresses: Collection[int]) -> bool:
        """Claimed addresses into the reserve; False when the range is no longer in demand here
        (its network was forgotten meanwhile: the caller gives them back)."""
        with self._cond:
            net = self._nets.get(key)
            if net is None:
                return False
            net.free.extend(a for a in addresses if a not in net.free)
            self._cond.notify_all()
            return True

    def excess(self, key: Range, count: int) -> list[int]:
        """The newest `count` addresses of the reserve, taken out of it (to be given back)."""
        with self._cond:
            net = self._nets.get(key)
            if net is None or count <= 0:
                return []
            out = net.free[-count:]
            del net.free[-count:]
            return out

    def drop(self, network: str, address: int, handed: bool = False) -> bool:
        """Take `address` out of the network's reserve: True when it was there, not handed out.
        `handed`: it is handed out here now (asked for by name); else it is given up."""
        with self._cond:
            for (name, _, _), net in self._nets.items():
                if name == network and address in net.free:
                    net.free.remove(address)
                    if handed:
                        net.handed.add(address)
                        self.hits += 1
                    return True
            return False

    def handed(self, key: Range) -> set[int]:
        """Handed out since the last call, whose records still say "reserve"."""
        with self._cond:
            net = self._nets.get(key)
            if net is None:
                return set()
            out, net.handed = net.handed, set()
            return out

    def held(self, key: Range) -> int:
        with self._cond:
            net = self._nets.get(key)
            return len(net.free) if net is not None else 0

    def addresses(self, network: str) -> set[int]:
        """What the network's reserve holds, in every range."""
        with self._cond:
            return {a for (name, _, _), net in self._nets.items() if name == network for a in net.free}

    def networks(self) -> set[str]:
        with self._cond:
            return {name for name, _, _ in self._nets}

    def forget(self, network: str) -> list[int]:
        """The network is gone here: its reserve (to be given back) and its demand."""
        with self._cond:
            out: list[int] = []
            for key in [k for k in self._nets if k[0] == network]:
                out += self._nets.pop(key).free
            self._cond.notify_all()
            return out
