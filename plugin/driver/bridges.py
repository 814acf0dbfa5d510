"""Which bridges on this host are not ours: our networks must not reach them (Docker's, libvirt's,
LXD's, a user's), unless a published port leads there. Kept current from netlink events (a bridge
made or removed, a route through a gateway changed), never by polling; a bridge that carries a
route through a gateway is an uplink and stays reachable."""

from __future__ import annotations

import logging
import threading
import time

from .context import Context

log = logging.getLogger(__name__)


class ForeignBridges:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def refresh(self, tx) -> bool:
        """Recompute ctx.foreign inside a transaction (so our own networks are as recorded).
        True when it changed."""
        own = [n.bridge for n in tx.list_networks()]
        found = tuple(self.ctx.netlink.foreign_bridges(own))
        changed = found != self.ctx.foreign
        self.ctx.foreign = found
        return changed

    def on_change(self) -> None:
        """A bridge or an uplink route changed: isolate our networks from the bridges there are now.
        Should the firewall refuse, the bridges known before are kept, so the next event retries."""
        with self.ctx.store.transaction() as tx:
            known = self.ctx.foreign
            if self.refresh(tx):
                log.info("bridges that are not ours: %s", ", ".join(self.ctx.foreign) or "none")
                own = [n.bridge for n in tx.list_networks()]
                try:
                    self.ctx.change_firewall(tx, self.ctx.firewall.set_foreign, self.ctx.foreign, own)
                except Exception:
                    self.ctx.foreign = known
                    raise

    def start(self) -> None:
        threading.Thread(target=self._watch, name="pybridge-bridges", daemon=True).start()

    def _watch(self) -> None:
        while True:
            try:
                self.ctx.netlink.watch_links(self.on_change)
            except Exception:
                log.exception("watching bridges (restarting in 1 s)")
            time.sleep(1)
