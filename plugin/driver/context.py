"""What every use case needs: the store, the kernel adapters and the instance's naming prefix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..store.db import Store


@dataclass
class Context:
    store: Store
    netlink: Any      # plugin.kernel.netlink.Netlink or a test fake with the same methods
    firewall: Any     # plugin.kernel.firewall.IptablesFirewall or a fake
    sysctl: Any       # plugin.kernel.sysctl.Sysctl or a fake
    prefix: str       # link-name prefix, e.g. "pb"
    reaper: Any = None  # plugin.driver.reaper.Reaper: deferred veth deletion
