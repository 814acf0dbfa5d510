"""Which bridges on this host are not ours: our networks must not reach them (Docker's, libvirt's,
LXD's, a user's), unless a published port leads there. Kept current from netlink events (a bridge
made or removed, a route through a gateway changed), never by polling; a bridge that carries a
route through a gateway is an uplink and stays reachable."""

from __future__ import annotations

import logging
import threading
import time

from ..domain.errors import KernelError
from ..kernel.interfaces import NetlinkPort
from ..store.db import Store, Tx
from .firewall import FirewallWriter

log = logging.getLogger(__name__)


class ForeignBridges:
    def __init__(self, store: Store, netlink: NetlinkPort, firewall: FirewallWriter):
        self.store = store
        self.netlink = netlink
        self.firewall = firewall

    def found(self, tx: Tx) -> tuple[str, ...]:
        """The bridges that are not ours now, inside a transaction (so our own networks are as
        recorded). The firewall adapter keeps the set it isolates (FirewallPort.foreign)."""
        return tuple(self.netlink.foreign_bridges([n.bridge for n in tx.networks.all()]))

    def on_change(self) -> None:
        """A bridge or an uplink route changed: isolate our networks from the bridges there are now.
        Should the firewall refuse, it keeps the bridges it had, so the next event retries; a
        change that fails is a rewrite with the new set."""
        with self.store.transaction() as tx:
            found = self.found(tx)
            if found == self.firewall.port.foreign() or self.firewall.lifecycle.retired:
                return
            log.info("bridges that are not ours: %s", ", ".join(found) or "none")
            try:
                self.firewall.port.set_foreign(found, [n.bridge for n in tx.networks.all()])
            except KernelError as e:
                log.warning("firewall change failed (%s): rewriting the table", e)
                self.firewall.sync(tx, foreign=found)

    def start(self) -> None:
        threading.Thread(target=self._watch, name="pybridge-bridges", daemon=True).start()

    def _watch(self) -> None:
        while True:
            try:
                self.netlink.watch_links(self.on_change)
            except Exception:
                log.exception("watching bridges (restarting in 1 s)")
            time.sleep(1)
