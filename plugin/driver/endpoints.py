"""EndpointService: CreateEndpoint, Join, Leave, DeleteEndpoint, EndpointOperInfo.

The driver makes the veth pair in the host namespace with the host end on the bridge; libnetwork
moves the other end into the container and configures it from Join's answer.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from ..domain.errors import KernelError, NotFound
from ..domain.model import Endpoint, Network
from ..domain.naming import veth_names
from ..domain.options import endpoint_from_request
from ..domain.ports import EPHEMERAL, PortBinding, PortRequest, assign, parse_portmap, split_routed
from ..kernel.interfaces import NetlinkPort, SysctlPort
from ..store.db import Store, Tx
from .firewall import FirewallWriter, collect
from .locks import KeyedLocks
from .ports import Lifecycle, NetworkHooks, ReaperPort

log = logging.getLogger(__name__)


class EndpointService:
    def __init__(
        self,
        store: Store,
        netlink: NetlinkPort,
        sysctl: SysctlPort,
        firewall: FirewallWriter,
        hooks: NetworkHooks,
        reaper: ReaperPort,
        lifecycle: Lifecycle,
        prefix: str,
    ):
        self.store = store
        self.netlink = netlink
        self.sysctl = sysctl
        self.firewall = firewall
        self.hooks = hooks  # cluster mode's steps (LocalOnly: none)
        self.reaper = reaper  # deferred veth deletion
        self.lifecycle = lifecycle  # .exposed: our table is damaged (see restore.Doctor)
        self.prefix = prefix
        self.locks = KeyedLocks()

    def create(self, network_id: str, endpoint_id: str, *, address: str, address6: str, mac: str) -> dict:
        """The veth pair is made outside the store's lock (under this endpoint's own), so that
        endpoints of any network are made side by side; the record is written after it, in a
        transaction that checks the network is still there, and a failure removes the pair."""
        with self.locks.hold(endpoint_id):
            with self.store.reading() as tx:
                network = tx.networks.get(network_id)
                if network is None:
                    raise NotFound(f"network {network_id[:12]} is not known to pybridge")
                endpoint, chose_mac = endpoint_from_request(
                    network, endpoint_id, address=address, address6=address6, mac=mac, prefix=self.prefix
                )
                existing = tx.networks.get_endpoint(endpoint_id)
            if existing is not None:  # a retried call: answer as the first time
                endpoint = existing
            else:
                self.netlink.create_veth(
                    endpoint.host_ifname, endpoint.container_ifname, network.bridge, network.mtu, endpoint.mac
                )
                with self.hooks.changing(network):  # (cluster: published and recorded as one step)
                    try:
                        self.hooks.endpoint_created(network, endpoint)
                        with self.store.transaction() as tx:
                            if tx.networks.get(network_id) != network:
                                raise NotFound(f"network {network_id[:12]} went away while its endpoint was made")
                            tx.networks.put_endpoint(endpoint)
                    except Exception:
                        self.netlink.delete_link(endpoint.host_ifname)
                        self.hooks.endpoint_deleted(network, endpoint_id)
                        raise
        log.info("endpoint %s created on network %s", endpoint_id[:12], network_id[:12])
        return {"Interface": {"MacAddress": endpoint.mac}} if chose_mac else {"Interface": {}}

    def join(self, network_id: str, endpoint_id: str, sandbox_key: str) -> dict:
        with self.store.transaction() as tx:
            endpoint = tx.networks.get_endpoint(endpoint_id)
            network = tx.networks.get(network_id)
            if endpoint is None or network is None or endpoint.network_id != network_id:
                raise NotFound(f"endpoint {endpoint_id[:12]} of network {network_id[:12]} is not known to pybridge")
            if endpoint.sandbox_key != sandbox_key:
                tx.networks.put_endpoint(replace(endpoint, sandbox_key=sandbox_key))
        resp: dict = {"InterfaceName": {"SrcName": endpoint.container_ifname, "DstPrefix": "eth"}, "StaticRoutes": []}
        if network.internal:
            resp["DisableGatewayService"] = True
            return resp
        gw4, gw6 = network.gateway(4), network.gateway(6)
        if gw4 is not None and endpoint.address4 is not None:
            resp["Gateway"] = str(gw4.ip)
        if gw6 is not None and endpoint.address6 is not None:
            resp["GatewayIPv6"] = str(gw6.ip)
        return resp

    def program(self, network_id: str, endpoint_id: str, portmap: list, ipv6: bool = True) -> None:
        """Publish the container's ports (ProgramExternalConnectivity): all or nothing. dockerd
        29 calls it again whenever the container's gateway endpoints change (the same ports:
        nothing to do); ipv6=False when another endpoint is the container's IPv6 gateway."""
        with self.store.transaction() as tx:
            endpoint, network = tx.networks.get_endpoint(endpoint_id), tx.networks.get(network_id)
            if endpoint is None or network is None:
                raise NotFound(f"endpoint {endpoint_id[:12]} of network {network_id[:12]} is not known to pybridge")
            requests = parse_portmap(portmap, network.host_binding_ipv4)
            if network.internal:
                requests = []
            families = {v for v, a in ((4, endpoint.address4), (6, endpoint.address6)) if a is not None}
            if not ipv6 and endpoint.address6 is not None:  # IPv4 only, "either" included
                families.discard(6)
                requests = [replace(r, family=r.family or 4) for r in requests]
            requests = [r for r in requests if r.family == 0 or r.family in families]
            requests, direct = split_routed(requests, families, network.routed)
            bindings = tuple(
                assign(
                    requests,
                    lambda proto, port: tx.networks.bindings_on(proto, port, but=endpoint_id),
                    self._pick_from(tx, endpoint),
                )
            )
            bindings += tuple(direct)
            if bindings == endpoint.ports:
                return
            self._advance(tx, requests, bindings)  # the requests' own bindings come first
            if bindings and not self.lifecycle.exposed:  # (while our table is damaged: when it is back)
                self.sysctl.ensure("1", "net", "ipv4", "conf", network.bridge, "route_localnet")
            updated = replace(endpoint, ports=bindings)
            tx.networks.put_endpoint(updated)
            self.firewall.change(tx, self.firewall.port.change_ports, network, endpoint, updated)
        if bindings:  # (a failure fails the start: dockerd revokes, and the ports go)
            self.netlink.set_hairpin(endpoint.host_ifname)
        log.info("endpoint %s publishes %s", endpoint_id[:12], ", ".join(map(str, bindings)))

    @staticmethod
    def _pick_from(tx: Tx, endpoint: Endpoint) -> dict[str, int]:
        """Where free host ports are looked for: after the last one picked (so that the ports
        picked before are not probed again), or, for a container programmed again, from its own
        (so that it gets the same ones)."""
        own: dict[str, int] = {}
        for b in endpoint.ports:
            if EPHEMERAL[0] <= b.host_port <= EPHEMERAL[1]:
                own[b.proto] = min(b.host_port, own.get(b.proto, b.host_port))
        return {**tx.meta.port_cursors(), **own}

    @staticmethod
    def _advance(tx: Tx, requests: list[PortRequest], bindings: tuple[PortBinding, ...]) -> None:
        picked: dict[str, int] = {}
        for r, b in zip(requests, bindings):
            if not r.host_port:
                picked[b.proto] = max(picked.get(b.proto, 0), b.host_port)
        if picked:
            cursors = tx.meta.port_cursors()
            for proto, port in picked.items():
                cursors[proto] = port + 1 if port < EPHEMERAL[1] else EPHEMERAL[0]
            tx.meta.set_port_cursors(cursors)

    def revoke(self, network_id: str, endpoint_id: str) -> None:
        """Withdraw the container's published ports (idempotent)."""
        with self.store.transaction() as tx:
            endpoint = tx.networks.get_endpoint(endpoint_id)
            if endpoint is None or not endpoint.ports:
                return
            network = tx.networks.get(endpoint.network_id)
            updated = replace(endpoint, ports=())
            tx.networks.put_endpoint(updated)
            if network is not None:
                self.firewall.change(tx, self.firewall.port.change_ports, network, endpoint, updated)

    def leave(self, network_id: str, endpoint_id: str) -> None:
        """libnetwork moves the interface back and DeleteEndpoint removes it; ports are withdrawn
        here too, for when no RevokeExternalConnectivity comes (live-restored containers)."""
        self.revoke(network_id, endpoint_id)

    def delete(self, network_id: str, endpoint_id: str) -> None:
        errors: list[str] = []
        network: Network | None = None
        with self.hooks.changing(network_id):  # (cluster: withdrawn and forgotten as one step)
            with self.store.transaction() as tx:
                endpoint = tx.networks.get_endpoint(endpoint_id)
                names = (
                    (endpoint.host_ifname, endpoint.container_ifname)
                    if endpoint
                    else veth_names(self.prefix, endpoint_id)
                )
                collect(errors, self.reaper.delete, names)
                if endpoint is not None:
                    tx.networks.delete_endpoint(endpoint_id)
                    network = tx.networks.get(endpoint.network_id)
                    if network is not None and endpoint.ports:
                        collect(
                            errors, self.firewall.change, tx, self.firewall.port.change_ports, network, endpoint, None
                        )
            if network is not None:
                self.hooks.endpoint_deleted(network, endpoint_id)
        if errors:
            raise KernelError(f"endpoint {endpoint_id[:12]} removed with errors: " + "; ".join(errors))
        if endpoint is not None:
            log.info("endpoint %s deleted", endpoint_id[:12])

    def oper_info(self, network_id: str, endpoint_id: str) -> dict:
        with self.store.reading() as tx:
            endpoint = tx.networks.get_endpoint(endpoint_id)
        if endpoint is None:
            return {"Value": {}}
        value = {"pybridge.veth": endpoint.host_ifname, "pybridge.mac": endpoint.mac}
        if endpoint.address4:
            value["pybridge.ipv4"] = str(endpoint.address4)
        if endpoint.address6:
            value["pybridge.ipv6"] = str(endpoint.address6)
        return {"Value": value}
