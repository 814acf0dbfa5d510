"""The state database's numbered migrations (plugin/store/db.py), each from a database as a release
before it left it (tests/fixtures/state/schema-N.sql, made by make.py there from the releases'
own schemas): nothing is lost, the result is the current schema, and opening again changes
nothing."""

from __future__ import annotations

import pathlib
import sqlite3

import pytest

from plugin.domain.errors import CorruptState
from plugin.domain.ports import PortBinding
from plugin.store.db import SCHEMA_VERSION, Store

FIXTURES = sorted((pathlib.Path(__file__).parents[1] / "fixtures" / "state").glob("schema-*.sql"))
NID, EID, POOL = "ab" * 32, "cd" * 32, "LocalDefault/10.200.7.0/24"


def _schema(path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(str(path))
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: [r[1:4] for r in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
    finally:
        conn.close()


def test_there_is_a_fixture_of_every_released_schema():
    assert len(FIXTURES) == 6


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_each_released_schema_migrates_to_the_current_one_and_keeps_its_rows(tmp_path, fixture):
    db = tmp_path / "state.db"
    conn = sqlite3.connect(str(db))
    conn.executescript(fixture.read_text())
    conn.close()
    store = Store(db).open()
    try:
        with store.reading() as tx:
            assert tx.unreadable() == []
            network, endpoint = tx.networks.get(NID), tx.networks.get_endpoint(EID)
            assert network is not None and network.bridge == "pt-abababababab"
            assert endpoint is not None and str(endpoint.address4) == "10.200.7.2/24"
            assert tx.leases.get_pool(POOL) is not None and tx.leases.get_pool(POOL).cluster == ""
            assert {kind for _, _, kind in tx.leases.all(POOL)} == {"gateway", "dynamic"}
            if endpoint.ports:  # the index is built for state written before it existed
                assert tx.networks.bindings_on("tcp", 8080) == [PortBinding("tcp", 80, "", 8080)]
        version = store._open_conn().execute("PRAGMA user_version").fetchone()[0]
        assert version == SCHEMA_VERSION
    finally:
        store.close()
    fresh = tmp_path / "fresh.db"
    Store(fresh).open().close()
    assert _schema(db) == _schema(fresh), "a migrated database differs from a new one"
    before = db.read_bytes()
    Store(db).open().close()  # again: nothing to do
    assert _schema(db) == _schema(fresh) and len(db.read_bytes()) == len(before)


def test_a_database_of_a_newer_pybridge_is_refused_not_misread(tmp_path):
    db = tmp_path / "state.db"
    Store(db).open().close()
    conn = sqlite3.connect(str(db))
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(CorruptState, match="newer than this pybridge"):
        Store(db).open()
