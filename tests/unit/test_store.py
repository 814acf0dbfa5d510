"""The state store: state written by an earlier schema, file modes, unreadable rows."""

import ipaddress
import os
import sqlite3
import stat

from plugin.domain.model import PoolRecord
from plugin.store.db import Store


def test_leases_from_before_lease_times_are_migrated(tmp_path):
    path = tmp_path / "state.db"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE leases (pool_id TEXT NOT NULL, addr TEXT NOT NULL, kind TEXT NOT NULL,
                             PRIMARY KEY (pool_id, addr)) WITHOUT ROWID;
        INSERT INTO leases VALUES ('p', '000000000000000000000000000000aa', 'dynamic');""")
    old.commit()
    old.close()
    store = Store(path).open()
    with store.reading() as tx:
        assert tx.leases.all() == [("p", 0xAA, "dynamic")]
        assert tx.leases.ages(1000.0)[0][3] == 1000.0  # unknown creation time: counts as old
    with store.transaction() as tx:
        assert tx.leases.add("p", 0xAB, "dynamic")
    store.close()


def test_database_wal_and_shm_files_are_owner_only(tmp_path):
    """Issue 8, item 11: the WAL and SHM files were created with the process umask (0644)."""
    old = os.umask(0o022)
    try:
        store = Store(tmp_path / "state" / "state.db").open()
        with store.transaction() as tx:
            tx.leases.put_pool(PoolRecord("p#1", "s", ipaddress.ip_network("10.200.1.0/24"), None, -1))
        files = sorted(p.name for p in (tmp_path / "state").iterdir())
        assert files == ["state.db", "state.db-shm", "state.db-wal"]
        for p in (tmp_path / "state").iterdir():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name
        assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
        store.close()
        (tmp_path / "state" / "state.db").chmod(0o644)  # an old install's file
        Store(tmp_path / "state" / "state.db").open().close()
        assert stat.S_IMODE((tmp_path / "state" / "state.db").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_an_owners_table_without_the_waiting_flag_gets_it(tmp_path):
    """An earlier build of this version made owners without `waiting`; opening adds it."""
    import sqlite3

    db = sqlite3.connect(tmp_path / "state.db")
    db.execute(
        "CREATE TABLE owners (pool_id TEXT NOT NULL, addr TEXT NOT NULL, container TEXT NOT NULL, "
        "name TEXT NOT NULL, PRIMARY KEY (pool_id, addr)) WITHOUT ROWID"
    )
    db.execute("INSERT INTO owners VALUES ('p', ?, 'c', 'web')", (f"{10:032x}",))
    db.commit()
    db.close()
    store = Store(tmp_path / "state.db").open()
    with store.transaction() as tx:
        assert tx.containers.owners() == [("p", 10, "c", "web")]
        tx.leases.add("p", 10, "dynamic")
        assert tx.containers.waiting_address("p") is None
        tx.leases.delete("p", 10)
        assert tx.containers.waiting_address("p") == 10 and tx.containers.waiting_address("p", "web") == 10
        assert tx.containers.waiting_address("p", "db") is None
    store.close()
