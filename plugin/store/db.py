"""SQLite state: networks, endpoints, pools, leases.

One connection, one re-entrant lock: every read-modify-write runs inside ``transaction()``,
which takes the lock and an IMMEDIATE SQLite transaction, so concurrent HTTP threads and the
restore at start serialise. WAL mode keeps commits cheap and crash-safe for a process crash.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..domain.model import ContainerInfo, Endpoint, IPNetwork, Network
from . import codec

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS networks (id TEXT PRIMARY KEY, bridge TEXT NOT NULL UNIQUE, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS endpoints (
    id TEXT PRIMARY KEY, network_id TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS endpoints_by_network ON endpoints (network_id);
CREATE TABLE IF NOT EXISTS pools (
    id TEXT PRIMARY KEY, space TEXT NOT NULL, subnet TEXT NOT NULL, ip_range TEXT NOT NULL,
    cursor TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dns (network_id TEXT PRIMARY KEY, name TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    pool_id TEXT NOT NULL, addr TEXT NOT NULL, kind TEXT NOT NULL, created REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (pool_id, addr)) WITHOUT ROWID;
"""


def addr_key(value: int) -> str:
    """Fixed-width hex, so that text order is numeric order for IPv4 and IPv6 alike."""
    return f"{value:032x}"


@dataclass(frozen=True)
class PoolRecord:
    id: str
    space: str
    subnet: IPNetwork
    ip_range: IPNetwork | None
    cursor: int


