"""SQLite state: networks, endpoints, pools, leases.

One connection, one re-entrant lock: every read-modify-write runs inside ``transaction()``,
which takes the lock and an IMMEDIATE SQLite transaction, so concurrent HTTP threads and the
restore at start serialise. WAL mode keeps commits cheap and crash-safe for a process crash.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..domain.addresses import parse_cidr
from ..domain.errors import CorruptState, PybridgeError
from ..domain.model import ContainerInfo, Endpoint, Network, PoolRecord
from . import codec

_BAD_ROW = (*codec.DECODE_ERRORS, PybridgeError)

# The schema, as numbered migrations on SQLite's user_version: each step takes a database of
# the version before it (tests/unit/test_store_migrations.py opens a fixture of every released
# schema). Steps are written to be correct on the databases that releases before the numbering
# left (user_version 0, tables made with IF NOT EXISTS and columns added when missing): they
# create only what is not there.

def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _script(conn: sqlite3.Connection, text: str) -> None:
    """Statements one by one: executescript() would commit the step's transaction first."""
    for statement in filter(str.strip, text.split(";")):
        conn.execute(statement)


def _add_column(conn: sqlite3.Connection, table: str, column: str, decl: str) -> None:
    if column not in _columns(conn, table):
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")


def _v1_first_release(conn: sqlite3.Connection) -> None:
    _script(conn, """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS networks (id TEXT PRIMARY KEY, bridge TEXT NOT NULL UNIQUE, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS endpoints (
    id TEXT PRIMARY KEY, network_id TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS endpoints_by_network ON endpoints (network_id);
CREATE TABLE IF NOT EXISTS pools (
    id TEXT PRIMARY KEY, space TEXT NOT NULL, subnet TEXT NOT NULL, ip_range TEXT NOT NULL,
    cursor TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    pool_id TEXT NOT NULL, addr TEXT NOT NULL, kind TEXT NOT NULL,
    PRIMARY KEY (pool_id, addr)) WITHOUT ROWID;
""")


