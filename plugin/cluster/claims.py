"""Cluster mode's AddressClaims (plugin.ipam.claims): a cluster network's addresses are claimed in
etcd first (outside the store's lock, so that a slow or absent etcd holds up no other network),
then leased here too (the local lease is what this host claims again after etcd loses it).
Other pools, and every network's gateway (which is the network's own, in etcd with its record),
are claimed as on a host in no cluster."""

from __future__ import annotations

from ..domain.errors import Conflict, Exhausted, NotFound
from ..domain.model import PoolRecord
from ..ipam.allocator import usable_range
from ..ipam.claims import AddressRequest, LocalClaims, Returning, check_wanted
from ..store.db import Store
from .service import ClusterService

ATTEMPTS = 8  # addresses leased here already by another container (etcd had lost them): walk on


class EtcdClaims:
    def __init__(self, cluster: ClusterService, store: Store, local: LocalClaims, returning: Returning):
        self._cluster = cluster
        self._store = store
        self._local = local
        self._returning = returning

    def _cluster_pool(self, pool_id: str) -> PoolRecord | None:
        with self._store.reading() as tx:
            pool = tx.leases.get_pool(pool_id)
        return pool if pool is not None and pool.cluster else None

    def claim(self, pool_id: str, request: AddressRequest) -> tuple[PoolRecord, int]:
        pool = self._cluster_pool(pool_id) if request.kind != "gateway" else None
        if pool is None:
            return self._local.claim(pool_id, request)
        return pool, self._claim(pool, request)

    def _claim(self, pool: PoolRecord, request: AddressRequest) -> int:
        """A container that restarts by itself gets back the address it had, as on a local
        network (see Returning), unless another host took it meanwhile; a new one walks from
        the cursor over what etcd holds, stepping over the addresses remembered here for
        restarting containers while others are free (as LocalClaims does)."""
        cluster, name = self._cluster, pool.cluster
        wanted = check_wanted(pool, request.wanted) if request.wanted is not None else None
        cursor, back, avoid = pool.cursor, None, frozenset[int]()
        if wanted is None:
            lo, _ = usable_range(pool.subnet, pool.ip_range)
            with self._store.reading() as tx:
                back = self._returning.address(tx, pool, request)
                avoid = frozenset(tx.containers.owned_from(pool.id, lo))
        with cluster.changing():  # the claim and its lease here, as one step for the resync
            for _ in range(ATTEMPTS):
                if back is not None and not cluster.claim(name, back, "dynamic"):
                    back = None  # another host has it now: walk on
                if back is not None:
                    value, kind = back, "dynamic"
                elif wanted is not None:
                    if not cluster.claim(name, wanted, "static"):
                        raise Conflict(f"address {request.wanted} is already in use in cluster network {name}")
                    value, kind = wanted, "static"
                else:
                    lo, hi = usable_range(pool.subnet, pool.ip_range)
                    value, kind = cluster.allocate(name, lo, hi, cursor, avoid), "dynamic"
                try:
                    with self._store.transaction() as tx:
                        if tx.leases.get_pool(pool.id) is None:
                            raise NotFound(f"pool {pool.id!r} went away while an address was claimed")
                        added = tx.leases.add(pool.id, value, kind)
                        if added and kind == "dynamic":
                            tx.leases.set_cursor(pool.id, value)
                except Exception:
                    cluster.release(name, value)
                    raise
                if added:
                    return value
                # leased here already, by another container: etcd's key is rightly this host's (it
                # had gone from etcd and is claimed again), so it stays; a dynamic request walks on
                if kind == "static":
                    raise Conflict(f"address {request.wanted} is already in use in pool {pool.subnet}")
                cursor, back = value, None
        raise Exhausted(f"no free address found in cluster network {name}")

    def release(self, pool_id: str, address: int) -> None:
        pool = self._cluster_pool(pool_id)
        if pool is None:
            self._local.release(pool_id, address)
            return
        with self._cluster.changing():  # the lease here and its claim, as one step for the resync
            with self._store.transaction() as tx:
                released = tx.leases.delete(pool_id, address)
            if released:
                self._cluster.release(pool.cluster, address)
