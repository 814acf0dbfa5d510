"""What every use case needs: the store, the kernel adapters and the instance's naming prefix."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..domain.errors import KernelError, PybridgeError
from ..kernel.interfaces import FirewallPort, NetlinkPort, OverlayPort, SysctlPort
from ..store.db import Store, Tx
from .ports import ClusterPort, DnsPort, Lifecycle, ReaperPort


@dataclass
class Context:
    store: Store
    netlink: NetlinkPort
    firewall: FirewallPort
    sysctl: SysctlPort
    prefix: str       # link-name prefix, e.g. "pb"
    reaper: ReaperPort              # deferred veth deletion
    dns: DnsPort | None = None      # None when the DNS is off
    lifecycle: Lifecycle = field(default_factory=Lifecycle)    # retired: write nothing any more
    cluster: ClusterPort | None = None      # in cluster mode, else None
    overlay: OverlayPort | None = None      # VXLAN devices, in cluster mode
    underlay: str = ""              # this host's underlay address (VXLAN source)
    vxlan_port: int = 4789
    # our table (or a chain or set of it) is gone and not yet back: what only its raw
    # protections make safe is withheld meanwhile (route_localnet, VXLAN devices up); Doctor
    exposed: bool = False

    def networks_changed(self) -> None:
        """Tell the DNS (if any) to listen for exactly the recorded networks. A DNS problem is
        logged, never fails a network operation."""
        if self.dns is None:
            return
        try:
            self.dns.reconcile()
        except Exception:
            logging.getLogger(__name__).exception("DNS reconcile failed")

    def sync_firewall(self, tx: Tx, foreign: tuple[str, ...] | None = None) -> None:
        """Rewrite our whole table from the state as this transaction sees it (and with these
        bridges that are not ours; None: those the firewall holds)."""
        if self.lifecycle.retired:
            return
        self.firewall.sync(tx.list_networks(), tx.list_endpoints(), foreign=foreign)

    def change_firewall(self, tx: Tx, change, *args) -> None:
        """One change of a few elements or chains, made after the transaction's state changed.
        Should it fail (our table was changed behind our back, the helper died), the whole table
        is rewritten from that state; should that fail too, the error stands and the
        transaction rolls back, with the kernel as it was."""
        if self.lifecycle.retired:
            return
        try:
            change(*args)
        except KernelError as e:
            logging.getLogger(__name__).warning("firewall change failed (%s): rewriting the table", e)
            self.sync_firewall(tx)


def collect(errors: list[str], fn, *args) -> None:
    """Run one teardown step; record its failure and keep going (teardown is best effort)."""
    try:
        fn(*args)
    except PybridgeError as e:
        errors.append(str(e))
    except OSError as e:
        errors.append(f"{getattr(fn, '__name__', 'step')}: {e}")
