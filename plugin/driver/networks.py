"""NetworkService: CreateNetwork / DeleteNetwork.

Create validates everything first, then ensures bridge, addresses and firewall, then records the
network; a failure undoes what this call made. Delete is best effort and idempotent: it tears
down what it can, forgets the network, and reports the errors it met.
"""

from __future__ import annotations

import ipaddress
import logging
from contextlib import nullcontext
from dataclasses import replace

from ..cluster.records import EndpointRecord, NetRecord
from ..cluster.service import LocalNetwork
from ..domain.errors import Conflict, CorruptState, InvalidRequest, KernelError, PybridgeError
from ..domain.model import Network
from ..domain.naming import bridge_mac, owned_link_prefixes, vxlan_name
from ..domain.options import (OPT_BRIDGE_NAME, IpamDataSpec, check_adoptable_bridge, isolated_families,
                              network_from_request)
from ..kernel.interfaces import OverlayPort
from .context import Context, collect
from .ports import ClusterPort

log = logging.getLogger(__name__)


class NetworkService:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._vxlan_filter: tuple = (0, ())     # what the firewall was last told (cluster mode)

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
        gate = ctx.cluster.changing() if network.cluster and ctx.cluster is not None else nullcontext()
        with gate:      # a cluster network is joined in etcd and recorded here as one step for the resync
            joined, existing = False, None
            if network.cluster:
                network = self._join_cluster(network)
                joined = True
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
                    created = ctx.netlink.ensure_bridge(network.bridge, network.mtu, network.mac or bridge_mac(network.id))
                    self._configure_bridge(network)
                    if network.cluster:
                        self._ensure_vxlan(network)
                    tx.put_network(network)
                    for pool in network.pools() if network.cluster else ():
                        tx.set_pool_cluster(str(pool), network.cluster)
                    ctx.change_firewall(tx, ctx.firewall.add_network, network)
            except PybridgeError:
                self._undo_create(network, created, touched, joined and existing is None)
                raise
            except Exception as e:
                self._undo_create(network, created, touched, joined and existing is None)
                raise KernelError(f"create network {network_id[:12]}: {e}") from e
        if network.cluster:
            self._filter_vxlan()
        ctx.networks_changed()
        log.info("network %s created on bridge %s", network_id[:12], network.bridge)

    def docker_bridges_seen(self, names: set[str]) -> None:
        """The event watcher's report of Docker's bridges (never called inside a plugin call)."""
        with self.ctx.store.transaction() as tx:
            if tx.docker_bridges() != frozenset(names):
                tx.set_docker_bridges(names)

    def ensure_kernel(self, network: Network) -> bool:
        """Bridge up with its gateway addresses, and a cluster network's VXLAN device on it with
        the remote entries known (restore runs the same steps as create)."""
        created = self.ctx.netlink.ensure_bridge(network.bridge, network.mtu, network.mac or bridge_mac(network.id))
        self._configure_bridge(network)
        if network.cluster:
            self._ensure_vxlan(network)
        return created

    def _cluster_mode(self) -> tuple[ClusterPort, OverlayPort]:
        """The cluster and the VXLAN adapter, for what only cluster networks do (both are there
        in cluster mode, and a cluster network exists only in cluster mode)."""
        cluster, overlay = self.ctx.cluster, self.ctx.overlay
        if cluster is None or overlay is None:
            raise InvalidRequest("pybridge.cluster needs cluster mode: set the plugin's PYBRIDGE_CLUSTER_ETCD and "
                                 "PYBRIDGE_CLUSTER_ADDRESS")
        return cluster, overlay

    def _join_cluster(self, network: Network) -> Network:
        """The cluster's record of the network (made now by the first host): VNI, gateway MAC
        and MTU come from it, so they are the same on every host."""
        ctx = self.ctx
        if ctx.cluster is None or ctx.overlay is None:
            raise InvalidRequest(f"{network.cluster!r}: pybridge.cluster needs cluster mode: set the plugin's "
                                 "PYBRIDGE_CLUSTER_ETCD and PYBRIDGE_CLUSTER_ADDRESS")
        cluster, overlay = ctx.cluster, ctx.overlay
        if not network.subnets:
            raise InvalidRequest("a cluster network needs a subnet")
        under = overlay.underlay(ctx.underlay)
        if under is None:
            raise KernelError(f"no link of this host holds the underlay address {ctx.underlay}")
        overhead = 70 if ":" in ctx.underlay else 50     # outer IP, UDP, VXLAN and Ethernet headers
        ceiling = under[1] - overhead
        if network.mtu is not None and network.mtu > ceiling:
            raise InvalidRequest(f"MTU {network.mtu} does not fit the underlay: {under[0]} has MTU {under[1]}, "
                                 f"VXLAN takes {overhead}, so at most {ceiling}")
        subnets = [(str(s.pool), str(s.gateway.ip) if s.gateway else "") for s in network.subnets]
        aux = tuple(str(a.ip) for s in network.subnets for _, a in s.aux)
        record = cluster.join_network(network.cluster, subnets, min(network.mtu or 1500, ceiling), aux)
        if record.mtu > ceiling:
            log.warning("cluster network %s: MTU %d is above this host's ceiling %d", network.cluster, record.mtu, ceiling)
        return replace(network, vni=record.vni, mac=record.mac, mtu=record.mtu)

    def _ensure_vxlan(self, network: Network) -> None:
        ctx = self.ctx
        cluster, overlay = self._cluster_mode()
        name = vxlan_name(ctx.prefix, network.vni)
        overlay.ensure_vxlan(name, network.vni, ctx.underlay, ctx.vxlan_port, network.mtu or 1500, network.bridge)
        if cluster.loaded:
            overlay.set_peers(name, network.bridge, self._remote(network, cluster.remote_peers(network.cluster)))
        # else: entries already there stay (a restart with etcd away); the first read programs it

    def program_all_peers(self) -> None:
        """Every cluster network's VXLAN entries := what the cluster watch read (its first full
        read after a start or a break: entries of hosts gone meanwhile go too)."""
        cluster, overlay = self._cluster_mode()
        with self.ctx.store.reading() as tx:
            networks = [n for n in tx.list_networks() if n.cluster]
        for n in networks:
            try:
                overlay.set_peers(vxlan_name(self.ctx.prefix, n.vni), n.bridge,
                                  self._remote(n, cluster.remote_peers(n.cluster)))
            except PybridgeError as e:
                log.warning("cluster network %s: %s", n.cluster, e)
        self._filter_vxlan()

    def cluster_holdings(self) -> list:
        """What this host holds of each cluster network, from the state store (the cluster
        service writes it to etcd again whenever etcd lost it)."""
        out = []
        with self.ctx.store.reading() as tx:
            pools = [p for p in tx.list_pools() if p.cluster]
            for n in tx.list_networks():
                if not n.cluster:
                    continue
                aux = {int(a.ip) for s in n.subnets for _, a in s.aux}
                record = NetRecord(tuple(sorted((str(s.pool), str(s.gateway.ip) if s.gateway else "")
                                                for s in n.subnets)), n.vni, n.mac, n.mtu or 1500,
                                   tuple(sorted(str(ipaddress.ip_address(a)) for a in aux)))
                # the gateway's and aux addresses are the network's (in etcd with its record)
                addresses = tuple((a, kind) for p in pools if p.cluster == n.cluster
                                  for _, a, kind in tx.list_leases(p.id) if kind != "gateway" and a not in aux)
                endpoints = tuple((e.id, EndpointRecord.of(e)) for e in tx.list_endpoints(n.id))
                names = tuple(self.ctx.dns.local_names(n.id)) if self.ctx.dns is not None else ()
                out.append(LocalNetwork(n.cluster, record, addresses, endpoints, names))
        return out

    def remote_peers_changed(self, cluster: str, peers: dict) -> None:
        """The cluster watch's report of the other hosts' containers on cluster network `cluster`."""
        _, overlay = self._cluster_mode()
        with self.ctx.store.reading() as tx:
            networks = [n for n in tx.list_networks() if n.cluster == cluster]
        for n in networks:
            try:
                overlay.set_peers(vxlan_name(self.ctx.prefix, n.vni), n.bridge, self._remote(n, peers))
            except PybridgeError as e:
                log.warning("cluster network %s: %s", n.cluster, e)
        self._filter_vxlan()

    def address_clash(self, cluster: str, address: int) -> None:
        """Another host holds the address of a container here on cluster network `cluster`:
        the container's link goes down (no duplicate on the wire)."""
        ip = ipaddress.ip_address(address)
        with self.ctx.store.reading() as tx:
            ids = {n.id for n in tx.list_networks() if n.cluster == cluster}
            endpoints = [e for e in tx.list_endpoints() if e.network_id in ids
                         and ip in {a.ip for a in (e.address4, e.address6) if a is not None}]
        for e in endpoints:
            self.ctx.netlink.set_link_up(e.host_ifname, False)

    def _remote(self, network: Network, peers: dict) -> dict:
        """The other hosts' containers, but never one with the MAC of the gateway or of a
        container here: a remote record does not take over a local entry."""
        with self.ctx.store.reading() as tx:
            local = {e.mac for e in tx.list_endpoints(network.id)} | {network.mac}
        clash = sorted(m for m in peers if m in local)
        if clash:
            log.warning("cluster network %s: ignoring other hosts' records of %s: the MAC is %s here",
                        network.cluster, ", ".join(f"{m} (host {peers[m][0]})" for m in clash),
                        "the gateway's or a container's")
        return {m: p for m, p in peers.items() if m not in local}

    def _filter_vxlan(self) -> None:
        """A cluster network's VXLAN (its VNI) is taken only from the hosts that have containers
        on it (the firewall drops the rest: anyone else could put frames on our bridges)."""
        ctx = self.ctx
        cluster, _ = self._cluster_mode()
        with ctx.store.transaction() as tx:
            networks = [n for n in tx.list_networks() if n.cluster]
            if cluster.loaded:
                members = sorted({(n.vni, host) for n in networks
                                  for host, _ in cluster.remote_peers(n.cluster).values()})
            else:       # etcd not read yet: the last members known, never everyone
                vnis = {n.vni for n in networks}
                members = sorted(m for m in tx.vxlan_members() if m[0] in vnis)
            want = (ctx.vxlan_port if networks else 0, tuple(members))
            if want != self._vxlan_filter:
                ctx.change_firewall(tx, ctx.firewall.set_vxlan_members, *want)
                tx.set_vxlan_members(members)
                self._vxlan_filter = want

    def restore_vxlan_filter(self) -> None:
        """At start, before etcd is read: the VXLAN filter as it was (fails closed)."""
        if self.ctx.cluster is not None:
            self._filter_vxlan()

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

    def _undo_create(self, network: Network, created: bool, touched: bool, joined: bool = False) -> None:
        if joined:
            self._cluster_mode()[0].leave_network(network.cluster)
        if not touched:
            return
        errors = []
        try:
            if network.cluster:
                self.ctx.netlink.delete_link(vxlan_name(self.ctx.prefix, network.vni))
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
        network = None
        with self._cluster_change(network_id):
            with ctx.store.transaction() as tx:
                try:
                    network = tx.get_network(network_id)
                except CorruptState as e:
                    self._forget_unreadable(tx, network_id, e, errors)
                else:
                    if network is None:
                        return
                    self._teardown(tx, network, errors)
            if network is not None and network.cluster and ctx.cluster is not None:
                ctx.cluster.leave_network(network.cluster)      # outside the store's lock: etcd may be slow
        if network is not None and network.cluster and ctx.cluster is not None:
            self._filter_vxlan()
        ctx.networks_changed()
        if errors:
            raise KernelError(f"network {network_id[:12]} removed with errors: " + "; ".join(errors))
        log.info("network %s deleted", network_id[:12])

    def _cluster_change(self, network_id: str):
        """A cluster network leaves the store and etcd as one step for the cluster's resync
        (ClusterService.changing); other networks never wait for it."""
        if self.ctx.cluster is None:
            return nullcontext()
        try:
            with self.ctx.store.reading() as tx:
                network = tx.get_network(network_id)
        except CorruptState:
            network = None
        return self.ctx.cluster.changing() if network is not None and network.cluster else nullcontext()

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
        if network.cluster:
            collect(errors, ctx.netlink.delete_link, vxlan_name(ctx.prefix, network.vni))
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
