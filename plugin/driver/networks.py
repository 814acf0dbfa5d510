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
from ..domain.options import (OPT_BRIDGE_NAME, IpamDataSpec, check_adoptable_bridge, isolated_families,
                              network_from_request)
from .context import Context, collect

log = logging.getLogger(__name__)


class NetworkService:
    def __init__(self, ctx: Context):
        self.ctx = ctx

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

    def create(self, network_id: str, generic: dict[str, str], *, ipv6: bool, internal: bool,
               ipv4_data: list[IpamDataSpec], ipv6_data: list[IpamDataSpec]) -> None:
        ctx = self.ctx
        network = network_from_request(network_id, generic, ipv6=ipv6, internal=internal,
                                       ipv4_data=ipv4_data, ipv6_data=ipv6_data, prefix=ctx.prefix)
        if network.pools(6) and not ctx.firewall.supports(6):
            raise InvalidRequest("IPv6 networks cannot be filtered where pybridge runs, so none is made")
        created = touched = False
        try:
            with ctx.store.transaction() as tx:
                existing = tx.get_network(network_id)
                if existing is not None:
                    if replace(existing, bridge_owned=True) != replace(network, bridge_owned=True):
                        raise Conflict(f"network {network_id[:12]} exists with other settings")
                    network = existing
                if generic.get(OPT_BRIDGE_NAME):   # a custom-named bridge of Docker's is Docker's too
                    check_adoptable_bridge(network.bridge, ctx.prefix, tx.docker_bridges())
                other = tx.network_by_bridge(network.bridge)
                if other is not None and other.id != network_id:
                    raise Conflict(f"bridge {network.bridge} is already used by network {other.id[:12]}")
                link = ctx.netlink.link(network.bridge)
                if link is not None and link.kind != "bridge":
                    raise Conflict(f"a {link.kind or 'non-bridge'} link named {network.bridge!r} already exists")
                if existing is None:
                    owned = link is None or network.bridge.startswith(owned_link_prefixes(ctx.prefix))
                    network = replace(network, bridge_owned=owned)
                touched = True
                created = ctx.netlink.ensure_bridge(network.bridge, network.mtu, bridge_mac(network.id))
                self._configure_bridge(network)
                tx.put_network(network)
                ctx.change_firewall(tx, ctx.firewall.add_network, network)
        except PybridgeError:
            self._undo_create(network, created, touched)
            raise
        except Exception as e:
            self._undo_create(network, created, touched)
            raise KernelError(f"create network {network_id[:12]}: {e}") from e
        ctx.networks_changed()
        log.info("network %s created on bridge %s", network_id[:12], network.bridge)

    def docker_bridges_seen(self, names: set[str]) -> None:
        """The event watcher's report of Docker's bridges (never called inside a plugin call)."""
        with self.ctx.store.transaction() as tx:
            if tx.docker_bridges() != frozenset(names):
                tx.set_docker_bridges(names)

    def ensure_kernel(self, network: Network) -> bool:
        """Bridge up with its gateway addresses (restore runs the same steps as create)."""
        created = self.ctx.netlink.ensure_bridge(network.bridge, network.mtu, bridge_mac(network.id))
        self._configure_bridge(network)
        return created

    def _configure_bridge(self, network: Network) -> None:
        if not network.internal:
            self.ctx.sysctl.ensure("1", "net", "ipv4", "ip_forward")  # written only if it differs
        if network.pools(6):
            self.ctx.sysctl.enable_ipv6(network.bridge)
        self.ctx.netlink.ensure_addresses(network.bridge, network.gateways())
        if network.pools(6) and not network.internal:
            if not self.ctx.firewall.supports(6):   # fail closed: nothing forwarded unfiltered
                raise KernelError(f"IPv6 of network {network.id[:12]} is not forwarded: it cannot be filtered")
            self.ctx.sysctl.enable_ipv6_forwarding()

    def _undo_create(self, network: Network, created: bool, touched: bool) -> None:
        if not touched:
            return
        errors = []
        try:
            if created:
                self.ctx.netlink.delete_link(network.bridge)
            else:
                with self.ctx.store.reading() as tx:
                    recorded = tx.get_network(network.id) is not None
                if not recorded:
                    self.ctx.netlink.remove_addresses(network.bridge, network.gateways())
        except PybridgeError as e:
            errors.append(str(e))
        try:
            with self.ctx.store.transaction() as tx:
                self.ctx.sync_firewall(tx)
        except PybridgeError as e:
            errors.append(str(e))
        if errors:
            log.error("undo of network %s incomplete: %s", network.id[:12], "; ".join(errors))

    def delete(self, network_id: str) -> None:
        ctx = self.ctx
        errors: list[str] = []
        with ctx.store.transaction() as tx:
            try:
                network = tx.get_network(network_id)
            except CorruptState as e:
                self._forget_unreadable(tx, network_id, e, errors)
            else:
                if network is None:
                    return
                self._teardown(tx, network, errors)
        ctx.networks_changed()
        if errors:
            raise KernelError(f"network {network_id[:12]} removed with errors: " + "; ".join(errors))
        log.info("network %s deleted", network_id[:12])

    def _teardown(self, tx, network: Network, errors: list[str]) -> None:
        ctx = self.ctx
        if not network.bridge_owned:
            # Nothing would ever take our gateway off a user's bridge later (restore collects
            # only links with our prefix): first, and if the kernel refuses, the delete fails
            # with nothing changed, so that dockerd's retry finds the network whole.
            ctx.netlink.remove_addresses(network.bridge, network.gateways())
        endpoints = tx.list_endpoints(network.id)
        for ep in endpoints:
            for name in (ep.host_ifname, ep.container_ifname):
                collect(errors, ctx.netlink.delete_link, name)
            tx.delete_endpoint(ep.id)
        tx.delete_network(network.id)
        if ctx.dns is not None:
            ctx.dns.forget(network.id, tx)
        collect(errors, ctx.change_firewall, tx, ctx.firewall.remove_network, network, endpoints)
        if network.bridge_owned:
            collect(errors, ctx.netlink.delete_link, network.bridge)

    def _forget_unreadable(self, tx, network_id: str, problem: CorruptState, errors: list[str]) -> None:
        """dockerd wants the network gone and its row cannot be read: forget its rows. Its bridge
        and veths carry our prefix and no record claims them any more, so restore/gc remove them."""
        log.error("network %s: %s; forgetting its rows", network_id[:12], problem)
        tx.forget_network_rows(network_id)
        if self.ctx.dns is not None:
            self.ctx.dns.forget(network_id, tx)
        collect(errors, self.ctx.sync_firewall, tx)
