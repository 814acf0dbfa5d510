"""The state store's schema, as numbered migrations on SQLite's user_version."""

from __future__ import annotations

import sqlite3
from typing import Callable

from ..domain.errors import CorruptState, PybridgeError
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
    _script(
        conn,
        """
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
""",
    )


def _v2_dns_and_lease_times(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS dns (network_id TEXT PRIMARY KEY, name TEXT NOT NULL, doc TEXT NOT NULL)")
    _add_column(conn, "leases", "created", "REAL NOT NULL DEFAULT 0")


def _v3_port_index(conn: sqlite3.Connection) -> None:
    _script(
        conn,
        """
CREATE TABLE IF NOT EXISTS bindings (
    endpoint_id TEXT NOT NULL, proto TEXT NOT NULL, host_port INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS bindings_by_port ON bindings (proto, host_port);
CREATE INDEX IF NOT EXISTS bindings_by_endpoint ON bindings (endpoint_id);
""",
    )
    if conn.execute("SELECT 1 FROM meta WHERE key = 'bindings'").fetchone() is None:
        _fill_bindings(conn)  # state written before the index existed


def _v4_owners(conn: sqlite3.Connection) -> None:
    _script(
        conn,
        """
CREATE TABLE IF NOT EXISTS owners (
    pool_id TEXT NOT NULL, addr TEXT NOT NULL, container TEXT NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (pool_id, addr)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS owners_by_container ON owners (container);
""",
    )


def _v5_waiting_owners(conn: sqlite3.Connection) -> None:
    _add_column(conn, "owners", "waiting", "INTEGER NOT NULL DEFAULT 0")
    _script(
        conn,
        """
CREATE INDEX IF NOT EXISTS owners_waiting ON owners (pool_id, waiting, addr);
CREATE INDEX IF NOT EXISTS owners_waiting_by_name ON owners (pool_id, name, waiting);
DROP INDEX IF EXISTS owners_by_name;
""",
    )


def _v6_cluster_pools(conn: sqlite3.Connection) -> None:
    _add_column(conn, "pools", "cluster", "TEXT NOT NULL DEFAULT ''")


MIGRATIONS: tuple[tuple[int, Callable[[sqlite3.Connection], None]], ...] = (
    (1, _v1_first_release),
    (2, _v2_dns_and_lease_times),
    (3, _v3_port_index),
    (4, _v4_owners),
    (5, _v5_waiting_owners),
    (6, _v6_cluster_pools),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to SCHEMA_VERSION, one step per transaction; returns the version it
    had. A database newer than this code is refused (a downgrade would misread it)."""
    have = conn.execute("PRAGMA user_version").fetchone()[0]
    if have > SCHEMA_VERSION:
        raise CorruptState(
            f"the state database has schema {have}, newer than this pybridge's {SCHEMA_VERSION}: "
            "run the version that wrote it"
        )
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
    return int(have)


def _fill_bindings(conn: sqlite3.Connection) -> None:
    """Fill the published-port index from the endpoints' rows (inside the caller's transaction)."""
    conn.execute("DELETE FROM bindings")
    for eid, nid, doc in conn.execute("SELECT id, network_id, doc FROM endpoints").fetchall():
        try:
            e = codec.endpoint_from_json(eid, nid, doc)
        except _BAD_ROW:
            continue  # doctor lists it; it holds no port meanwhile
        conn.executemany(
            "INSERT INTO bindings (endpoint_id, proto, host_port, doc) VALUES (?, ?, ?, ?)",
            [(eid, b.proto, b.host_port, codec.binding_to_json(b)) for b in e.ports],
        )
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('bindings', '1')")
