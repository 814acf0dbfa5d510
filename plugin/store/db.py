"""SQLite state: networks, endpoints, pools, leases (repositories in repos.py, the schema's
migrations in migrations.py).

One connection, one re-entrant lock: every read-modify-write runs inside ``transaction()``,
which takes the lock and an IMMEDIATE SQLite transaction, so concurrent HTTP threads and the
restore at start serialise. WAL mode keeps commits cheap and crash-safe for a process crash.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from . import codec
from .migrations import SCHEMA_VERSION, migrate
from .repos import BAD_ROW, Containers, Leases, Meta, Networks, dns_row, lease_row, pool_row

__all__ = ["SCHEMA_VERSION", "Store", "Tx"]


class Tx:
    """What a transaction offers: a repository per group of tables."""

    def __init__(self, conn: sqlite3.Connection):
        self._c = conn
        self.networks = Networks(conn)
        self.leases = Leases(conn)
        self.containers = Containers(conn)
        self.meta = Meta(conn)

    def unreadable(self) -> list[str]:
        """Every row that cannot be decoded, named by table and key (for doctor and restore)."""
        checks: list[tuple[str, str, Callable[..., object]]] = [
            ("networks", "SELECT id, id, doc FROM networks", codec.network_from_json),
            ("endpoints", "SELECT id, id, network_id, doc FROM endpoints", codec.endpoint_from_json),
            ("pools", "SELECT id, id, space, subnet, ip_range, cursor, cluster FROM pools", pool_row),
            ("leases", "SELECT pool_id || ' ' || addr, pool_id, addr FROM leases", lease_row),
            ("dns", "SELECT network_id, network_id, name, doc FROM dns", dns_row),
        ]
        out = []
        for table, query, decode in checks:
            for key, *row in self._c.execute(query).fetchall():
                try:
                    decode(*row)
                except BAD_ROW as e:
                    out.append(f"{table} row {str(key)[:64]} is unreadable: {str(e)[:120]}")
        return out


class Store:
    def __init__(self, path: str | os.PathLike[str]):
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
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        for suffix in ("-wal", "-shm") if on_disk else ():  # files left by an older version
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

    def shrink(self) -> None:
        """Give back the memory SQLite holds for this connection (its page cache, up to 2 MB,
        filled by a burst of calls): at rest, after one."""
        with self._lock:
            if self._conn is not None and not self._conn.in_transaction:
                self._conn.execute("PRAGMA shrink_memory")

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
