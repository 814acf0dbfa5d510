"""The container inventory (plugin/docker/inventory.py): what Docker's watcher learns is told at
once and saved a moment later, in one transaction, never by the watcher's own call."""

from __future__ import annotations

from contextlib import contextmanager

from plugin.docker.inventory import ContainerInventory
from plugin.domain.model import ContainerInfo

from .test_protocol import NID, call, create_network


def test_learning_writes_nothing_and_a_save_writes_it_all_once(client, fake_services):
    store = fake_services.store
    create_network(client)
    inventory = ContainerInventory(store)
    told = []
    inventory.subscribe(lambda updated, networks: told.append(sorted(updated)))
    web = ContainerInfo("c1" * 32, "web", ("www",), "10.200.1.2", "")
    real = store.transaction
    writes = []

    @contextmanager
    def counted():
        writes.append(1)
        with real() as tx:
            yield tx

    store.transaction = counted
    try:
        inventory.learned({NID: ("app", {web.id: web})}, {NID})
        inventory.learned({NID: ("app", {web.id: web})}, {NID, "ff" * 32})  # (not ours: left out)
        assert writes == [], "the watcher's report took the store's write lock"
        assert told == [[NID], [NID]] and inventory.names(NID) == [web]
        with store.reading() as tx:
            assert NID not in tx.containers.names()
        assert inventory.save() == 1 and writes == [1]
        assert inventory.save() == 0 and writes == [1]  # nothing new: no transaction
    finally:
        store.transaction = real
    with store.reading() as tx:
        assert tx.containers.names()[NID][0] == "app"
    assert ContainerInventory(store).names(NID) == [web]  # what a restarted plugin reads first


def test_a_network_removed_before_the_save_is_not_written_back(client, fake_services):
    create_network(client)
    inventory = fake_services.inventory
    inventory.learned({NID: ("app", {})}, {NID})
    assert call(client, "NetworkDriver.DeleteNetwork", {"NetworkID": NID}) == (200, {})
    assert inventory.save() == 0
    with fake_services.store.reading() as tx:
        assert NID not in tx.containers.names()
