"""Cluster mode's part in the local use cases: the NetworkHooks (plugin.driver.ports) the
network and endpoint services call, and what the cluster watch reports back.

- join/leave: the cluster's record of a network (made by the first host) gives its VNI,
  gateway MAC and MTU; the last host to leave removes it.
- attach/detach: the network's VXLAN device on its bridge, with the other hosts' containers
  programmed on it (never over a local MAC).
- changed: the VXLAN filter, so that a network's VNI is taken only from the hosts that have
  containers on it.
- endpoint_created/deleted: the endpoint's record in etcd, for the other hosts.

Everything here turns domain objects into cluster records itself: the driver knows nothing of
etcd or VXLAN.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from contextlib import nullcontext
from dataclasses import replace
from typing import Any, Callable, ContextManager

from ..domain.errors import CorruptState, InvalidRequest, KernelError, PybridgeError
from ..ipam.allocator import usable_range
from ..domain.model import ContainerInfo, Endpoint, Network
from ..domain.naming import vxlan_name
from ..driver.firewall import FirewallWriter
from ..kernel.interfaces import NetlinkPort, OverlayPort
from ..store.db import Store, Tx
from .records import EndpointRecord, NetRecord
from .service import ClusterService, LocalNetwork
from .tunnel import Plain, UnderlayPath
from .watch import Peers

log = logging.getLogger(__name__)

VXLAN_OVERHEAD = {4: 50, 6: 70}  # outer IP, UDP, VXLAN and Ethernet headers


class ClusterNetworks:
    def __init__(
        self,
        cluster: ClusterService,
        overlay: OverlayPort,
        netlink: NetlinkPort,
        store: Store,
        firewall: FirewallWriter,
        prefix: str,
        underlay: str,
        vxlan_port: int,
        local_names: Callable[[str], list[ContainerInfo]] = lambda network_id: [],
        path: UnderlayPath | None = None,
    ):
        self.cluster = cluster
        self.overlay = overlay
        self.netlink = netlink
        self.store = store
        self.firewall = firewall
        self.prefix = prefix
        self.underlay = underlay  # this host's underlay address
        self.path: UnderlayPath = path or Plain(underlay)  # VXLAN's addresses: the underlay's, or WireGuard's
        self.vxlan_port = vxlan_port
        self.local_names = local_names  # Docker's names of this host's containers, by network id
        self._vxlan_filter: tuple[Any, ...] = (0, ())  # what the firewall was last told
        # per VXLAN device, the entries last programmed on it: a change of the others'
        # containers programs only what differs (reading thousands of entries back from the
        # kernel on every change was the cost). Set whole (and read back) at attach, on the
        # watch's first read, and after a failure
        self._programmed: dict[str, Peers] = {}
        self._programming = threading.Lock()

    def names_changed(self, updated: dict[str, tuple[str, list[ContainerInfo]]], networks: dict[str, Network]) -> None:
        """The container inventory's report: this host's names on a cluster network, for the
        other hosts' DNS."""
        for nid, (_, containers) in updated.items():
            if networks[nid].cluster:
                self.cluster.publish_names(networks[nid].cluster, containers)

    def listen(self) -> None:
        """The cluster service reports to these from now on."""
        self.cluster.local = self.holdings
        self.cluster.on_endpoints = self.remote_peers_changed
        self.cluster.on_clash = self.address_clash
        self.cluster.watch.on_loaded = self.program_all_peers

    # --- NetworkHooks
    def changing(self, network: Network | str) -> ContextManager[None]:
        """A cluster network's changes are one step in etcd and in the store for the cluster's
        resync (ClusterService.changing); other networks never wait for it. `network`: the
        network, or the id of a recorded one."""
        if isinstance(network, str):
            try:
                with self.store.reading() as tx:
                    found = tx.networks.get(network)
            except CorruptState:
                found = None
            return self.changing(found) if found is not None else nullcontext()
        return self.cluster.changing() if network.cluster else nullcontext()

    def join(self, network: Network) -> Network:
        """The cluster's record of the network (made now by the first host): VNI, gateway MAC
        and MTU come from it, so they are the same on every host."""
        if not network.cluster:
            return network
        if not network.subnets:
            raise InvalidRequest("a cluster network needs a subnet")
        under = self.overlay.underlay(self.underlay)
        if under is None:
            raise KernelError(f"no link of this host holds the underlay address {self.underlay}")
        overhead = VXLAN_OVERHEAD[6 if ":" in self.path.local else 4]
        ceiling = under[1] - overhead - self.path.overhead
        if network.mtu is not None and network.mtu > ceiling:
            tunnel = f" and WireGuard {self.path.overhead}" if self.path.overhead else ""
            raise InvalidRequest(
                f"MTU {network.mtu} does not fit the underlay: {under[0]} has MTU {under[1]}, "
                f"VXLAN takes {overhead}{tunnel}, so at most {ceiling}"
            )
        subnets = [(str(s.pool), str(s.gateway.ip) if s.gateway else "") for s in network.subnets]
        aux = tuple(str(a.ip) for s in network.subnets for _, a in s.aux)
        record = self.cluster.join_network(network.cluster, subnets, min(network.mtu or 1500, ceiling), aux)
        if record.mtu > ceiling:
            log.warning(
                "cluster network %s: MTU %d is above this host's ceiling %d", network.cluster, record.mtu, ceiling
            )
        return replace(network, vni=record.vni, mac=record.mac, mtu=record.mtu)

    def leave(self, network: Network) -> None:
        if network.cluster:
            self.cluster.leave_network(network.cluster)

    def links(self, network: Network) -> tuple[str, ...]:
        return (vxlan_name(self.prefix, network.vni),) if network.cluster else ()

    def attach(self, network: Network) -> None:
        """The VXLAN device on the bridge, with the remote entries known."""
        if not network.cluster:
            return
        name = vxlan_name(self.prefix, network.vni)
        self.overlay.ensure_vxlan(
            name, network.vni, self.path.local, self.vxlan_port, network.mtu or 1500, network.bridge
        )
        if self.cluster.loaded:
            self._program(name, network.bridge, self._remote(network, self.cluster.remote_peers(network.cluster)))
        # else: entries already there stay (a restart with etcd away); the first read programs it

    def detach(self, network: Network) -> None:
        for name in self.links(network):
            with self._programming:
                self._programmed.pop(name, None)
            self.netlink.delete_link(name)

    def _program(self, name: str, bridge: str, peers: Peers, whole: bool = True) -> None:
        """The device's entries := `peers`: only what differs from what was last programmed,
        unless `whole` (or nothing is known of it: then read back from the kernel and set)."""
        with self._programming:
            before = None if whole else self._programmed.pop(name, None)
            if before is None:
                self.overlay.set_peers(name, bridge, peers)
            else:
                changed = {m: v for m, v in peers.items() if before.get(m) != v}
                gone = [m for m in before if m not in peers]
                if changed or gone:
                    have = {m: before[m] for m in (*changed, *gone) if m in before}
                    self.overlay.update_peers(name, bridge, changed, have)
            self._programmed[name] = dict(peers)  # (left out when a call failed: set whole next)

    def changed(self, network: Network | None) -> None:
        if network is None or network.cluster:
            self._filter_vxlan()
        if network is not None and network.cluster:
            self._prime(network)

    def _prime(self, network: Network) -> None:
        """A cluster network made here: its pools' reserves are filled before its first
        container (not for a network just removed)."""
        with self.store.reading() as tx:
            if tx.networks.get(network.id) is None:
                return
            pools = [p for p in tx.leases.pools() if p.cluster == network.cluster]
        for pool in pools:
            self.cluster.prime(network.cluster, *usable_range(pool.subnet, pool.ip_range))

    def endpoint_created(self, network: Network, endpoint: Endpoint) -> None:
        """The other hosts learn the endpoint's MAC and addresses (and program their VXLAN
        devices) from the record this writes in etcd."""
        if network.cluster:
            self.cluster.publish_endpoint(network.cluster, endpoint.id, EndpointRecord.of(endpoint))

    def endpoint_deleted(self, network: Network, endpoint_id: str) -> None:
        if network.cluster:
            self.cluster.withdraw_endpoint(network.cluster, endpoint_id)

    # --- what the cluster reports
    def program_all_peers(self) -> None:
        """Every cluster network's VXLAN entries := what the cluster watch read (its first full
        read after a start or a break: entries of hosts gone meanwhile go too)."""
        with self.store.reading() as tx:
            networks = [n for n in tx.networks.all() if n.cluster]
        for n in networks:
            try:
                self._program(
                    vxlan_name(self.prefix, n.vni), n.bridge, self._remote(n, self.cluster.remote_peers(n.cluster))
                )
            except PybridgeError as e:
                log.warning("cluster network %s: %s", n.cluster, e)
        self._filter_vxlan()

    def holdings(self) -> list[LocalNetwork]:
        """What this host holds of each cluster network, from the state store (the cluster
        service writes it to etcd again whenever etcd lost it)."""
        out = []
        with self.store.reading() as tx:
            pools = [p for p in tx.leases.pools() if p.cluster]
            for n in tx.networks.all():
                if not n.cluster:
                    continue
                aux = {int(a.ip) for s in n.subnets for _, a in s.aux}
                record = NetRecord(
                    tuple(sorted((str(s.pool), str(s.gateway.ip) if s.gateway else "") for s in n.subnets)),
                    n.vni,
                    n.mac,
                    n.mtu or 1500,
                    tuple(sorted(str(ipaddress.ip_address(a)) for a in aux)),
                )
                # the gateway's and aux addresses are the network's (in etcd with its record)
                addresses = tuple(
                    (a, kind)
                    for p in pools
                    if p.cluster == n.cluster
                    for _, a, kind in tx.leases.all(p.id)
                    if kind != "gateway" and a not in aux
                )
                endpoints = tuple((e.id, EndpointRecord.of(e)) for e in tx.networks.endpoints(n.id))
                out.append(LocalNetwork(n.cluster, record, addresses, endpoints, tuple(self.local_names(n.id))))
        return out

    def remote_peers_changed(self, cluster: str, peers: Peers) -> None:
        """The cluster watch's report of the other hosts' containers on cluster network `cluster`."""
        with self.store.reading() as tx:
            networks = [n for n in tx.networks.all() if n.cluster == cluster]
        for n in networks:
            try:
                self._program(vxlan_name(self.prefix, n.vni), n.bridge, self._remote(n, peers), whole=False)
            except PybridgeError as e:
                log.warning("cluster network %s: %s", n.cluster, e)
        self._filter_vxlan()

    def address_clash(self, cluster: str, address: int) -> None:
        """Another host holds the address of a container here on cluster network `cluster`:
        the container's link goes down (no duplicate on the wire)."""
        ip = ipaddress.ip_address(address)
        with self.store.reading() as tx:
            ids = {n.id for n in tx.networks.all() if n.cluster == cluster}
            endpoints = [
                e
                for e in tx.networks.endpoints()
                if e.network_id in ids and ip in {a.ip for a in (e.address4, e.address6) if a is not None}
            ]
        for e in endpoints:
            self.netlink.set_link_up(e.host_ifname, False)

    def _remote(self, network: Network, peers: Peers) -> Peers:
        """The other hosts' containers, but never one with the MAC of the gateway or of a
        container here: a remote record does not take over a local entry."""
        with self.store.reading() as tx:
            local = {e.mac for e in tx.networks.endpoints(network.id)} | {network.mac}
        clash = sorted(m for m in peers if m in local)
        if clash:
            log.warning(
                "cluster network %s: ignoring other hosts' records of %s: the MAC is %s here",
                network.cluster,
                ", ".join(f"{m} (host {peers[m][0]})" for m in clash),
                "the gateway's or a container's",
            )
        return {m: (self.path.remote(host), ips) for m, (host, ips) in peers.items() if m not in local}

    def _filter_vxlan(self) -> None:
        """A cluster network's VXLAN (its VNI) is taken only from the hosts that have containers
        on it (the firewall drops the rest: anyone else could put frames on our bridges). Looked
        at under a read (the watch asks after every change of the others' containers, and the
        members seldom change); written in a transaction only when they did."""
        with self.store.reading() as tx:
            if self._vxlan_members(tx)[0] == self._vxlan_filter:
                return
        with self.store.transaction() as tx:
            want, members = self._vxlan_members(tx)
            if want != self._vxlan_filter:
                self.firewall.change(tx, self.firewall.port.set_vxlan_members, *want, self.path.link)
                tx.meta.set_vxlan_members(members)
                self._vxlan_filter = want

    def _vxlan_members(self, tx: Tx) -> tuple[tuple[Any, ...], list[tuple[int, str]]]:
        """What the firewall should be told: (port, ((vni, remote address), ...)), and the
        members (vni, host) to remember."""
        networks = [n for n in tx.networks.all() if n.cluster]
        if self.cluster.loaded:
            members = sorted(
                {(n.vni, host) for n in networks for host, _ in self.cluster.remote_peers(n.cluster).values()}
            )
        else:  # etcd not read yet: the last members known, never everyone
            vnis = {n.vni for n in networks}
            members = sorted(m for m in tx.meta.vxlan_members() if m[0] in vnis)
        return (self.vxlan_port if networks else 0, tuple((vni, self.path.remote(h)) for vni, h in members)), members
