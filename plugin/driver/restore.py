"""Reconcile the kernel with the state store: at start, and on demand (gc).

dockerd never replays CreateNetwork, so at start pybridge re-creates every recorded network's
bridge, addresses and rules with the same steps as create, and removes the links it owns (by
name prefix) that no record claims. The firewall table is rewritten whole from state.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass, field

from ..domain.errors import PybridgeError
from ..domain.model import Endpoint, Network
from ..domain.naming import owned_link_prefixes
from ..kernel.interfaces import NetlinkPort, SysctlPort
from ..store.db import Store, Tx
from .bridges import ForeignBridges
from .firewall import FirewallWriter
from .networks import NetworkService
from .ports import ClusterView, DnsPort, Lifecycle, NetworkHooks

log = logging.getLogger(__name__)


LEASE_GRACE = 60.0  # seconds between dockerd's RequestAddress and its CreateEndpoint


def orphan_leases(tx: Tx, grace: float) -> list[tuple[str, int]]:
    """Endpoint leases (dynamic or static) that no recorded endpoint of the pool's network holds,
    older than grace: left by a ReleaseAddress that failed while the plugin was down. Pools no
    recorded network uses (yet) are left alone, and so are gateway and aux addresses: libnetwork
    reserves --aux-address with a plain RequestAddress, so its lease looks like a container's,
    and it is held for as long as the network exists."""
    by_subnet = {}
    held: dict[str, set[int]] = {}
    for n in tx.networks.all():
        for subnet in n.subnets:
            by_subnet[subnet.pool] = n.id
            held.setdefault(n.id, set()).update(int(a.ip) for _, a in subnet.aux)
    for e in tx.networks.endpoints():
        for a in (e.address4, e.address6):
            if a is not None:
                held.setdefault(e.network_id, set()).add(int(a.ip))
    pools = {p.id: p for p in tx.leases.pools()}
    out = []
    for pool_id, addr, kind, age in tx.leases.ages(time.time()):
        pool = pools.get(pool_id)
        nid = by_subnet.get(pool.subnet) if pool else None
        if kind in ("dynamic", "static") and nid and age > grace and addr not in held.get(nid, ()):
            out.append((pool_id, addr))
    return sorted(out)


@dataclass
class Report:
    networks: int = 0
    endpoints: int = 0
    removed_links: list[str] = field(default_factory=list)
    dropped_endpoints: list[str] = field(default_factory=list)
    released_leases: list[str] = field(default_factory=list)
    unreadable_rows: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "networks": self.networks,
            "endpoints": self.endpoints,
            "removed_links": self.removed_links,
            "dropped_endpoints": self.dropped_endpoints,
            "released_leases": self.released_leases,
            "unreadable_rows": self.unreadable_rows,
            "errors": self.errors,
        }


class Reconciler:
    def __init__(
        self,
        store: Store,
        netlink: NetlinkPort,
        sysctl: SysctlPort,
        firewall: FirewallWriter,
        networks: NetworkService,
        bridges: ForeignBridges,
        lifecycle: Lifecycle,
        prefix: str,
        dns: DnsPort | None = None,
    ):
        self.store = store
        self.netlink = netlink
        self.sysctl = sysctl
        self.firewall = firewall
        self.networks = networks  # create's steps, run again (ensure_kernel), and its hooks
        self.bridges = bridges
        self.lifecycle = lifecycle
        self.prefix = prefix
        self.dns = dns
        self.healed: dict[str, int] = {}  # what restore and gc repaired since start, by kind

    def restore(self, lease_grace: float = LEASE_GRACE) -> Report:
        report, hooks = Report(), self.networks.hooks
        with self.store.transaction() as tx:
            report.unreadable_rows = tx.unreadable()
            for row in report.unreadable_rows:
                log.error("restore skips %s (doctor lists it; remove the network or fix the row)", row)
            for pool_id, addr in orphan_leases(tx, lease_grace):
                tx.leases.delete(pool_id, addr)
                report.released_leases.append(f"{ipaddress.ip_address(addr)} ({pool_id})")
            networks = tx.networks.all()
            known_ids = {n.id for n in networks}
            for n in networks:
                try:
                    self.networks.ensure_kernel(n)
                except PybridgeError as e:
                    report.errors.append(f"network {n.id[:12]}: {e}")
            endpoints = []
            for ep in tx.networks.endpoints():
                if ep.network_id in known_ids:
                    endpoints.append(ep)
                else:
                    tx.networks.delete_endpoint(ep.id)
                    report.dropped_endpoints.append(ep.id)
            by_id = {n.id: n for n in networks}
            for bridge in sorted({by_id[ep.network_id].bridge for ep in endpoints if ep.ports}):
                try:  # loopback access to published ports (lost with a re-created bridge)
                    self.sysctl.ensure("1", "net", "ipv4", "conf", bridge, "route_localnet")
                except PybridgeError as e:
                    report.errors.append(str(e))
            claimed = {n.bridge for n in networks} | {name for n in networks for name in hooks.links(n)}
            claimed |= {name for ep in endpoints for name in (ep.host_ifname, ep.container_ifname)}
            prefixes = owned_link_prefixes(self.prefix)
            for link in self.netlink.links():
                if link.name.startswith(prefixes) and link.name not in claimed:
                    try:
                        if self.netlink.delete_link(link.name):
                            report.removed_links.append(link.name)
                    except PybridgeError as e:
                        report.errors.append(str(e))
            foreign = None  # isolation from the bridges known so far holds if this fails
            try:
                foreign = self.bridges.found(tx)
            except PybridgeError as e:
                report.errors.append(f"bridges: {e}")
            try:
                self.firewall.sync(tx, foreign=foreign)
            except PybridgeError as e:
                report.errors.append(f"firewall: {e}")
            report.networks, report.endpoints = len(networks), len(endpoints)
        try:
            hooks.changed(None)  # (cluster: the VXLAN filter as it was, before etcd is read)
        except PybridgeError as e:
            report.errors.append(f"firewall: VXLAN filter: {e}")
        self.networks.networks_changed()
        for kind, items in (
            ("links_removed", report.removed_links),
            ("leases_released", report.released_leases),
            ("endpoints_dropped", report.dropped_endpoints),
        ):
            if items:
                self.healed[kind] = self.healed.get(kind, 0) + len(items)
        log.info("restore: %s", report.as_dict())
        return report

    def uninstall(self) -> dict:
        """What scripts/uninstall.sh asks of the running plugin just before it is disabled and
        removed: stop writing to the firewall (the watchdog would put the table back), stop the
        DNS, delete our table and static rules, our bridges and veths (a user's bridge that a
        network adopted stays, without our addresses). The state stays (the script keeps or
        deletes it)."""
        self.lifecycle.retire()
        if self.dns is not None:
            self.dns.stop()
        with self.store.reading() as tx:
            networks = tx.networks.all()
        bridges = {n.bridge for n in networks if n.bridge_owned}
        removed, errors = [], []
        # a user's bridge a network adopted (-o com.docker.network.bridge.name) is never deleted:
        # only the gateway addresses pybridge put on it go
        for n in networks:
            if not n.bridge_owned:
                try:
                    self.netlink.remove_addresses(n.bridge, n.gateways())
                except PybridgeError as e:
                    errors.append(str(e))
        prefixes = owned_link_prefixes(self.prefix)
        for link in self.netlink.links():
            if link.name.startswith(prefixes) or link.name in bridges:
                try:
                    if self.netlink.delete_link(link.name):
                        removed.append(link.name)
                except PybridgeError as e:
                    errors.append(str(e))
        try:
            self.firewall.port.remove_all()
        except PybridgeError as e:
            errors.append(f"firewall: {e}")
        log.warning("uninstalling: removed our firewall table and rules, links %s", removed)
        return {"removed_links": removed, "errors": errors}


class Doctor:
    """Compares state with the kernel (links, addresses, rules), and heals the firewall."""

    def __init__(
        self,
        store: Store,
        netlink: NetlinkPort,
        sysctl: SysctlPort,
        firewall: FirewallWriter,
        hooks: NetworkHooks,
        lifecycle: Lifecycle,
        prefix: str,
        cluster: ClusterView | None = None,
    ):
        self.store = store
        self.netlink = netlink
        self.sysctl = sysctl
        self.firewall = firewall
        self.hooks = hooks  # the links they put on bridges are ours too
        self.lifecycle = lifecycle  # .exposed is set here
        self.prefix = prefix
        self.cluster = cluster  # its refused records are a problem to report
        self.healed: dict[str, int] = {}  # firewall rewrites after drift, since start

    def examine(self, lease_grace: float = LEASE_GRACE) -> dict:
        fw = self.firewall.port
        with self.store.reading() as tx:
            networks, endpoints = tx.networks.all(), tx.networks.endpoints()
            orphans = orphan_leases(tx, lease_grace)
            problems = [f"state: {row}" for row in tx.unreadable()]
        links = {l.name: l for l in self.netlink.links()}
        claimed = set()
        for n in networks:
            claimed.add(n.bridge)
            claimed.update(self.hooks.links(n))
            if n.bridge not in links:
                problems.append(f"network {n.id[:12]}: bridge {n.bridge} is missing")
                continue
            present = self.netlink.addresses(n.bridge)
            for gw in n.gateways():
                if str(gw) not in present:
                    problems.append(f"network {n.id[:12]}: bridge {n.bridge} lacks address {gw}")
        for ep in endpoints:
            claimed |= {ep.host_ifname, ep.container_ifname}
        for name in links:
            if name.startswith(owned_link_prefixes(self.prefix)) and name not in claimed:
                problems.append(f"link {name} is ours but no network or endpoint claims it")
        problems += [f"lease {ipaddress.ip_address(a)} in pool {p} has no endpoint" for p, a in orphans]
        unisolated = set(self.netlink.foreign_bridges([n.bridge for n in networks])) - set(fw.foreign())
        problems += [f"firewall: bridge {b} is not ours and not isolated yet" for b in sorted(unisolated)]
        try:
            problems += [f"firewall: {p}" for p in fw.drift(networks, endpoints)]
        except PybridgeError as e:
            problems.append(f"firewall: cannot be checked: {e}")
        counted = fw.counters()
        if counted.faults:
            problems.append(f"firewall: {counted.faults} fault(s) since start, the last: {counted.last_fault}")
        if self.cluster is not None and self.cluster.refused:
            problems.append(
                f"cluster: {self.cluster.refused} record(s) in etcd are not what pybridge writes "
                "and were left out (the log quotes each)"
            )
        return {"networks": len(networks), "endpoints": len(endpoints), "problems": problems}

    def heal_firewall(self) -> list[str]:
        """Rewrite our table if it drifted (flushed, deleted, elements or static rules gone).
        Returns the drift."""
        with self.store.reading() as tx:
            networks, endpoints = tx.networks.all(), tx.networks.endpoints()
        if self.lifecycle.retired:
            return []
        problems = self.firewall.port.drift(networks, endpoints)
        if problems:
            log.warning("firewall drift, rewriting our table: %s", problems)
            if exposing(problems) and not self.lifecycle.exposed:
                self._close(networks)
            with self.store.transaction() as tx:
                self.firewall.sync(tx)
            self.healed["firewall"] = self.healed.get("firewall", 0) + 1
        if self.lifecycle.exposed:
            with self.store.reading() as tx:
                networks, endpoints = tx.networks.all(), tx.networks.endpoints()
            if not exposing(self.firewall.port.drift(networks, endpoints)):
                self._reopen(networks, endpoints)
        return problems

    def _close(self, networks: list[Network]) -> None:
        """Our table's raw and out chains are what stop a container from reaching the host's
        127.0.0.0/8 through a bridge with route_localnet, and what keeps others' VXLAN off a
        cluster network: while they are gone, route_localnet is off on our bridges (ports
        published on a loopback address pause) and our VXLAN devices are down."""
        self.lifecycle.exposed = True
        log.error("our firewall table is damaged: loopback-published ports and cluster VXLAN are off until it is back")
        for n in networks:
            try:
                self.sysctl.ensure("0", "net", "ipv4", "conf", n.bridge, "route_localnet")
            except PybridgeError as e:
                log.error("network %s: %s", n.id[:12], e)
            try:
                for name in self.hooks.links(n):
                    self.netlink.set_link_up(name, False)
            except PybridgeError as e:
                log.error("network %s: %s", n.id[:12], e)

    def _reopen(self, networks: list[Network], endpoints: list[Endpoint]) -> None:
        published = {ep.network_id for ep in endpoints if ep.ports}
        failed = False
        for n in networks:
            try:
                if n.id in published:
                    self.sysctl.ensure("1", "net", "ipv4", "conf", n.bridge, "route_localnet")
                for name in self.hooks.links(n):
                    self.netlink.set_link_up(name, True)
            except PybridgeError as e:
                failed = True
                log.error("network %s: %s", n.id[:12], e)
        if not failed:
            self.lifecycle.exposed = False
            log.warning("our firewall table is back: loopback-published ports and cluster VXLAN are on again")


def exposing(problems: list[str]) -> bool:
    """Whether drift takes away a protection (the table, a chain or a set of it; not an element,
    which a rewrite brings back and whose absence opens nothing)."""
    return any(p == "table is missing" or p.startswith(("chain ", "set ")) for p in problems)
