"""The containers on pybridge's networks, as Docker reports them (the event watcher's state, for
the networks pybridge holds): each network's Docker name and its containers' names, aliases and
addresses. Kept in the state store, so that it is known at once after a restart, and read by the
host command (plugin.driver.views), the DNS and the cluster (names for the other hosts), whether
or not the DNS runs.

What is learned is in memory and told at once; it reaches the store a moment later (`save`, on
a thread of its own, every change of half a second in one transaction), so that the watcher,
which hears of every container start, takes the store's lock for a read only, never holding up
the plugin calls of the starts themselves with a write. A crash loses at most that half second,
which the watcher reads again from Docker when it starts.

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
        self._unsaved: set[str] = set()  # networks learned since the last save
        self._due = threading.Event()

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
        with self.store.reading() as tx:
            self._load(tx)
            ours = {n.id: n for n in tx.networks.all()}
            mine = changed & set(ours)
            with self._lock:
                for nid in mine:
                    name, members = state.get(nid, (self._learned.get(nid, (nid[:12], []))[0], {}))
                    containers = sorted(members.values(), key=lambda c: c.id)
                    self._learned[nid] = (name, containers)
                    self._unsaved.add(nid)
                updated = {nid: self._learned[nid] for nid in mine}
        if not updated:
            return
        self._due.set()
        for listener in self._listeners:
            try:
                listener(updated, {nid: ours[nid] for nid in updated})
            except Exception:
                log.exception("a reader of Docker's containers failed")

    def save(self) -> int:
        """Write what was learned since the last save, in one transaction; how many networks."""
        with self._lock:
            due, self._unsaved = self._unsaved, set()
        if not due:
            return 0
        try:
            with self.store.transaction() as tx:
                ours = {n.id for n in tx.networks.all()}
                with self._lock:  # (a network removed meanwhile was forgotten under the store's lock)
                    saved = [nid for nid in due if nid in ours and nid in self._learned]
                    for nid in saved:
                        tx.containers.put_names(nid, *self._learned[nid])
        except BaseException:
            with self._lock:
                self._unsaved |= due
            raise
        return len(saved)

    def run_saver(self, stop: threading.Event, every: float = 0.5) -> None:
        """The thread that saves: at most one transaction per `every` seconds, and only after a
        change."""
        while not stop.is_set():
            self._due.wait(every)
            if not self._due.is_set():
                continue
            self._due.clear()
            try:
                self.save()
            except Exception:
                log.exception("saving Docker's names of our containers (again shortly)")
                self._due.set()
            stop.wait(every)

    def forget(self, network_id: str, tx: Tx) -> None:
        """The network is gone (inside the transaction that removes it)."""
        with self._lock:
            self._learned.pop(network_id, None)
            self._unsaved.discard(network_id)
        tx.containers.forget_names(network_id)
