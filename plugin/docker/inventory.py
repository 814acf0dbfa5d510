"""The containers on pybridge's networks, as Docker reports them (the event watcher's state, for
the networks pybridge holds): each network's Docker name and its containers' names, aliases and
addresses. Kept in the state store, so that it is known at once after a restart, and read by the
host command (plugin.driver.views), the DNS and the cluster (names for the other hosts), whether
or not the DNS runs.

Locks: the store's lock is always taken before the inventory's own."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from ..domain.model import ContainerInfo, Network
from ..store.db import Store, Tx
from .watcher import State

log = logging.getLogger(__name__)

Learned = dict[str, tuple[str, list[ContainerInfo]]]  # network id -> (name, containers)
# what changed (only networks pybridge holds), and those networks
Listener = Callable[[Learned, dict[str, Network]], None]


class ContainerInventory:
    def __init__(self, store: Store):
        self.store = store
        self._learned: Learned = {}
        self._loaded = False
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Told of every change, after it is stored (on the watcher's thread)."""
        self._listeners.append(listener)

    def _load(self, tx: Tx) -> None:
        with self._lock:
            if not self._loaded:
                self._learned, self._loaded = tx.containers.names(), True

    def view(self) -> Learned:
        """network id -> (Docker's name for it, [ContainerInfo]) as last learned (a copy)."""
        with self._lock:
            loaded = self._loaded
        if not loaded:
            with self.store.reading() as tx:
                self._load(tx)
        with self._lock:
            return dict(self._learned)

    def names(self, network_id: str) -> list[ContainerInfo]:
        """This host's containers on a network, as Docker reported them."""
        return list(self.view().get(network_id, ("", []))[1])

    def learned(self, state: State, changed: set[str]) -> None:
        """The event watcher's report: Docker's view of the networks in `changed`."""
        with self.store.transaction() as tx:
            self._load(tx)
            ours = {n.id: n for n in tx.networks.all()}
            mine = changed & set(ours)
            with self._lock:
                for nid in mine:
                    name, members = state.get(nid, (self._learned.get(nid, (nid[:12], []))[0], {}))
                    containers = sorted(members.values(), key=lambda c: c.id)
                    self._learned[nid] = (name, containers)
                    tx.containers.put_names(nid, name, containers)
                updated = {nid: self._learned[nid] for nid in mine}
        if not updated:
            return
        for listener in self._listeners:
            try:
                listener(updated, {nid: ours[nid] for nid in updated})
            except Exception:
                log.exception("a reader of Docker's containers failed")

    def forget(self, network_id: str, tx: Tx) -> None:
        """The network is gone (inside the transaction that removes it)."""
        with self._lock:
            self._learned.pop(network_id, None)
        tx.containers.forget_names(network_id)
