"""The plugin hands freed memory back after a burst of work, once the burst is over, and never
while it goes on or while nothing happens (plugin/server.py _trim_when_idle)."""

import gc

import pytest

from plugin import server


def test_trims_once_after_each_burst_and_never_during_one(monkeypatch):
    readings = iter(
        [
            0,  # at start
            0,
            0,  # idle: nothing to trim
            4,
            9,  # a burst
            9,  # over: trim
            9,
            9,  # idle again: no second trim
            12,
            12,
        ]
    )  # another burst, over: trim
    trims = []
    monkeypatch.setattr(gc, "collect", lambda: trims.append("gc"))

    def sleep(_):
        pass

    monkeypatch.setattr(server.time, "sleep", sleep)

    def activity():
        try:
            return next(readings)
        except StopIteration:
            raise KeyboardInterrupt from None  # ends the loop

    with pytest.raises(KeyboardInterrupt):
        server._trim_when_idle(activity, lambda: trims.append("store"))
    assert trims == ["gc", "store", "gc", "store"]


def test_the_store_gives_back_its_page_cache_and_keeps_its_data(tmp_path):
    from plugin.store.db import Store

    store = Store(tmp_path / "state.db").open()
    try:
        with store.transaction() as tx:
            tx.meta.set_vxlan_members([(4096, "10.0.0.2")])
        store.shrink()
        with store.reading() as tx:
            assert tx.meta.vxlan_members() == [(4096, "10.0.0.2")]
    finally:
        store.close()