class Tx:
    """The operations available inside a transaction."""

    def __init__(self, conn: sqlite3.Connection):
        self._c = conn

    # networks
    def put_network(self, n: Network) -> None:
        self._c.execute("INSERT OR REPLACE INTO networks (id, bridge, doc) VALUES (?, ?, ?)",
                        (n.id, n.bridge, codec.network_to_json(n)))

    def get_network(self, network_id: str) -> Network | None:
        row = self._c.execute("SELECT doc FROM networks WHERE id = ?", (network_id,)).fetchone()
        return codec.network_from_json(network_id, row[0]) if row else None

    def network_by_bridge(self, bridge: str) -> Network | None:
        row = self._c.execute("SELECT id, doc FROM networks WHERE bridge = ?", (bridge,)).fetchone()
        return codec.network_from_json(row[0], row[1]) if row else None

    def list_networks(self) -> list[Network]:
        rows = self._c.execute("SELECT id, doc FROM networks ORDER BY id").fetchall()
        return [codec.network_from_json(i, d) for i, d in rows]

    def delete_network(self, network_id: str) -> None:
        self._c.execute("DELETE FROM networks WHERE id = ?", (network_id,))

    # endpoints
    def put_endpoint(self, e: Endpoint) -> None:
        self._c.execute("INSERT OR REPLACE INTO endpoints (id, network_id, doc) VALUES (?, ?, ?)",
                        (e.id, e.network_id, codec.endpoint_to_json(e)))

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        row = self._c.execute("SELECT network_id, doc FROM endpoints WHERE id = ?",
                              (endpoint_id,)).fetchone()
        return codec.endpoint_from_json(endpoint_id, row[0], row[1]) if row else None

    def list_endpoints(self, network_id: str | None = None) -> list[Endpoint]:
        if network_id is None:
            rows = self._c.execute("SELECT id, network_id, doc FROM endpoints ORDER BY id").fetchall()
        else:
            rows = self._c.execute("SELECT id, network_id, doc FROM endpoints WHERE network_id = ? "
                                   "ORDER BY id", (network_id,)).fetchall()
        return [codec.endpoint_from_json(*r) for r in rows]

    def delete_endpoint(self, endpoint_id: str) -> None:
        self._c.execute("DELETE FROM endpoints WHERE id = ?", (endpoint_id,))

    # DNS names learned from Docker, kept so the DNS answers at once after a restart
    def put_dns(self, network_id: str, name: str, containers) -> None:
        doc = json.dumps([[c.id, c.name, list(c.aliases), c.ipv4, c.ipv6] for c in containers])
        self._c.execute("INSERT OR REPLACE INTO dns (network_id, name, doc) VALUES (?, ?, ?)",
                        (network_id, name, doc))

    def list_dns(self) -> dict:
        return {nid: (name, [ContainerInfo(i, n, tuple(a), v4, v6) for i, n, a, v4, v6 in json.loads(doc)])
                for nid, name, doc in self._c.execute("SELECT network_id, name, doc FROM dns")}

    def delete_dns(self, network_id: str) -> None:
        self._c.execute("DELETE FROM dns WHERE network_id = ?", (network_id,))

    # pools and leases
    def put_pool(self, p: PoolRecord) -> None:
        self._c.execute("INSERT OR REPLACE INTO pools (id, space, subnet, ip_range, cursor) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (p.id, p.space, str(p.subnet), str(p.ip_range or ""), addr_key(p.cursor + 1)))

    def get_pool(self, pool_id: str) -> PoolRecord | None:
        row = self._c.execute("SELECT id, space, subnet, ip_range, cursor FROM pools WHERE id = ?",
                              (pool_id,)).fetchone()
        return _pool(row) if row else None

    def list_pools(self) -> list[PoolRecord]:
        return [_pool(r) for r in self._c.execute(
            "SELECT id, space, subnet, ip_range, cursor FROM pools ORDER BY id")]

    def set_cursor(self, pool_id: str, cursor: int) -> None:
        self._c.execute("UPDATE pools SET cursor = ? WHERE id = ?", (addr_key(cursor + 1), pool_id))

    def delete_pool(self, pool_id: str) -> None:
        self._c.execute("DELETE FROM leases WHERE pool_id = ?", (pool_id,))
        self._c.execute("DELETE FROM pools WHERE id = ?", (pool_id,))

    def add_lease(self, pool_id: str, address: int, kind: str) -> bool:
        """False when the address is already leased."""
        cur = self._c.execute("INSERT OR IGNORE INTO leases (pool_id, addr, kind, created) VALUES (?, ?, ?, ?)",
                              (pool_id, addr_key(address), kind, time.time()))
        return cur.rowcount == 1

    def delete_lease(self, pool_id: str, address: int) -> bool:
        cur = self._c.execute("DELETE FROM leases WHERE pool_id = ? AND addr = ?",
                              (pool_id, addr_key(address)))
        return cur.rowcount == 1

    def leases_from(self, pool_id: str, start: int, batch: int = 8) -> Iterator[int]:
        """Leased addresses >= start in ascending order, fetched lazily in growing batches
        (the first address after the cursor is usually free: read little to find that out)."""
        key = addr_key(start)
        first = True
        while True:
            op = ">=" if first else ">"
            rows = self._c.execute(f"SELECT addr FROM leases WHERE pool_id = ? AND addr {op} ? "
                                   "ORDER BY addr LIMIT ?", (pool_id, key, batch)).fetchall()
            for (a,) in rows:
                yield int(a, 16)
            if len(rows) < batch:
                return
            key, first, batch = rows[-1][0], False, min(batch * 4, 1024)

    def lease_ages(self, now: float) -> list[tuple[str, int, str, float]]:
        """(pool, address, kind, age in seconds) of every lease."""
        return [(p, int(a, 16), k, now - c) for p, a, k, c in
                self._c.execute("SELECT pool_id, addr, kind, created FROM leases")]

    def list_leases(self, pool_id: str | None = None) -> list[tuple[str, int, str]]:
        q = "SELECT pool_id, addr, kind FROM leases"
        rows = self._c.execute(q + (" WHERE pool_id = ?" if pool_id else "") + " ORDER BY pool_id, addr",
                               (pool_id,) if pool_id else ()).fetchall()
        return [(p, int(a, 16), k) for p, a, k in rows]


def _pool(row) -> PoolRecord:
    pid, space, subnet, ip_range, cursor = row
    return PoolRecord(id=pid, space=space, subnet=ipaddress.ip_network(subnet),
                      ip_range=ipaddress.ip_network(ip_range) if ip_range else None,
                      cursor=int(cursor, 16) - 1)


class Store:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None

    def open(self) -> "Store":
        if self.path != Path(":memory:"):
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                               timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(leases)")}
        if "created" not in columns:  # schema 1 without lease times
            conn.execute("ALTER TABLE leases ADD COLUMN created REAL NOT NULL DEFAULT 0")
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        if self.path != Path(":memory:"):
            os.chmod(self.path, 0o600)
        self._conn = conn
        return self

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        assert self._conn is not None, "store is not open"
        with self._lock:
            if self._conn.in_transaction:  # nested: join the outer transaction
                yield Tx(self._conn)
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield Tx(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[Tx]:
        """Read-only access under the lock, without opening a write transaction."""
        assert self._conn is not None, "store is not open"
        with self._lock:
            yield Tx(self._conn)
