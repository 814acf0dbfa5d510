"""What every use case needs: the store, the kernel adapters and the instance's naming prefix."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..domain.errors import PybridgeError
from ..kernel.interfaces import FirewallPort, NetlinkPort, SysctlPort
from ..store.db import Store, Tx


@dataclass
class Context:
    store: Store
    netlink: NetlinkPort
    firewall: FirewallPort
    sysctl: SysctlPort
    prefix: str       # link-name prefix, e.g. "pb"
    reaper: Any = None  # plugin.driver.reaper.Reaper: deferred veth deletion
    dns: Any = None     # plugin.dns.service.DnsService, or None when DNS is off
    foreign: tuple[str, ...] = ()   # bridges on the host that are not ours (plugin.driver.bridges)

    def networks_changed(self) -> None:
        """Tell the DNS (if any) to listen for exactly the recorded networks. A DNS problem is
        logged, never fails a network operation."""
        if self.dns is None:
            return
        try:
            self.dns.reconcile()
        except Exception:
            logging.getLogger(__name__).exception("DNS reconcile failed")

    def sync_firewall(self, tx: Tx, check_jumps: bool = True) -> None:
        """Rewrite our chains from the state as this transaction sees it. Endpoint changes
        pass check_jumps=False: the jumps were checked when the network was made or restored."""
        self.firewall.sync(tx.list_networks(), tx.list_endpoints(), foreign=self.foreign, check_jumps=check_jumps)


def collect(errors: list[str], fn, *args) -> None:
    """Run one teardown step; record its failure and keep going (teardown is best effort)."""
    try:
        fn(*args)
    except PybridgeError as e:
        errors.append(str(e))
    except OSError as e:
        errors.append(f"{getattr(fn, '__name__', 'step')}: {e}")