def _v2_dns_and_lease_times(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS dns (network_id TEXT PRIMARY KEY, name TEXT NOT NULL, doc TEXT NOT NULL)")
    _add_column(conn, "leases", "created", "REAL NOT NULL DEFAULT 0")


def _v3_port_index(conn: sqlite3.Connection) -> None:
    _script(conn, """
CREATE TABLE IF NOT EXISTS bindings (
    endpoint_id TEXT NOT NULL, proto TEXT NOT NULL, host_port INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS bindings_by_port ON bindings (proto, host_port);
CREATE INDEX IF NOT EXISTS bindings_by_endpoint ON bindings (endpoint_id);
""")
    if conn.execute("SELECT 1 FROM meta WHERE key = 'bindings'").fetchone() is None:
        _fill_bindings(conn)        # state written before the index existed


def _v4_owners(conn: sqlite3.Connection) -> None:
    _script(conn, """
CREATE TABLE IF NOT EXISTS owners (
    pool_id TEXT NOT NULL, addr TEXT NOT NULL, container TEXT NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (pool_id, addr)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS owners_by_container ON owners (container);
""")


def _v5_waiting_owners(conn: sqlite3.Connection) -> None:
    _add_column(conn, "owners", "waiting", "INTEGER NOT NULL DEFAULT 0")
    _script(conn, """
CREATE INDEX IF NOT EXISTS owners_waiting ON owners (pool_id, waiting, addr);
CREATE INDEX IF NOT EXISTS owners_waiting_by_name ON owners (pool_id, name, waiting);
DROP INDEX IF EXISTS owners_by_name;
""")


def _v6_cluster_pools(conn: sqlite3.Connection) -> None:
    _add_column(conn, "pools", "cluster", "TEXT NOT NULL DEFAULT ''")


MIGRATIONS: tuple[tuple[int, Callable[[sqlite3.Connection], None]], ...] = (
    (1, _v1_first_release), (2, _v2_dns_and_lease_times), (3, _v3_port_index), (4, _v4_owners),
    (5, _v5_waiting_owners), (6, _v6_cluster_pools))
SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to SCHEMA_VERSION, one step per transaction; returns the version it
    had. A database newer than this code is refused (a downgrade would misread it)."""
    have = conn.execute("PRAGMA user_version").fetchone()[0]
    if have > SCHEMA_VERSION:
        raise CorruptState(f"the state database has schema {have}, newer than this pybridge's {SCHEMA_VERSION}: "
                           "run the version that wrote it")
    for version, step in MIGRATIONS:
        if version <= have:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            step(conn)
            conn.execute(f"PRAGMA user_version = {version:d}")
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)", (str(version),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return have


def _fill_bindings(conn: sqlite3.Connection) -> None:
    """Fill the published-port index from the endpoints' rows (inside the caller's transaction)."""
    conn.execute("DELETE FROM bindings")
    for eid, nid, doc in conn.execute("SELECT id, network_id, doc FROM endpoints").fetchall():
        try:
            e = codec.endpoint_from_json(eid, nid, doc)
        except _BAD_ROW:
            continue      # doctor lists it; it holds no port meanwhile
        conn.executemany("INSERT INTO bindings (endpoint_id, proto, host_port, doc) VALUES (?, ?, ?, ?)",
                         [(eid, b.proto, b.host_port, codec.binding_to_json(b)) for b in e.ports])
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('bindings', '1')")


def addr_key(value: int) -> str:
    """Fixed-width hex, so that text order is numeric order for IPv4 and IPv6 alike."""
    return f"{value:032x}"


def _one(table: str, key: str, decode, *row):
    """A row decoded, or CorruptState naming it (a direct read of a damaged row)."""
    try:
        return decode(*row)
    except _BAD_ROW as e:
        raise CorruptState(f"the state row {table}/{key[:64]} is unreadable: {e}") from e


def _readable(decode, rows) -> list:
    """The rows that decode; damaged ones are skipped here and listed by Tx.unreadable()."""
    out = []
    for row in rows:
        try:
            out.append(decode(*row))
        except _BAD_ROW:
            continue
    return out


def _lease(pool_id: str, addr: str, *rest):
    return (pool_id, int(addr, 16), *rest)


class Tx:
    """The operations available inside a transaction.

    A row that cannot be decoded never stops a listing (restore must be able to start): list_*
    skip it, get_* raise CorruptState naming it, unreadable() reports all of them."""

    def __init__(self, conn: sqlite3.Connection):
        self._c = conn

    # networks
    def put_network(self, n: Network) -> None:
        self._c.execute("INSERT OR REPLACE INTO networks (id, bridge, doc) VALUES (?, ?, ?)",
                        (n.id, n.bridge, codec.network_to_json(n)))

    def get_network(self, network_id: str) -> Network | None:
        row = self._c.execute("SELECT doc FROM networks WHERE id = ?", (network_id,)).fetchone()
        return _one("networks", network_id, codec.network_from_json, network_id, row[0]) if row else None

    def network_by_bridge(self, bridge: str) -> Network | None:
        row = self._c.execute("SELECT id, doc FROM networks WHERE bridge = ?", (bridge,)).fetchone()
        return _one("networks", row[0], codec.network_from_json, *row) if row else None

    def list_networks(self) -> list[Network]:
        return _readable(codec.network_from_json,
                         self._c.execute("SELECT id, doc FROM networks ORDER BY id").fetchall())

    def delete_network(self, network_id: str) -> None:
        self._c.execute("DELETE FROM networks WHERE id = ?", (network_id,))

    # endpoints
    def put_endpoint(self, e: Endpoint) -> None:
        self._c.execute("INSERT OR REPLACE INTO endpoints (id, network_id, doc) VALUES (?, ?, ?)",
                        (e.id, e.network_id, codec.endpoint_to_json(e)))
        self._c.execute("DELETE FROM bindings WHERE endpoint_id = ?", (e.id,))
        self._c.executemany("INSERT INTO bindings (endpoint_id, proto, host_port, doc) VALUES (?, ?, ?, ?)",
                            [(e.id, b.proto, b.host_port, codec.binding_to_json(b)) for b in e.ports])

    def bindings_on(self, proto: str, host_port: int, but: str = "") -> list:
        """The published ports held on this host port, by any endpoint but `but` (an index
        lookup: the cost does not grow with the ports published elsewhere)."""
        rows = self._c.execute("SELECT endpoint_id, doc FROM bindings WHERE proto = ? AND host_port = ?",
                               (proto, host_port)).fetchall()
        return _readable(codec.binding_from_json, [(f"{eid}:{proto}/{host_port}", eid, doc)
                                                   for eid, doc in rows if eid != but])

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        row = self._c.execute("SELECT network_id, doc FROM endpoints WHERE id = ?",
                              (endpoint_id,)).fetchone()
        return _one("endpoints", endpoint_id, codec.endpoint_from_json, endpoint_id, *row) if row else None

    def list_endpoints(self, network_id: str | None = None) -> list[Endpoint]:
        if network_id is None:
            rows = self._c.execute("SELECT id, network_id, doc FROM endpoints ORDER BY id").fetchall()
        else:
            rows = self._c.execute("SELECT id, network_id, doc FROM endpoints WHERE network_id = ? "
                                   "ORDER BY id", (network_id,)).fetchall()
        return _readable(codec.endpoint_from_json, rows)

    def delete_endpoint(self, endpoint_id: str) -> None:
        self._c.execute("DELETE FROM endpoints WHERE id = ?", (endpoint_id,))
        self._c.execute("DELETE FROM bindings WHERE endpoint_id = ?", (endpoint_id,))

    def forget_network_rows(self, network_id: str) -> None:
        """Remove a network's rows without reading them (its own row may be unreadable); the
        kernel objects left behind carry our prefix and restore/gc collect them."""
        self._c.execute("DELETE FROM bindings WHERE endpoint_id IN (SELECT id FROM endpoints WHERE network_id = ?)",
                        (network_id,))
        for table, column in (("endpoints", "network_id"), ("dns", "network_id"), ("networks", "id")):
            self._c.execute(f"DELETE FROM {table} WHERE {column} = ?", (network_id,))

    # DNS names learned from Docker, kept so the DNS answers at once after a restart
    def put_dns(self, network_id: str, name: str, containers) -> None:
        doc = json.dumps([[c.id, c.name, list(c.aliases), c.ipv4, c.ipv6] for c in containers])
        self._c.execute("INSERT OR REPLACE INTO dns (network_id, name, doc) VALUES (?, ?, ?)",
                        (network_id, name, doc))

    def list_dns(self) -> dict:
        rows = self._c.execute("SELECT network_id, name, doc FROM dns").fetchall()
        return dict(_readable(_dns_row, rows))

    def delete_dns(self, network_id: str) -> None:
        self._c.execute("DELETE FROM dns WHERE network_id = ?", (network_id,))

    # Docker's own bridges, as its API reports them (read when a user names a bridge to adopt)
    def port_cursors(self) -> dict[str, int]:
        """Per protocol, where the next pick of a free host port starts."""
        row = self._c.execute("SELECT value FROM meta WHERE key = 'port_cursors'").fetchone()
        try:
            d = json.loads(row[0]) if row else {}
        except ValueError:
            return {}
        return {k: v for k, v in d.items() if isinstance(k, str) and isinstance(v, int)} if isinstance(d, dict) else {}

    def set_port_cursors(self, cursors: dict[str, int]) -> None:
        self._c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('port_cursors', ?)",
                        (json.dumps(cursors, sort_keys=True),))

    def set_docker_bridges(self, names) -> None:
        self._c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('docker_bridges', ?)",
                        (json.dumps(sorted(names)),))

    def set_vxlan_members(self, members) -> None:
        """Cluster mode: the VXLAN filter's last (VNI, host) pairs, restored at start before etcd
        is read (the filter fails closed: it never opens to everyone)."""
        self._c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('vxlan_members', ?)",
                        (json.dumps(sorted([int(v), str(h)] for v, h in members)),))

    def vxlan_members(self) -> list[tuple[int, str]]:
        row = self._c.execute("SELECT value FROM meta WHERE key = 'vxlan_members'").fetchone()
        try:
            pairs = json.loads(row[0]) if row else []
        except ValueError:
            return []
        if not isinstance(pairs, list):
            return []
        return [(p[0], p[1]) for p in pairs if isinstance(p, list) and len(p) == 2
                and isinstance(p[0], int) and not isinstance(p[0], bool) and isinstance(p[1], str)]

    def docker_bridges(self) -> frozenset[str]:
        row = self._c.execute("SELECT value FROM meta WHERE key = 'docker_bridges'").fetchone()
        try:
            names = json.loads(row[0]) if row else []
        except ValueError:
            return frozenset()
        return frozenset(n for n in names if isinstance(n, str)) if isinstance(names, list) else frozenset()

    # pools and leases
    def put_pool(self, p: PoolRecord) -> None:
        self._c.execute("INSERT OR REPLACE INTO pools (id, space, subnet, ip_range, cursor, cluster) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (p.id, p.space, str(p.subnet), str(p.ip_range or ""), addr_key(p.cursor + 1), p.cluster))

    def set_pool_cluster(self, subnet: str, cluster: str) -> None:
        """Mark the pool of this subnet as a cluster network's (its addresses are claimed in etcd)."""
        self._c.execute("UPDATE pools SET cluster = ? WHERE subnet = ?", (cluster, subnet))

    def get_pool(self, pool_id: str) -> PoolRecord | None:
        row = self._c.execute("SELECT id, space, subnet, ip_range, cursor, cluster FROM pools WHERE id = ?",
                              (pool_id,)).fetchone()
        return _one("pools", pool_id, _pool, *row) if row else None

    def list_pools(self) -> list[PoolRecord]:
        return _readable(_pool, self._c.execute(
            "SELECT id, space, subnet, ip_range, cursor, cluster FROM pools ORDER BY id").fetchall())

    def lease_counts(self) -> dict[str, int]:
        """Leases held in each pool (gateways included)."""
        return dict(self._c.execute("SELECT pool_id, count(*) FROM leases GROUP BY pool_id").fetchall())

    def set_cursor(self, pool_id: str, cursor: int) -> None:
        self._c.execute("UPDATE pools SET cursor = ? WHERE id = ?", (addr_key(cursor + 1), pool_id))

    def delete_pool(self, pool_id: str) -> None:
        self._c.execute("DELETE FROM leases WHERE pool_id = ?", (pool_id,))
        self._c.execute("DELETE FROM owners WHERE pool_id = ?", (pool_id,))
        self._c.execute("DELETE FROM pools WHERE id = ?", (pool_id,))

    # owners: the address a container that restarts by itself last had in a pool, kept after
    # its lease is released so that the container gets it back (IpamService.request_address)
    def put_owner(self, pool_id: str, address: int, container: str, name: str) -> None:
        """One address per container and pool, one owner per address: the latest wins."""
        key = addr_key(address)
        leased = self._c.execute("SELECT 1 FROM leases WHERE pool_id = ? AND addr = ?", (pool_id, key)).fetchone()
        self._c.execute("DELETE FROM owners WHERE pool_id = ? AND container = ?", (pool_id, container))
        self._c.execute("INSERT OR REPLACE INTO owners (pool_id, addr, container, name, waiting) VALUES (?, ?, ?, ?, ?)",
                        (pool_id, key, container, name, 0 if leased else 1))

    def waiting_address(self, pool_id: str, name: str | None = None) -> int | None:
        """The lowest remembered address of the pool that is not leased now (of the owner called
        `name`, if given): kept as a flag that lease changes update, so that finding one costs
        an index lookup however many addresses are remembered."""
        if name is None:
            row = self._c.execute("SELECT addr FROM owners WHERE pool_id = ? AND waiting = 1 ORDER BY addr LIMIT 1",
                                  (pool_id,)).fetchone()
        else:
            row = self._c.execute("SELECT addr FROM owners WHERE pool_id = ? AND name = ? AND waiting = 1 "
                                  "ORDER BY addr LIMIT 1", (pool_id, name)).fetchone()
        try:
            return int(row[0], 16) if row else None
        except ValueError:
            return None

    def owned_from(self, pool_id: str, start: int) -> Iterator[int]:
        """Remembered addresses >= start in ascending order (allocation steps over them)."""
        for (a,) in self._c.execute("SELECT addr FROM owners WHERE pool_id = ? AND addr >= ? ORDER BY addr",
                                    (pool_id, addr_key(start))):
            try:
                yield int(a, 16)
            except ValueError:
                continue

    def forget_owners(self, containers=(), keep_only=None) -> None:
        """Forget the addresses of `containers`; with keep_only, of every container not in it."""
        self._c.executemany("DELETE FROM owners WHERE container = ?", [(c,) for c in containers])
        if keep_only is not None:
            present = {c for (c,) in self._c.execute("SELECT DISTINCT container FROM owners")}
            self._c.executemany("DELETE FROM owners WHERE container = ?", [(c,) for c in present - set(keep_only)])

    def list_owners(self) -> list[tuple[str, int, str, str]]:
        return [(p, int(a, 16), c, n) for p, a, c, n in self._c.execute(
            "SELECT pool_id, addr, container, name FROM owners ORDER BY pool_id, addr")]

    def add_lease(self, pool_id: str, address: int, kind: str) -> bool:
        """False when the address is already leased."""
        cur = self._c.execute("INSERT OR IGNORE INTO leases (pool_id, addr, kind, created) VALUES (?, ?, ?, ?)",
                              (pool_id, addr_key(address), kind, time.time()))
        if cur.rowcount == 1:
            self._c.execute("UPDATE owners SET waiting = 0 WHERE pool_id = ? AND addr = ? AND waiting = 1",
                            (pool_id, addr_key(address)))
        return cur.rowcount == 1

    def delete_lease(self, pool_id: str, address: int) -> bool:
        cur = self._c.execute("DELETE FROM leases WHERE pool_id = ? AND addr = ?",
                              (pool_id, addr_key(address)))
        if cur.rowcount == 1:   # a remembered address now waits for its owner
            self._c.execute("UPDATE owners SET waiting = 1 WHERE pool_id = ? AND addr = ?", (pool_id, addr_key(address)))
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
                try:
                    yield int(a, 16)
                except ValueError:
                    continue
            if len(rows) < batch:
                return
            key, first, batch = rows[-1][0], False, min(batch * 4, 1024)

    def lease_ages(self, now: float) -> list[tuple[str, int, str, float]]:
        """(pool, address, kind, age in seconds) of every lease."""
        return [(p, a, k, now - c) for p, a, k, c in _readable(_lease, self._c.execute(
            "SELECT pool_id, addr, kind, created FROM leases").fetchall())]

    def list_leases(self, pool_id: str | None = None) -> list[tuple[str, int, str]]:
        q = "SELECT pool_id, addr, kind FROM leases"
        rows = self._c.execute(q + (" WHERE pool_id = ?" if pool_id else "") + " ORDER BY pool_id, addr",
                               (pool_id,) if pool_id else ()).fetchall()
        return _readable(_lease, rows)

    def unreadable(self) -> list[str]:
        """Every row that cannot be decoded, named by table and key (for doctor and restore)."""
        checks: list[tuple[str, str, Callable[..., object]]] = [("networks", "SELECT id, id, doc FROM networks", codec.network_from_json),
                  ("endpoints", "SELECT id, id, network_id, doc FROM endpoints", codec.endpoint_from_json),
                  ("pools", "SELECT id, id, space, subnet, ip_range, cursor, cluster FROM pools", _pool),
                  ("leases", "SELECT pool_id || ' ' || addr, pool_id, addr FROM leases", _lease),
                  ("dns", "SELECT network_id, network_id, name, doc FROM dns", _dns_row)]
        out = []
        for table, query, decode in checks:
            for key, *row in self._c.execute(query).fetchall():
                try:
                    decode(*row)
                except _BAD_ROW as e:
                    out.append(f"{table} row {str(key)[:64]} is unreadable: {str(e)[:120]}")
        return out


