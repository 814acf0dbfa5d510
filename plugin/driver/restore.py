"""Reconcile the kernel with the state store: at start, and on demand (gc).

dockerd never replays CreateNetwork, so at start pybridge re-creates every recorded network's
bridge, addresses and rules with the same steps as create, and removes the links it owns (by
name prefix) that no record claims. Firewall chains are rewritten whole from state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..domain.errors import PybridgeError
from ..domain.naming import owned_link_prefixes
from .context import Context
from .networks import NetworkService

log = logging.getLogger(__name__)


@dataclass
class Report:
    networks: int = 0
    endpoints: int = 0
    removed_links: list[str] = field(default_factory=list)
    dropped_endpoints: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"networks": self.networks, "endpoints": self.endpoints,
                "removed_links": self.removed_links, "dropped_endpoints": self.dropped_endpoints,
                "errors": self.errors}


class Reconciler:
    def __init__(self, ctx: Context, networks: NetworkService):
        self.ctx = ctx
        self.networks = networks

    def restore(self) -> Report:
        ctx, report = self.ctx, Report()
        with ctx.store.transaction() as tx:
            networks = tx.list_networks()
            known_ids = {n.id for n in networks}
            for n in networks:
                try:
                    self.networks.ensure_kernel(n)
                except PybridgeError as e:
                    report.errors.append(f"network {n.id[:12]}: {e}")
            endpoints = []
            for ep in tx.list_endpoints():
                if ep.network_id in known_ids:
                    endpoints.append(ep)
                else:
                    tx.delete_endpoint(ep.id)
                    report.dropped_endpoints.append(ep.id)
            by_id = {n.id: n for n in networks}
            for bridge in sorted({by_id[ep.network_id].bridge for ep in endpoints if ep.ports}):
                try:  # loopback access to published ports (lost with a re-created bridge)
                    ctx.sysctl.ensure("1", "net", "ipv4", "conf", bridge, "route_localnet")
                except PybridgeError as e:
                    report.errors.append(str(e))
            claimed = {n.bridge for n in networks}
            claimed |= {name for ep in endpoints for name in (ep.host_ifname, ep.container_ifname)}
            prefixes = owned_link_prefixes(ctx.prefix)
            for link in ctx.netlink.links():
                if link.name.startswith(prefixes) and link.name not in claimed:
                    try:
                        if ctx.netlink.delete_link(link.name):
                            report.removed_links.append(link.name)
                    except PybridgeError as e:
                        report.errors.append(str(e))
            try:
                ctx.sync_firewall(tx)
            except PybridgeError as e:
                report.errors.append(f"firewall: {e}")
            report.networks, report.endpoints = len(networks), len(endpoints)
        ctx.networks_changed()
        log.info("restore: %s", report.as_dict())
        return report


class Doctor:
    """Compares state with the kernel (links, addresses, rules), and heals the firewall."""

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def examine(self) -> dict:
        ctx = self.ctx
        with ctx.store.reading() as tx:
            networks, endpoints = tx.list_networks(), tx.list_endpoints()
        links = {l.name: l for l in ctx.netlink.links()}
        problems = []
        claimed = set()
        for n in networks:
            claimed.add(n.bridge)
            if n.bridge not in links:
                problems.append(f"network {n.id[:12]}: bridge {n.bridge} is missing")
                continue
            present = ctx.netlink.addresses(n.bridge)
            for gw in n.gateways():
                if str(gw) not in present:
                    problems.append(f"network {n.id[:12]}: bridge {n.bridge} lacks address {gw}")
        for ep in endpoints:
            claimed |= {ep.host_ifname, ep.container_ifname}
        for name in links:
            if name.startswith(owned_link_prefixes(ctx.prefix)) and name not in claimed:
                problems.append(f"link {name} is ours but no network or endpoint claims it")
        problems += [f"firewall: {p}" for p in ctx.firewall.drift(networks, endpoints)]
        return {"networks": len(networks), "endpoints": len(endpoints), "problems": problems}

    def heal_firewall(self) -> list[str]:
        """Rewrite our chains if they drifted (flushed, deleted, jumps gone). Returns the drift."""
        ctx = self.ctx
        with ctx.store.reading() as tx:
            networks, endpoints = tx.list_networks(), tx.list_endpoints()
        problems = ctx.firewall.drift(networks, endpoints)
        if problems:
            log.warning("firewall drift, restoring our chains: %s", problems)
            with ctx.store.transaction() as tx:
                ctx.sync_firewall(tx)
        return problems
