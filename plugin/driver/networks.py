"""NetworkService: CreateNetwork / DeleteNetwork.

Create validates everything first, then ensures bridge, addresses and firewall, then records the
network; a failure undoes what this call made. Delete is best effort and idempotent: it tears
down what it can, forgets the network, and reports the errors it met.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from ..domain.errors import Conflict, CorruptState, InvalidRequest, KernelError, PybridgeError
from ..domain.model import Network
from ..domain.naming import bridge_mac, owned_link_prefixes
from ..domain.options import (
    OPT_BRIDGE_NAME,
    IpamDataSpec,
    check_adoptable_bridge,
    isolated_families,
    network_from_request,
)
from ..kernel.interfaces import NetlinkPort, SysctlPort
from ..store.db import Store, Tx
from .firewall import FirewallWriter, collect
from .ports import DnsPort, InventoryPort, NetworkHooks

log = logging.getLogger(__name__)


class NetworkService:
    def __init__(
        self,
        store: Store,
        netlink: NetlinkPort,
        sysctl: SysctlPort,
        firewall: FirewallWriter,
        hooks: NetworkHooks,
        prefix: str,
        inventory: InventoryPort,
        dns: DnsPort | None = None,
    ):
        self.store = store
        self.netlink = netlink
        self.sysctl = sysctl
        self.firewall = firewall
        self.hooks = hooks  # cluster mode's steps (LocalOnly: none)
        self.prefix = prefix  # link-name prefix, e.g. "pb"
        self.inventory = inventory  # Docker's names of our networks' containers
        self.dns = dns  # None when the DNS is off

    @staticmethod
    def capabilities() -> dict:
        # GwAllocChecker: dockerd 28+ asks GwAllocCheck before reserving gateway addresses
        return {"Scope": "local", "ConnectivityScope": "local", "GwAllocChecker": True}

    @staticmethod
    def gateway_check(generic: dict[str, str], internal: bool) -> dict:
        """GwAllocCheck: no gateway address for an isolated (internal) network. An option
        pybridge would refuse at CreateNetwork is refused here, before any address is reserved."""
        isolated = isolated_families(generic, internal)
        return {"SkipIPv4": 4 in isolated, "SkipIPv6": 6 in isolated}

    def create(
        self,
        network_id: str,
        generic: dict[str, str],
        *,
        ipv6: bool,
        internal: bool,
        ipv4_data: list[IpamDataSpec],
        ipv6_data: list[IpamDataSpec],
    ) -> None:
        network = network_from_request(
            network_id,
            generic,
            ipv6=ipv6,
            internal=internal,
            ipv4_data=ipv4_data,
            ipv6_data=ipv6_data,
            prefix=self.prefix,
        )
        if network.pools(6) and not self.firewall.port.supports(6):
            raise InvalidRequest("IPv6 networks cannot be filtered where pybridge runs, so none is made")
        with self.hooks.changing(network):  # (cluster: joined in etcd and recorded here as one step)
            network = self.hooks.join(network)
            existing = None
            created = touched = False
            try:
                with self.store.transaction() as tx:
                    existing = tx.networks.get(network_id)
                    if existing is not None:
                        if replace(existing, bridge_owned=True) != replace(network, bridge_owned=True):
                            raise Conflict(f"network {network_id[:12]} exists with other settings")
                        network = existing
                    if generic.get(OPT_BRIDGE_NAME):  # a custom-named bridge of Docker's is Docker's too
                        check_adoptable_bridge(network.bridge, self.prefix, tx.meta.docker_bridges())
                    other = tx.networks.by_bridge(network.bridge)
                    if other is not None and other.id != network_id:
                        raise Conflict(f"bridge {network.bridge} is already used by network {other.id[:12]}")
                    link = self.netlink.link(network.bridge)
                    if link is not None and link.kind != "bridge":
                        raise Conflict(f"a {link.kind or 'non-bridge'} link named {network.bridge!r} already exists")
                    if existing is None:
                        owned = link is None or network.bridge.startswith(owned_link_prefixes(self.prefix))
                        network = replace(network, bridge_owned=owned)
                    touched = True
                    # the steps of ensure_kernel, with what was made known to the undo
                    created = self.netlink.ensure_bridge(
                        network.bridge, network.mtu, network.mac or bridge_mac(network.id)
                    )
                    self._configure_bridge(network)
                    self.hooks.attach(network)
                    tx.networks.put(network)
                    for pool in network.pools() if network.cluster else ():
                        tx.leases.set_pool_cluster(str(pool), network.cluster)
                    self.firewall.change(tx, self.firewall.port.add_network, network)
            except PybridgeError:
                self._undo_create(network, created, touched, left=existing is None)
                raise
            except Exception as e:
                self._undo_create(network, created, touched, left=existing is None)
                raise KernelError(f"create network {network_id[:12]}: {e}") from e
        self.hooks.changed(network)
        self.networks_changed()
        log.info("network %s created on bridge %s", network_id[:12], network.bridge)

    def networks_changed(self) -> None:
        """Tell the DNS (if any) to listen for exactly the recorded networks. A DNS problem is
        logged, never fails a network operation."""
        if self.dns is None:
            return
        try:
            self.dns.reconcile()
        except Exception:
            log.exception("DNS reconcile failed")

    def docker_bridges_seen(self, names: set[str]) -> None:
        """The event watcher's report of Docker's bridges (never called inside a plugin call)."""
        with self.store.transaction() as tx:
            if tx.meta.docker_bridges() != frozenset(names):
                tx.meta.set_docker_bridges(names)

    def ensure_kernel(self, network: Network) -> bool:
        """Bridge up with its gateway addresses, then what the hooks put on it (a cluster
        network's VXLAN device); restore runs the same steps as create. True: the bridge was made."""
        created = self.netlink.ensure_bridge(network.bridge, network.mtu, network.mac or bridge_mac(network.id))
        self._configure_bridge(network)
        self.hooks.attach(network)
        return created

    def _configure_bridge(self, network: Network) -> None:
        if not network.internal:
            self.sysctl.ensure("1", "net", "ipv4", "ip_forward")  # written only if it differs
        if network.pools(6):
            self.sysctl.enable_ipv6(network.bridge)
        self.netlink.ensure_addresses(network.bridge, network.gateways())
        if network.pools(6) and not network.internal:
            if not self.firewall.port.supports(6):  # fail closed: nothing forwarded unfiltered
                raise KernelError(f"IPv6 of network {network.id[:12]} is not forwarded: it cannot be filtered")
            self.sysctl.enable_ipv6_forwarding()

    def _undo_create(self, network: Network, created: bool, touched: bool, left: bool) -> None:
        """What a failed create made goes; `left`: the network was not there before this call
        (a retried create of a recorded network leaves it joined)."""
        errors: list[str] = []
        if touched:
            collect(errors, self.hooks.detach, network)
            try:
                if created:
                    self.netlink.delete_link(network.bridge)
                else:
                    with self.store.reading() as tx:
                        recorded = tx.networks.get(network.id) is not None
                    if not recorded:
                        self.netlink.remove_addresses(network.bridge, network.gateways())
            except PybridgeError as e:
                errors.append(str(e))
            try:
                with self.store.transaction() as tx:
                    self.firewall.sync(tx)
            except PybridgeError as e:
                errors.append(str(e))
        if left:
            collect(errors, self.hooks.leave, network)
        if errors:
            log.error("undo of network %s incomplete: %s", network.id[:12], "; ".join(errors))

    def delete(self, network_id: str) -> None:
        errors: list[str] = []
        network = None
        with self.hooks.changing(network_id):  # (cluster: leaves the store and etcd as one step)
            with self.store.transaction() as tx:
                try:
                    network = tx.networks.get(network_id)
                except CorruptState as e:
                    self._forget_unreadable(tx, network_id, e, errors)
                else:
                    if network is None:
                        return
                    self._teardown(tx, network, errors)
            if network is not None:
                self.hooks.leave(network)  # outside the store's lock: etcd may be slow
        if network is not None:
            self.hooks.changed(network)
        self.networks_changed()
        if errors:
            raise KernelError(f"network {network_id[:12]} removed with errors: " + "; ".join(errors))
        log.info("network %s deleted", network_id[:12])

    def _teardown(self, tx: Tx, network: Network, errors: list[str]) -> None:
        if not network.bridge_owned:
            # Nothing would ever take our gateway off a user's bridge later (restore collects
            # only links with our prefix): first, and if the kernel refuses, the delete fails
            # with nothing changed, so that dockerd's retry finds the network whole.
            self.netlink.remove_addresses(network.bridge, network.gateways())
        endpoints = tx.networks.endpoints(network.id)
        for ep in endpoints:
            for name in (ep.host_ifname, ep.container_ifname):
                collect(errors, self.netlink.delete_link, name)
            tx.networks.delete_endpoint(ep.id)
        tx.networks.delete(network.id)
        self.inventory.forget(network.id, tx)
        collect(errors, self.firewall.change, tx, self.firewall.port.remove_network, network, endpoints)
        collect(errors, self.hooks.detach, network)
        if network.bridge_owned:
            collect(errors, self.netlink.delete_link, network.bridge)

    def _forget_unreadable(self, tx: Tx, network_id: str, problem: CorruptState, errors: list[str]) -> None:
        """dockerd wants the network gone and its row cannot be read: forget its rows. Its bridge
        and veths carry our prefix and no record claims them any more, so restore/gc remove them."""
        log.error("network %s: %s; forgetting its rows", network_id[:12], problem)
        tx.networks.forget_rows(network_id)
        self.inventory.forget(network_id, tx)
        collect(errors, self.firewall.sync, tx)
