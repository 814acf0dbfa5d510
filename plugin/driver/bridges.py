"""Which bridges on this host are not ours: our networks must not reach them (Docker's, libvirt's,
LXD's, a user's), unless a published port leads there. Kept current from netlink events (a bridge
made or removed, a route through a gateway changed), never by polling; a bridge that carries a
route through a gateway is an uplink and stays reachable."""

from __future__ import annotations

import logging
import threading
import time

from ..domain.errors import KernelError
from .context import Context

log = logging.getLogger(__name__)


class ForeignBridges:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def found(self, tx) -> tuple[str, ...]:
        """The bridges that are not ours now, inside a transaction (so our own networks are as
        recorded). The firewall adapter keeps the set it isolates (FirewallPort.foreign)."""
        return tuple(self.ctx.netlink.foreign_bridges([n.bridge for n in tx.list_networks()]))

    def on_change(self) -> None:
        """A bridge or an uplink route changed: isolate our networks from the bridges there are now.
        Should the firewall refuse, it keeps the bridges it had, so the next event retries; a
        change that fails is a rewrite with the new set."""
        ctx = self.ctx
        with ctx.store.transaction() as tx:
            found = self.found(tx)
            if found == ctx.firewall.foreign() or ctx.lifecycle.retired:
                return
            log.info("bridges that are not ours: %s", ", ".join(found) or "none")
            try:
                ctx.firewall.set_foreign(found, [n.bridge for n in tx.list_networks()])
            except KernelError as e:
                log.warning("firewall change failed (%s): rewriting the table", e)
                ctx.sync_firewall(tx, foreign=found)

    def start(self) -> None:
        threading.Thread(target=self._watch, name="pybridge-bridges", daemon=True).start()

    def _watch(self) -> None:
        while True:
            try:
                self.ctx.netlink.watch_links(self.on_change)
            except Exception:
                log.exception("watching bridges (restarting in 1 s)")
            time.sleep(1)
