"""The state store opens state written by an earlier schema."""

import sqlite3

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
        assert tx.list_leases() == [("p", 0xAA, "dynamic")]
        assert tx.lease_ages(1000.0)[0][3] == 1000.0   # unknown creation time: counts as old
    with store.transaction() as tx:
        assert tx.add_lease("p", 0xAB, "dynamic")
    store.close()
