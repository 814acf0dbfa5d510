"""Composition root: the only place that picks real adapters. Tests build their own."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .config import Settings
from .docker.inventory import ContainerInventory
from .driver.bridges import ForeignBridges
from .driver.endpoints import EndpointService
from .driver.firewall import FirewallWriter
from .driver.networks import NetworkService
from .driver.ports import Lifecycle, LocalOnly, NetworkHooks
from .driver.reaper import Reaper
from .driver.restore import Doctor, Reconciler
from .driver.views import Views
from .ipam.claims import AddressClaims, LocalClaims, Returning
from .ipam.service import IpamService
from .kernel.interfaces import FirewallPort, NetlinkPort, OverlayPort, SysctlPort, TunnelPort
from .store.db import Store

if TYPE_CHECKING:
    from .cluster.service import ClusterService
    from .cluster.tunnel import Encrypted
    from .dns.service import DnsService
    from .docker.watcher import DockerWatcher


class MetricsPort(Protocol):
    """plugin.metrics.Metrics as the wiring and the HTTP layer use it (metrics imports nothing
    of the wiring's at run time, and the wiring nothing of metrics' but through this)."""

    def serve(self, host: str, port: int) -> bool: ...
    def observe_call(self, method: str, seconds: float, ok: bool) -> None: ...


@dataclass
class Services:
    settings: Settings
    store: Store
    netlink: NetlinkPort
    firewall: FirewallPort
    sysctl: SysctlPort
    lifecycle: Lifecycle  # retired after uninstall (the HTTP layer refuses calls then)
    reaper: Reaper
    hooks: NetworkHooks  # cluster mode's steps in the use cases (LocalOnly: none)
    inventory: ContainerInventory  # Docker's names of the containers on our networks
    networks: NetworkService
    endpoints: EndpointService
    ipam: IpamService
    reconciler: Reconciler
    doctor: Doctor
    views: Views
    dns: DnsService | None = None  # the DNS (the driver sees it as its DnsPort)
    watcher: DockerWatcher | None = None  # the Docker event watcher, once started (its reconnects)
    metrics: MetricsPort | None = None  # plugin.metrics.Metrics, made by enable_metrics()
    cluster: ClusterService | None = None  # in cluster mode
    overlay: OverlayPort | None = None  # the VXLAN adapter, in cluster mode
    tunnel: Encrypted | None = None  # the WireGuard underlay, in cluster mode with PYBRIDGE_CLUSTER_ENCRYPT

    def underlay_up(self) -> None:
        """Before the restore: the WireGuard device that cluster networks' VXLAN runs over. Should
        it fail, cluster networks fail to attach (VXLAN never falls back to clear text)."""
        if self.tunnel is None or self.overlay is None:
            return
        under = self.overlay.underlay(self.settings.cluster_address)
        if under is None:
            logging.getLogger(__name__).error(
                "cluster: no link holds the underlay address %s: no WireGuard device", self.settings.cluster_address
            )
            return
        try:
            self.tunnel.up(under[1])
        except Exception as e:
            logging.getLogger(__name__).error("cluster: WireGuard could not come up, cluster networks stay down: %s", e)

    def enable_metrics(self):
        """The Prometheus registry the HTTP layer feeds; served by start_background when the
        settings give it an address."""
        from .metrics import Metrics

        self.metrics = Metrics(self)
        return self.metrics

    def start_background(self) -> None:
        """Threads outside every plugin handler: the firewall watchdog, the netlink watch that
        keeps our networks isolated from bridges that appear, and the Docker event watcher
        filling the container inventory."""
        if self.metrics is not None and self.settings.metrics is not None:
            self.metrics.serve(*self.settings.metrics)
        # always: healing from nftables events is not a setting (PYBRIDGE_FIREWALL_CHECK is the
        # iptables-legacy poll alone); a table left damaged would leave its protections off
        threading.Thread(target=self._watch_firewall, name="pybridge-firewall-watchdog", daemon=True).start()
        self.reconciler.bridges.start()
        if self.cluster is not None:
            self.cluster.start()
        threading.Thread(
            target=self.inventory.run_saver, args=(threading.Event(),), name="pybridge-inventory-saver", daemon=True
        ).start()
        if not os.path.exists(self.settings.docker_socket):
            return
        from .docker.watcher import DockerWatcher

        self.watcher = DockerWatcher(
            self.settings.docker_socket,
            self.inventory.learned,
            on_bridges=self.networks.docker_bridges_seen,
            on_containers=self._containers_seen,
        )
        self.watcher.start()

    def _containers_seen(self, state, changed, existing, gone) -> None:
        """The addresses of containers that restart by themselves, for the IPAM to give back."""
        owners = [
            (c.id, c.name, address)
            for nid in changed
            for c in state.get(nid, ("", {}))[1].values()
            if c.restarts
            for address in (c.ipv4, c.ipv6)
            if address
        ]
        self.ipam.remember(owners, existing, gone)

    def _watch_firewall(self) -> None:
        """Our table or the static iptables rule changed from outside (nft flush ruleset, a
        firewall reload, iptables -F): the firewall adapter reports it and it comes back."""
        pending = threading.Event()  # one retry at a time

        def retried() -> None:
            pending.clear()
            heal()

        def heal() -> None:
            try:
                self.doctor.heal_firewall()
            except Exception:
                logging.getLogger(__name__).exception("firewall healing (again in 2 s)")
                # no event may follow a failed rewrite: try again until the table is back
                if not pending.is_set():
                    pending.set()
                    retry = threading.Timer(2.0, retried)
                    retry.daemon = True
                    retry.start()

        while True:
            try:
                self.firewall.watch(heal, legacy_every=self.settings.firewall_check)
            except Exception:
                logging.getLogger(__name__).exception("firewall watch (restarting in 1 s)")
            time.sleep(1)


def build_services(
    settings: Settings,
    *,
    netlink=None,
    firewall=None,
    sysctl=None,
    store: Store | None = None,
    synchronous_teardown: bool = False,
    dns=None,
    kv=None,
    overlay=None,
    wireguard: TunnelPort | None = None,
) -> Services:
    if netlink is None:
        from .kernel.netlink import Netlink

        netlink = Netlink()
    if firewall is None:
        from .kernel.iptables_migration import OldIptablesChains
        from .kernel.nft import NftFirewall

        firewall = NftFirewall(
            settings.chain_prefix, settings.firewall_mark, migrate=OldIptablesChains(settings.chain_prefix).remove_all
        )
    if sysctl is None:
        from .kernel.sysctl import Sysctl

        mounted = os.path.isdir(os.path.join(settings.proc_sys, "net", "ipv4"))
        sysctl = Sysctl(settings.proc_sys if mounted else "/proc/sys")
    if store is None:
        store = Store(settings.db_path).open()
    inventory = ContainerInventory(store)
    if dns is None and settings.dns:
        from .dns.server import DnsServer
        from .dns.service import DnsService

        host = None
        if settings.host_dns:
            from .kernel.resolved import ResolvedLinks

            def link_addresses(index: int) -> set[str]:
                named = next((link.name for link in netlink.links() if link.index == index), None)
                return {a.split("/")[0] for a in netlink.addresses(named)} if named else set()

            host = ResolvedLinks(
                settings.host_dns, lambda name: getattr(netlink.link(name), "index", None), link_addresses
            )
        dns = DnsService(
            store,
            DnsServer(port=settings.dns_port, ttl=settings.dns_ttl),
            settings.dns_default_upstream,
            host=host,
            host_suffix=settings.host_dns_suffix,
            inventory=inventory,
        )
        if host is not None:
            host.on_servers = dns.reconcile  # resolved's servers changed: new upstreams
    lifecycle = Lifecycle()
    writer = FirewallWriter(firewall, lifecycle)
    hooks: NetworkHooks = LocalOnly()
    returning = Returning()
    claims: AddressClaims = LocalClaims(store, returning)
    cluster = None
    tunnel = None
    if settings.clustered:
        from .cluster.claims import EtcdClaims
        from .cluster.networks import ClusterNetworks
        from .cluster.service import ClusterService

        if kv is None:
            from .cluster.etcd import EtcdKV

            login = None
            if settings.cluster_login is not None:  # the password is read here, and kept by the adapter only
                with open(settings.cluster_login.password_file) as f:
                    login = (settings.cluster_login.user, f.read().strip())
            kv = EtcdKV(settings.cluster_etcd, tls=settings.cluster_tls, login=login)
        if overlay is None:
            from .kernel.vxlan import Vxlan

            overlay = Vxlan()
        cluster = ClusterService(kv, settings.cluster_address, settings.cluster_grace)
        if settings.cluster_encrypt == "wireguard":
            import ipaddress

            from .cluster.tunnel import Encrypted
            from .domain.naming import tunnel_name

            if wireguard is None:
                from .kernel.wireguard import WireGuard

                wireguard = WireGuard()
            tunnel = Encrypted(
                wireguard,
                cluster,
                store,
                tunnel_name(settings.ifprefix),
                ipaddress.ip_network(settings.cluster_wg_subnet),
                settings.cluster_wg_port,
                os.path.join(settings.state_dir, "wireguard.key"),
                settings.cluster_address,
            )
            cluster.watch.on_tunnels = tunnel.members_changed
            cluster.describe_tunnel = tunnel.snapshot
        on_cluster = ClusterNetworks(
            cluster,
            overlay,
            netlink,
            store,
            writer,
            settings.ifprefix,
            settings.cluster_address,
            settings.vxlan_port,
            inventory.names,
            tunnel,
        )
        on_cluster.listen()
        inventory.subscribe(on_cluster.names_changed)
        hooks = on_cluster
        claims = EtcdClaims(cluster, store, LocalClaims(store, returning), returning)
        if dns is not None:
            cluster.on_names = dns.set_remote
    prefix = settings.ifprefix
    reaper = Reaper(netlink, synchronous=synchronous_teardown)
    networks = NetworkService(store, netlink, sysctl, writer, hooks, prefix, inventory, dns)
    bridges = ForeignBridges(store, netlink, writer)
    return Services(
        settings=settings,
        store=store,
        netlink=netlink,
        firewall=firewall,
        sysctl=sysctl,
        lifecycle=lifecycle,
        reaper=reaper,
        hooks=hooks,
        inventory=inventory,
        networks=networks,
        endpoints=EndpointService(store, netlink, sysctl, writer, hooks, reaper, lifecycle, prefix),
        ipam=IpamService(store, netlink.host_networks, settings.default_pools, settings.default_pools6, claims=claims),
        reconciler=Reconciler(store, netlink, sysctl, writer, networks, bridges, lifecycle, prefix, dns),
        doctor=Doctor(store, netlink, sysctl, writer, hooks, lifecycle, prefix, cluster),
        views=Views(store, inventory, dns, cluster),
        dns=dns,
        cluster=cluster,
        overlay=overlay,
        tunnel=tunnel,
    )
