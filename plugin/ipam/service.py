"""IpamService: the IpamDriver use cases, each one store transaction.

Overlap protection is ours to do (dockerd gives a remote IPAM none): explicit and automatic
subnets are checked against every pool pybridge holds and every host route (all tables) and
host address, and the error names the conflict.
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
import secrets
import time
from typing import Callable, Iterable, Sequence

from ..domain.errors import Conflict, Exhausted, InvalidRequest, NotFound
from ..domain.addresses import parse_cidr, parse_ip, parse_ip_interface
from ..domain.options import GLOBAL_SPACE, LOCAL_SPACE
from ..store.db import PoolRecord, Store
from .allocator import is_usable, pick_address, usable_range
from ..domain.model import Taken
from .pools import PoolSpec, find_free_subnet, first_conflict

log = logging.getLogger(__name__)

GATEWAY_TYPE = "com.docker.network.gateway"
ENDPOINT_NAME = "com.docker.network.endpoint.name"     # sent by dockerd 29 and later
# After the plugin starts (dockerd starts it, and restarts the containers that restart by
# themselves), requests that do not name their container prefer the addresses such containers had.
RESTART_WINDOW = 120.0

HostNetworks = Callable[[], Sequence[Taken]]


class IpamService:
    def __init__(self, store: Store, host_networks: HostNetworks,
                 default_pools: Sequence[PoolSpec], default_pools6: Sequence[PoolSpec],
                 clock: Callable[[], float] = time.monotonic, cluster=None):
        self._store = store
        self._cluster = cluster      # plugin.cluster.service.ClusterService in cluster mode
        self._host_networks = host_networks
        self._defaults = {4: tuple(default_pools), 6: tuple(default_pools6)}
        self._clock = clock
        self._started = clock()

    @staticmethod
    def capabilities() -> dict:
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    @staticmethod
    def default_address_spaces() -> dict:
        return {"LocalDefaultAddressSpace": LOCAL_SPACE, "GlobalDefaultAddressSpace": GLOBAL_SPACE}

    def usage(self) -> list[dict]:
        """Each pool: its subnet, how many addresses it can hand out, how many it has (one store
        read; for the metrics)."""
        with self._store.reading() as tx:
            pools, counts = tx.list_pools(), tx.lease_counts()
        out = []
        for p in pools:
            lo, hi = usable_range(p.subnet, p.ip_range)
            out.append({"pool": p.id, "subnet": str(p.subnet), "size": max(0, hi - lo + 1),
                        "used": counts.get(p.id, 0)})
        return out

    # pools
    def request_pool(self, space: str, pool: str, subpool: str, v6: bool) -> dict:
        version = 6 if v6 else 4
        subnet = parse_cidr("Pool (--subnet)", pool, version) if pool else None
        if subpool and subnet is None:
            raise InvalidRequest("--ip-range needs --subnet")
        ip_range = parse_cidr("SubPool (--ip-range)", subpool, version) if subpool else None
        if ip_range is not None and subnet is not None and not ip_range.subnet_of(subnet):  # type: ignore[arg-type]
            raise InvalidRequest(f"ip-range {ip_range} is outside subnet {subnet}")
        if subnet is not None and subnet.num_addresses < 4 and version == 4:
            raise InvalidRequest(f"subnet {subnet} is too small: use /30 or larger")
        with self._store.transaction() as tx:
            taken = [Taken(p.subnet, f"pool {p.subnet} already held by pybridge") for p in tx.list_pools()]
            taken += self._host_networks()
            if subnet is None:
                subnet = find_free_subnet(self._defaults[version], taken)
                if subnet is None:
                    pools = ", ".join(str(s) for s in self._defaults[version]) or "(none configured)"
                    raise Exhausted(f"no free IPv{version} subnet left in the default pools {pools}")
            else:
                hit = first_conflict(subnet, taken)
                if hit is not None:
                    raise Conflict(f"subnet {subnet} overlaps {hit.reason}")
            record = PoolRecord(id=f"{subnet}#{secrets.token_hex(4)}", space=space or LOCAL_SPACE,
                                subnet=subnet, ip_range=ip_range, cursor=-1)
            tx.put_pool(record)
        log.info("pool %s reserved", record.id)
        return {"PoolID": record.id, "Pool": str(subnet), "Data": {}}

    def release_pool(self, pool_id: str) -> None:
        with self._store.transaction() as tx:
            if tx.get_pool(pool_id) is None:
                return
            tx.delete_pool(pool_id)
        log.info("pool %s released", pool_id)

    # addresses
    def request_address(self, pool_id: str, address: str, options: dict[str, str]) -> str:
        is_gateway = options.get("RequestAddressType") == GATEWAY_TYPE
        wanted = parse_ip("Address", address) if address else None
        if self._cluster is not None and not is_gateway:
            with self._store.reading() as tx:
                pool = tx.get_pool(pool_id)
            if pool is not None and pool.cluster:
                return self._cluster_address(pool, wanted, options)
        with self._store.transaction() as tx:
            pool = tx.get_pool(pool_id)
            if pool is None:
                raise NotFound(f"unknown pool {pool_id!r}")
            kind = "gateway" if is_gateway else ("static" if wanted is not None else "dynamic")
            if wanted is not None:
                value = self._reserve(tx, pool, wanted, kind)
            elif is_gateway:
                lo, hi = usable_range(pool.subnet)
                picked = pick_address(lo, hi, lo - 1, lambda s: tx.leases_from(pool.id, s))
                if picked is None or not tx.add_lease(pool.id, picked, kind):
                    raise Exhausted(f"no free address left for the gateway in pool {pool.subnet}")
                value = picked
            else:
                value = self._dynamic(tx, pool, options)
        return f"{ipaddress.ip_address(value)}/{pool.subnet.prefixlen}"

    def _cluster_address(self, pool: PoolRecord, wanted, options: dict[str, str] | None = None) -> str:
        """An address of a cluster network: claimed in etcd first (outside the store's lock, so
        that a slow or absent etcd holds up no other network), then leased here too (the local
        lease is what this host re-claims after etcd loses it). A container that restarts by
        itself gets back the address it had, as on a local network (see _dynamic), unless
        another host took it meanwhile."""
        if wanted is not None:
            if wanted.version != pool.subnet.version or wanted not in pool.subnet:
                raise InvalidRequest(f"address {wanted} is outside pool {pool.subnet}")
            if not is_usable(pool.subnet, int(wanted)):
                raise InvalidRequest(f"address {wanted} is the network or broadcast address of {pool.subnet}")
        cursor = pool.cursor
        back = None
        if wanted is None:
            with self._store.reading() as tx:
                back = self._waiting(tx, pool, options or {})
        with self._cluster.changing():     # the claim and its lease here, as one step for the resync
            for _ in range(8):
                if back is not None and not self._cluster.claim(pool.cluster, back, "dynamic"):
                    back = None                     # another host has it now: walk on
                if back is not None:
                    value, kind = back, "dynamic"
                elif wanted is not None:
                    if not self._cluster.claim(pool.cluster, int(wanted), "static"):
                        raise Conflict(f"address {wanted} is already in use in cluster network {pool.cluster}")
                    value, kind = int(wanted), "static"
                else:
                    lo, hi = usable_range(pool.subnet, pool.ip_range)
                    value, kind = self._cluster.allocate(pool.cluster, lo, hi, cursor), "dynamic"
                try:
                    with self._store.transaction() as tx:
                        if tx.get_pool(pool.id) is None:
                            raise NotFound(f"pool {pool.id!r} went away while an address was claimed")
                        added = tx.add_lease(pool.id, value, kind)
                        if added and kind == "dynamic":
                            tx.set_cursor(pool.id, value)
                except Exception:
                    self._cluster.release(pool.cluster, value)
                    raise
                if added:
                    return f"{ipaddress.ip_address(value)}/{pool.subnet.prefixlen}"
                # leased here already, by another container: etcd's key is rightly this host's (it
                # had gone from etcd and is claimed again), so it stays; a dynamic request walks on
                if kind == "static":
                    raise Conflict(f"address {wanted} is already in use in pool {pool.subnet}")
                cursor, back = value, None
        raise Exhausted(f"no free address found in cluster network {pool.cluster}")

    def _dynamic(self, tx, pool: PoolRecord, options: dict[str, str]) -> int:
        """An address for a container that asked for none. A container that restarts by itself
        gets back the address it had (remembered by remember()): found by its name where dockerd
        sends it (29+); before that, a request without a name shortly after the plugin started is
        taken to be such a restart and gets the lowest address still waiting for its owner, so
        restarted containers keep their addresses as a set (one restarting alone keeps its own).
        Anything else walks on from the cursor, over leased and remembered addresses alike."""
        lo, hi = usable_range(pool.subnet, pool.ip_range)
        back = self._waiting(tx, pool, options)
        if back is not None and tx.add_lease(pool.id, back, "dynamic"):
            return back

        def taken(start: int) -> Iterable[int]:
            return heapq.merge(tx.leases_from(pool.id, start), tx.owned_from(pool.id, start))
        value = pick_address(lo, hi, pool.cursor, taken)
        if value is None:  # only remembered addresses are left: they are not reservations
            value = pick_address(lo, hi, pool.cursor, lambda s: tx.leases_from(pool.id, s))
        if value is None:
            where = f"ip-range {pool.ip_range} of pool {pool.subnet}" if pool.ip_range else f"pool {pool.subnet}"
            raise Exhausted(f"no free address left in {where}")
        tx.add_lease(pool.id, value, "dynamic")
        tx.set_cursor(pool.id, value)
        return value

    def _waiting(self, tx, pool: PoolRecord, options: dict[str, str]) -> int | None:
        """The address a restarting container had, if this request is its (see _dynamic)."""
        lo, hi = usable_range(pool.subnet, pool.ip_range)
        if ENDPOINT_NAME in options:
            back = tx.waiting_address(pool.id, options[ENDPOINT_NAME]) if options[ENDPOINT_NAME] else None
        elif self._clock() - self._started < RESTART_WINDOW:
            back = tx.waiting_address(pool.id)
        else:
            back = None
        return back if back is not None and lo <= back <= hi else None

    def remember(self, owners: Iterable[tuple[str, str, str]], existing: Iterable[str] | None = None,
                 gone: Iterable[str] = ()) -> None:
        """What Docker reports (the event watcher, outside every handler): `owners` are
        (container id, container name, address) of running containers that restart by
        themselves; `existing` every container ID there is (when known), `gone` containers
        removed. An address is remembered in the pybridge pool that contains it."""
        owners, gone = list(owners), list(gone)
        if not owners and not gone and existing is None:
            return                    # most events: nothing to write, no lock to take
        with self._store.transaction() as tx:
            pools = tx.list_pools()
            for cid, name, address in owners:
                try:
                    ip = ipaddress.ip_address(address)
                except ValueError:
                    continue
                pool = next((p for p in pools if ip.version == p.subnet.version and ip in p.subnet), None)
                if pool is not None:
                    tx.put_owner(pool.id, int(ip), cid, name)
            tx.forget_owners(gone, keep_only=None if existing is None else set(existing))

    @staticmethod
    def _reserve(tx, pool: PoolRecord, wanted, kind: str) -> int:
        if wanted.version != pool.subnet.version or wanted not in pool.subnet:
            raise InvalidRequest(f"address {wanted} is outside pool {pool.subnet}")
        if not is_usable(pool.subnet, int(wanted)):
            raise InvalidRequest(f"address {wanted} is the network or broadcast address of {pool.subnet}")
        if not tx.add_lease(pool.id, int(wanted), kind):
            raise Conflict(f"address {wanted} is already in use in pool {pool.subnet}")
        return int(wanted)

    def release_address(self, pool_id: str, address: str) -> None:
        value = int(parse_ip_interface("Address", address).ip)
        pool = None
        if self._cluster is not None:
            with self._store.reading() as tx:
                pool = tx.get_pool(pool_id)
        if pool is None or not pool.cluster:
            with self._store.transaction() as tx:
                tx.delete_lease(pool_id, value)
            return
        with self._cluster.changing():          # the lease here and its claim, as one step for the resync
            with self._store.transaction() as tx:
                released = tx.delete_lease(pool_id, value)
            if released:
                self._cluster.release(pool.cluster, value)
