"""The state store's repositories, one per group of tables: what a transaction (db.Tx) offers as
tx.networks, tx.leases, tx.containers and tx.meta.

A row that cannot be decoded never stops a listing (restore must be able to start): listings
skip it, a get raises CorruptState naming it, and Tx.unreadable() reports all of them."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from ..domain.addresses import parse_cidr
from ..domain.errors import CorruptState, PybridgeError
from ..domain.model import ContainerInfo, Endpoint, Network, PoolRecord
from . import codec

BAD_ROW = (*codec.DECODE_ERRORS, PybridgeError)
T = TypeVar("T")


def addr_key(value: int) -> str:
    """Fixed-width hex, so that text order is numeric order for IPv4 and IPv6 alike."""
    return f"{value:032x}"


def _one(table: str, key: str, decode: Callable[..., T], *row: Any) -> T:
    """A row decoded, or CorruptState naming it (a direct read of a damaged row)."""
    try:
        return decode(*row)
    except BAD_ROW as e:
        raise CorruptState(f"the state row {table}/{key[:64]} is unreadable: {e}") from e


def _readable(decode: Callable[..., T], rows: Iterable[Sequence[Any]]) -> list[T]:
    """The rows that decode; damaged ones are skipped here and listed by Tx.unreadable()."""
    out: list[T] = []
    for row in rows:
        try:
            out.append(decode(*row))
        except BAD_ROW:
            continue
    return out


def lease_row(pool_id: str, addr: str, *rest: Any) -> tuple[Any, ...]:
    return (pool_id, int(addr, 16), *rest)


def pool_row(pid: str, space: str, subnet: str, ip_range: str, cursor: str, cluster: str = "") -> PoolRecord:
    return PoolRecord(
        id=pid,
        space=space,
        subnet=parse_cidr("stored pool", subnet),
        ip_range=parse_cidr("stored ip-range", ip_range) if ip_range else None,
        cursor=int(cursor, 16) - 1,
        cluster=cluster,
    )


def dns_row(network_id: str, name: str, doc: str) -> tuple[str, tuple[str, list[ContainerInfo]]]:
    return network_id, (
        name,
        [ContainerInfo(str(i), str(n), tuple(map(str, a)), str(v4), str(v6)) for i, n, a, v4, v6 in json.loads(doc)],
    )


class Networks:
    """The networks and their endpoints (with each endpoint's published ports, indexed by host port)."""

    def __init__(self, conn: sqlite3.Connection):
        self._c = conn

    def put(self, n: Network) -> None:
        self._c.execute(
            "INSERT OR REPLACE INTO networks (id, bridge, doc) VALUES (?, ?, ?)",
            (n.id, n.bridge, codec.network_to_json(n)),
        )

    def get(self, network_id: str) -> Network | None:
        row = self._c.execute("SELECT doc FROM networks WHERE id = ?", (network_id,)).fetchone()
        return _one("networks", network_id, codec.network_from_json, network_id, row[0]) if row else None

    def by_bridge(self, bridge: str) -> Network | None:
        row = self._c.execute("SELECT id, doc FROM networks WHERE bridge = ?", (bridge,)).fetchone()
        return _one("networks", row[0], codec.network_from_json, *row) if row else None

    def all(self) -> list[Network]:
        return _readable(
            codec.network_from_json, self._c.execute("SELECT id, doc FROM networks ORDER BY id").fetchall()
        )

    def delete(self, network_id: str) -> None:
        self._c.execute("DELETE FROM networks WHERE id = ?", (network_id,))

    def forget_rows(self, network_id: str) -> None:
        """Remove a network's rows without reading them (its own row may be unreadable); the
        kernel objects left behind carry our prefix and restore/gc collect them."""
        self._c.execute(
            "DELETE FROM bindings WHERE endpoint_id IN (SELECT id FROM endpoints WHERE network_id = ?)", (network_id,)
        )
        for table, column in (("endpoints", "network_id"), ("dns", "network_id"), ("networks", "id")):
            self._c.execute(f"DELETE FROM {table} WHERE {column} = ?", (network_id,))

    def put_endpoint(self, e: Endpoint) -> None:
        self._c.execute(
            "INSERT OR REPLACE INTO endpoints (id, network_id, doc) VALUES (?, ?, ?)",
            (e.id, e.network_id, codec.endpoint_to_json(e)),
        )
        self._c.execute("DELETE FROM bindings WHERE endpoint_id = ?", (e.id,))
        self._c.executemany(
            "INSERT INTO bindings (endpoint_id, proto, host_port, doc) VALUES (?, ?, ?, ?)",
            [(e.id, b.proto, b.host_port, codec.binding_to_json(b)) for b in e.ports],
        )

    def bindings_on(self, proto: str, host_port: int, but: str = "") -> list[Any]:
        """The published ports held on this host port, by any endpoint but `but` (an index
        lookup: the cost does not grow with the ports published elsewhere)."""
        rows = self._c.execute(
            "SELECT endpoint_id, doc FROM bindings WHERE proto = ? AND host_port = ?", (proto, host_port)
        ).fetchall()
        return _readable(
            codec.binding_from_json, [(f"{eid}:{proto}/{host_port}", eid, doc) for eid, doc in rows if eid != but]
        )

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        row = self._c.execute("SELECT network_id, doc FROM endpoints WHERE id = ?", (endpoint_id,)).fetchone()
        return _one("endpoints", endpoint_id, codec.endpoint_from_json, endpoint_id, *row) if row else None

    def endpoints(self, network_id: str | None = None) -> list[Endpoint]:
        if network_id is None:
            rows = self._c.execute("SELECT id, network_id, doc FROM endpoints ORDER BY id").fetchall()
        else:
            rows = self._c.execute(
                "SELECT id, network_id, doc FROM endpoints WHERE network_id = ? ORDER BY id", (network_id,)
            ).fetchall()
        return _readable(codec.endpoint_from_json, rows)

    def delete_endpoint(self, endpoint_id: str) -> None:
        self._c.execute("DELETE FROM endpoints WHERE id = ?", (endpoint_id,))
        self._c.execute("DELETE FROM bindings WHERE endpoint_id = ?", (endpoint_id,))


class Leases:
    """IPAM: the pools and the addresses leased from them."""

    def __init__(self, conn: sqlite3.Connection):
        self._c = conn

    def put_pool(self, p: PoolRecord) -> None:
        self._c.execute(
            "INSERT OR REPLACE INTO pools (id, space, subnet, ip_range, cursor, cluster) VALUES (?, ?, ?, ?, ?, ?)",
            (p.id, p.space, str(p.subnet), str(p.ip_range or ""), addr_key(p.cursor + 1), p.cluster),
        )

    def set_pool_cluster(self, subnet: str, cluster: str) -> None:
        """Mark the pool of this subnet as a cluster network's (its addresses are claimed in etcd)."""
        self._c.execute("UPDATE pools SET cluster = ? WHERE subnet = ?", (cluster, subnet))

    def get_pool(self, pool_id: str) -> PoolRecord | None:
        row = self._c.execute(
            "SELECT id, space, subnet, ip_range, cursor, cluster FROM pools WHERE id = ?", (pool_id,)
        ).fetchone()
        return _one("pools", pool_id, pool_row, *row) if row else None

    def pools(self) -> list[PoolRecord]:
        return _readable(
            pool_row,
            self._c.execute("SELECT id, space, subnet, ip_range, cursor, cluster FROM pools ORDER BY id").fetchall(),
        )

    def counts(self) -> dict[str, int]:
        """Leases held in each pool (gateways included)."""
        return dict(self._c.execute("SELECT pool_id, count(*) FROM leases GROUP BY pool_id").fetchall())

    def set_cursor(self, pool_id: str, cursor: int) -> None:
        self._c.execute("UPDATE pools SET cursor = ? WHERE id = ?", (addr_key(cursor + 1), pool_id))

    def delete_pool(self, pool_id: str) -> None:
        self._c.execute("DELETE FROM leases WHERE pool_id = ?", (pool_id,))
        self._c.execute("DELETE FROM owners WHERE pool_id = ?", (pool_id,))
        self._c.execute("DELETE FROM pools WHERE id = ?", (pool_id,))

    def add(self, pool_id: str, address: int, kind: str) -> bool:
        """False when the address is already leased."""
        cur = self._c.execute(
            "INSERT OR IGNORE INTO leases (pool_id, addr, kind, created) VALUES (?, ?, ?, ?)",
            (pool_id, addr_key(address), kind, time.time()),
        )
        if cur.rowcount == 1:
            self._c.execute(
                "UPDATE owners SET waiting = 0 WHERE pool_id = ? AND addr = ? AND waiting = 1",
                (pool_id, addr_key(address)),
            )
        return cur.rowcount == 1

    def delete(self, pool_id: str, address: int) -> bool:
        cur = self._c.execute("DELETE FROM leases WHERE pool_id = ? AND addr = ?", (pool_id, addr_key(address)))
        if cur.rowcount == 1:  # a remembered address now waits for its owner
            self._c.execute(
                "UPDATE owners SET waiting = 1 WHERE pool_id = ? AND addr = ?", (pool_id, addr_key(address))
            )
        return cur.rowcount == 1

    def taken_from(self, pool_id: str, start: int, batch: int = 8) -> Iterator[int]:
        """Leased addresses >= start in ascending order, fetched lazily in growing batches
        (the first address after the cursor is usually free: read little to find that out)."""
        key = addr_key(start)
        first = True
        while True:
            op = ">=" if first else ">"
            rows = self._c.execute(
                f"SELECT addr FROM leases WHERE pool_id = ? AND addr {op} ? ORDER BY addr LIMIT ?",
                (pool_id, key, batch),
            ).fetchall()
            for (a,) in rows:
                try:
                    yield int(a, 16)
                except ValueError:
                    continue
            if len(rows) < batch:
                return
            key, first, batch = rows[-1][0], False, min(batch * 4, 1024)

    def ages(self, now: float) -> list[tuple[str, int, str, float]]:
        """(pool, address, kind, age in seconds) of every lease."""
        return [
            (p, a, k, now - c)
            for p, a, k, c in _readable(
                lease_row, self._c.execute("SELECT pool_id, addr, kind, created FROM leases").fetchall()
            )
        ]

    def all(self, pool_id: str | None = None) -> list[tuple[str, int, str]]:
        q = "SELECT pool_id, addr, kind FROM leases"
        rows = self._c.execute(
            q + (" WHERE pool_id = ?" if pool_id else "") + " ORDER BY pool_id, addr", (pool_id,) if pool_id else ()
        ).fetchall()
        return _readable(lease_row, rows)


class Containers:
    """What Docker reports of containers: the address a container that restarts by itself last had
    in a pool (kept after its lease is released, so that it gets it back: ipam.claims.Returning),
    and the DNS names learned per network (so the DNS answers at once after a restart)."""

    def __init__(self, conn: sqlite3.Connection):
        self._c = conn

    def put_owner(self, pool_id: str, address: int, container: str, name: str) -> None:
        """One address per container and pool, one owner per address: the latest wins."""
        key = addr_key(address)
        leased = self._c.execute("SELECT 1 FROM leases WHERE pool_id = ? AND addr = ?", (pool_id, key)).fetchone()
        self._c.execute("DELETE FROM owners WHERE pool_id = ? AND container = ?", (pool_id, container))
        self._c.execute(
            "INSERT OR REPLACE INTO owners (pool_id, addr, container, name, waiting) VALUES (?, ?, ?, ?, ?)",
            (pool_id, key, container, name, 0 if leased else 1),
        )

    def waiting_address(self, pool_id: str, name: str | None = None) -> int | None:
        """The lowest remembered address of the pool that is not leased now (of the owner called
        `name`, if given): kept as a flag that lease changes update, so that finding one costs
        an index lookup however many addresses are remembered."""
        if name is None:
            row = self._c.execute(
                "SELECT addr FROM owners WHERE pool_id = ? AND waiting = 1 ORDER BY addr LIMIT 1", (pool_id,)
            ).fetchone()
        else:
            row = self._c.execute(
                "SELECT addr FROM owners WHERE pool_id = ? AND name = ? AND waiting = 1 ORDER BY addr LIMIT 1",
                (pool_id, name),
            ).fetchone()
        try:
            return int(row[0], 16) if row else None
        except ValueError:
            return None

    def owned_from(self, pool_id: str, start: int) -> Iterator[int]:
        """Remembered addresses >= start in ascending order (allocation steps over them)."""
        for (a,) in self._c.execute(
            "SELECT addr FROM owners WHERE pool_id = ? AND addr >= ? ORDER BY addr", (pool_id, addr_key(start))
        ):
            try:
                yield int(a, 16)
            except ValueError:
                continue

    def forget_owners(self, containers: Iterable[str] = (), keep_only: Iterable[str] | None = None) -> None:
        """Forget the addresses of `containers`; with keep_only, of every container not in it."""
        self._c.executemany("DELETE FROM owners WHERE container = ?", [(c,) for c in containers])
        if keep_only is not None:
            present = {c for (c,) in self._c.execute("SELECT DISTINCT container FROM owners")}
            self._c.executemany("DELETE FROM owners WHERE container = ?", [(c,) for c in present - set(keep_only)])

    def owners(self) -> list[tuple[str, int, str, str]]:
        return [
            (p, int(a, 16), c, n)
            for p, a, c, n in self._c.execute(
                "SELECT pool_id, addr, container, name FROM owners ORDER BY pool_id, addr"
            )
        ]

    def put_names(self, network_id: str, name: str, containers: Iterable[ContainerInfo]) -> None:
        doc = json.dumps([[c.id, c.name, list(c.aliases), c.ipv4, c.ipv6] for c in containers])
        self._c.execute("INSERT OR REPLACE INTO dns (network_id, name, doc) VALUES (?, ?, ?)", (network_id, name, doc))

    def names(self) -> dict[str, Any]:
        rows = self._c.execute("SELECT network_id, name, doc FROM dns").fetchall()
        return dict(_readable(dns_row, rows))

    def forget_names(self, network_id: str) -> None:
        self._c.execute("DELETE FROM dns WHERE network_id = ?", (network_id,))


class Meta:
    """Small singletons: where the next free host port is looked for, Docker's own bridges, the
    cluster's last VXLAN members."""

    def __init__(self, conn: sqlite3.Connection):
        self._c = conn

    def port_cursors(self) -> dict[str, int]:
        """Per protocol, where the next pick of a free host port starts."""
        row = self._c.execute("SELECT value FROM meta WHERE key = 'port_cursors'").fetchone()
        try:
            d = json.loads(row[0]) if row else {}
        except ValueError:
            return {}
        return {k: v for k, v in d.items() if isinstance(k, str) and isinstance(v, int)} if isinstance(d, dict) else {}

    def set_port_cursors(self, cursors: dict[str, int]) -> None:
        self._c.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('port_cursors', ?)",
            (json.dumps(cursors, sort_keys=True),),
        )

    def docker_bridges(self) -> frozenset[str]:
        row = self._c.execute("SELECT value FROM meta WHERE key = 'docker_bridges'").fetchone()
        try:
            names = json.loads(row[0]) if row else []
        except ValueError:
            return frozenset()
        return frozenset(n for n in names if isinstance(n, str)) if isinstance(names, list) else frozenset()

    def set_docker_bridges(self, names: Iterable[str]) -> None:
        self._c.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('docker_bridges', ?)", (json.dumps(sorted(names)),)
        )

    def vxlan_members(self) -> list[tuple[int, str]]:
        row = self._c.execute("SELECT value FROM meta WHERE key = 'vxlan_members'").fetchone()
        try:
            pairs = json.loads(row[0]) if row else []
        except ValueError:
            return []
        if not isinstance(pairs, list):
            return []
        return [
            (p[0], p[1])
            for p in pairs
            if isinstance(p, list)
            and len(p) == 2
            and isinstance(p[0], int)
            and not isinstance(p[0], bool)
            and isinstance(p[1], str)
        ]

    def tunnel_peers(self) -> dict[str, tuple[str, int]]:
        """Cluster mode over WireGuard: the peers last programmed (host -> (public key, port)),
        for a start while etcd is away (checked again before use: a state file is input too)."""
        row = self._c.execute("SELECT value FROM meta WHERE key = 'tunnel_peers'").fetchone()
        try:
            d = json.loads(row[0]) if row else {}
        except ValueError:
            return {}
        if not isinstance(d, dict):
            return {}
        return {
            h: (v[0], v[1])
            for h, v in d.items()
            if isinstance(h, str)
            and isinstance(v, list)
            and len(v) == 2
            and isinstance(v[0], str)
            and isinstance(v[1], int)
            and not isinstance(v[1], bool)
        }

    def set_tunnel_peers(self, peers: dict[str, tuple[str, int]]) -> None:
        self._c.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('tunnel_peers', ?)",
            (json.dumps({h: [k, int(p)] for h, (k, p) in peers.items()}, sort_keys=True),),
        )

    def set_vxlan_members(self, members: Iterable[tuple[int, str]]) -> None:
        """Cluster mode: the VXLAN filter's last (VNI, host) pairs, restored at start before etcd
        is read (the filter fails closed: it never opens to everyone)."""
        self._c.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('vxlan_members', ?)",
            (json.dumps(sorted([int(v), str(h)] for v, h in members)),),
        )