def _pool(pid, space, subnet, ip_range, cursor, cluster="") -> PoolRecord:
    return PoolRecord(id=pid, space=space, subnet=parse_cidr("stored pool", subnet),
                      ip_range=parse_cidr("stored ip-range", ip_range) if ip_range else None,
                      cursor=int(cursor, 16) - 1, cluster=cluster)


def _dns_row(network_id: str, name: str, doc: str):
    return network_id, (name, [ContainerInfo(str(i), str(n), tuple(map(str, a)), str(v4), str(v6))
                               for i, n, a, v4, v6 in json.loads(doc)])


class Store:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None

    def open(self) -> "Store":
        on_disk = self.path != Path(":memory:")
        if on_disk:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # SQLite gives the -wal and -shm files the mode of the database file: make that 0600
            # before SQLite creates any of them.
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(self.path, 0o600)
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                               timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        for suffix in ("-wal", "-shm") if on_disk else ():   # files left by an older version
            side = Path(f"{self.path}{suffix}")
            if side.exists():
                os.chmod(side, 0o600)
        self._conn = conn
        return self

    def close(self) -> None:
        """Under the lock: a transaction another thread runs ends first (SQLite's connection
        closed under a running statement crashes the process)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the state store is closed")
        return self._conn

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._lock:
            conn = self._open_conn()
            if conn.in_transaction:  # nested: join the outer transaction
                yield Tx(conn)
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield Tx(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[Tx]:
        """Read-only access under the lock, without opening a write transaction."""
        with self._lock:
            yield Tx(self._open_conn())
