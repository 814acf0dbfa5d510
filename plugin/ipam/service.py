"""IpamService: the IpamDriver use cases, each one store transaction.

Overlap protection is ours to do (dockerd gives a remote IPAM none): explicit and automatic
subnets are checked against every pool pybridge holds and every host route (all tables) and
host address, and the error names the conflict.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import time
from typing import Any, Callable, Iterable, Sequence

from ..domain.addresses import parse_cidr, parse_ip_interface
from ..domain.errors import Conflict, Exhausted, InvalidRequest
from ..domain.model import PoolRecord, Taken
from ..domain.options import GLOBAL_SPACE, LOCAL_SPACE
from ..store.db import Store
from .allocator import usable_range
from .claims import AddressClaims, AddressRequest, LocalClaims, Returning
from .pools import PoolSpec, find_free_subnet, first_conflict

log = logging.getLogger(__name__)

HostNetworks = Callable[[], Sequence[Taken]]


class IpamService:
    def __init__(
        self,
        store: Store,
        host_networks: HostNetworks,
        default_pools: Sequence[PoolSpec],
        default_pools6: Sequence[PoolSpec],
        clock: Callable[[], float] = time.monotonic,
        claims: AddressClaims | None = None,
    ):
        self._store = store
        self._host_networks = host_networks
        self._defaults = {4: tuple(default_pools), 6: tuple(default_pools6)}
        # how addresses are claimed (cluster mode: plugin.cluster.claims.EtcdClaims, per pool)
        self._claims = claims if claims is not None else LocalClaims(store, Returning(clock))

    @staticmethod
    def capabilities() -> dict[str, Any]:
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    @staticmethod
    def default_address_spaces() -> dict[str, Any]:
        return {"LocalDefaultAddressSpace": LOCAL_SPACE, "GlobalDefaultAddressSpace": GLOBAL_SPACE}

    def usage(self) -> list[dict[str, Any]]:
        """Each pool: its subnet, how many addresses it can hand out, how many it has (one store
        read; for the metrics)."""
        with self._store.reading() as tx:
            pools, counts = tx.leases.pools(), tx.leases.counts()
        out = []
        for p in pools:
            lo, hi = usable_range(p.subnet, p.ip_range)
            out.append(
                {"pool": p.id, "subnet": str(p.subnet), "size": max(0, hi - lo + 1), "used": counts.get(p.id, 0)}
            )
        return out

    # pools
    def request_pool(self, space: str, pool: str, subpool: str, v6: bool) -> dict[str, Any]:
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
            taken = [Taken(p.subnet, f"pool {p.subnet} already held by pybridge") for p in tx.leases.pools()]
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
            record = PoolRecord(
                id=f"{subnet}#{secrets.token_hex(4)}",
                space=space or LOCAL_SPACE,
                subnet=subnet,
                ip_range=ip_range,
                cursor=-1,
            )
            tx.leases.put_pool(record)
        log.info("pool %s reserved", record.id)
        return {"PoolID": record.id, "Pool": str(subnet), "Data": {}}

    def release_pool(self, pool_id: str) -> None:
        with self._store.transaction() as tx:
            if tx.leases.get_pool(pool_id) is None:
                return
            tx.leases.delete_pool(pool_id)
        log.info("pool %s released", pool_id)

    # addresses
    def request_address(self, pool_id: str, address: str, options: dict[str, str]) -> str:
        pool, value = self._claims.claim(pool_id, AddressRequest.of(address, options))
        return f"{ipaddress.ip_address(value)}/{pool.subnet.prefixlen}"

    def release_address(self, pool_id: str, address: str) -> None:
        self._claims.release(pool_id, int(parse_ip_interface("Address", address).ip))

    def remember(
        self, owners: Iterable[tuple[str, str, str]], existing: Iterable[str] | None = None, gone: Iterable[str] = ()
    ) -> None:
        """What Docker reports (the event watcher, outside every handler): `owners` are
        (container id, container name, address) of running containers that restart by
        themselves; `existing` every container ID there is (when known), `gone` containers
        removed. An address is remembered in the pybridge pool that contains it."""
        owners, gone = list(owners), list(gone)
        if not owners and not gone and existing is None:
            return  # most events: nothing to write, no lock to take
        with self._store.transaction() as tx:
            pools = tx.leases.pools()
            for cid, name, address in owners:
                try:
                    ip = ipaddress.ip_address(address)
                except ValueError:
                    continue
                pool = next((p for p in pools if ip.version == p.subnet.version and ip in p.subnet), None)
                if pool is not None:
                    tx.containers.put_owner(pool.id, int(ip), cid, name)
            tx.containers.forget_owners(gone, keep_only=None if existing is None else set(existing))
