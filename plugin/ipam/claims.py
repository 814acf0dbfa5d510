"""How a pool's addresses are claimed, behind one interface (AddressClaims), so that
IpamService.request_address has one path: LocalClaims takes them in this host's state store;
plugin.cluster.claims.EtcdClaims claims a cluster network's in etcd first. Both check a wanted
address with check_wanted and give a restarting container its address back with Returning."""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from ..domain.addresses import parse_ip
from ..domain.errors import Conflict, Exhausted, InvalidRequest, NotFound
from ..domain.model import IPAddress, PoolRecord
from ..store.db import Store, Tx
from .allocator import is_usable, pick_address, usable_range

GATEWAY_TYPE = "com.docker.network.gateway"
ENDPOINT_NAME = "com.docker.network.endpoint.name"  # sent by dockerd 29 and later
# After the plugin starts (dockerd starts it, and restarts the containers that restart by
# themselves), requests that do not name their container prefer the addresses such containers had.
RESTART_WINDOW = 120.0


@dataclass(frozen=True)
class AddressRequest:
    """One RequestAddress: the gateway's, a static address, or any (dynamic)."""

    kind: str  # "gateway", "static" or "dynamic"
    wanted: IPAddress | None = None  # a static address (or a gateway the user chose)
    name: str | None = None  # the container's endpoint name, when dockerd sends it (29+)
    named: bool = False  # whether dockerd sent the name option at all

    @classmethod
    def of(cls, address: str, options: dict[str, str]) -> AddressRequest:
        wanted = parse_ip("Address", address) if address else None
        gateway = options.get("RequestAddressType") == GATEWAY_TYPE
        kind = "gateway" if gateway else ("static" if wanted is not None else "dynamic")
        named = ENDPOINT_NAME in options
        return cls(kind, wanted, options.get(ENDPOINT_NAME) or None, named)


def check_wanted(pool: PoolRecord, wanted: IPAddress) -> int:
    """A wanted address as an integer, if the pool can hand it out."""
    if wanted.version != pool.subnet.version or wanted not in pool.subnet:
        raise InvalidRequest(f"address {wanted} is outside pool {pool.subnet}")
    if not is_usable(pool.subnet, int(wanted)):
        raise InvalidRequest(f"address {wanted} is the network or broadcast address of {pool.subnet}")
    return int(wanted)


class Returning:
    """The address a container that restarts by itself had (remembered from Docker's events by
    IpamService.remember): found by its name where dockerd sends it (29+); before that, a
    request without a name shortly after the plugin started is taken to be such a restart and
    gets the lowest address still waiting for its owner, so restarted containers keep their
    addresses as a set (one restarting alone keeps its own)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._started = clock()

    def address(self, tx: Tx, pool: PoolRecord, request: AddressRequest) -> int | None:
        lo, hi = usable_range(pool.subnet, pool.ip_range)
        if request.named:
            back = tx.containers.waiting_address(pool.id, request.name) if request.name else None
        elif self._clock() - self._started < RESTART_WINDOW:
            back = tx.containers.waiting_address(pool.id)
        else:
            back = None
        return back if back is not None and lo <= back <= hi else None


class AddressClaims(Protocol):
    """Claims and releases the addresses of pools (each pool's own way)."""

    def claim(self, pool_id: str, request: AddressRequest) -> tuple[PoolRecord, int]:
        """The pool and the address claimed for the request."""
        ...

    def release(self, pool_id: str, address: int) -> None: ...


class LocalClaims:
    """Addresses leased in this host's state store: one transaction each."""

    def __init__(self, store: Store, returning: Returning):
        self._store = store
        self._returning = returning

    def claim(self, pool_id: str, request: AddressRequest) -> tuple[PoolRecord, int]:
        with self._store.transaction() as tx:
            pool = tx.leases.get_pool(pool_id)
            if pool is None:
                raise NotFound(f"unknown pool {pool_id!r}")
            return pool, self.claim_in(tx, pool, request)

    def claim_in(self, tx: Tx, pool: PoolRecord, request: AddressRequest) -> int:
        if request.wanted is not None:
            value = check_wanted(pool, request.wanted)
            if not tx.leases.add(pool.id, value, request.kind):
                raise Conflict(f"address {request.wanted} is already in use in pool {pool.subnet}")
            return value
        if request.kind == "gateway":
            lo, hi = usable_range(pool.subnet)
            picked = pick_address(lo, hi, lo - 1, lambda s: tx.leases.taken_from(pool.id, s))
            if picked is None or not tx.leases.add(pool.id, picked, "gateway"):
                raise Exhausted(f"no free address left for the gateway in pool {pool.subnet}")
            return picked
        return self._dynamic(tx, pool, request)

    def _dynamic(self, tx: Tx, pool: PoolRecord, request: AddressRequest) -> int:
        """An address for a container that asked for none: its own again if it is restarting
        (see Returning); else the next one from the cursor, over leased and remembered addresses
        alike (remembered addresses are taken only when nothing else is left)."""
        lo, hi = usable_range(pool.subnet, pool.ip_range)
        back = self._returning.address(tx, pool, request)
        if back is not None and tx.leases.add(pool.id, back, "dynamic"):
            return back

        def taken(start: int) -> Iterable[int]:
            return heapq.merge(tx.leases.taken_from(pool.id, start), tx.containers.owned_from(pool.id, start))

        value = pick_address(lo, hi, pool.cursor, taken)
        if value is None:  # only remembered addresses are left: they are not reservations
            value = pick_address(lo, hi, pool.cursor, lambda s: tx.leases.taken_from(pool.id, s))
        if value is None:
            where = f"ip-range {pool.ip_range} of pool {pool.subnet}" if pool.ip_range else f"pool {pool.subnet}"
            raise Exhausted(f"no free address left in {where}")
        tx.leases.add(pool.id, value, "dynamic")
        tx.leases.set_cursor(pool.id, value)
        return value

    def release(self, pool_id: str, address: int) -> None:
        with self._store.transaction() as tx:
            tx.leases.delete(pool_id, address)
