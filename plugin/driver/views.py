"""What the host command `pybridge` shows: networks and endpoints from the state store, named as
Docker names them (the container inventory, which the event watcher fills whether or not the DNS
runs). Read-only; one store read each, no call to dockerd."""

from __future__ import annotations

from ..domain.naming import DEFAULT_HOST_SUFFIX, host_domain
from ..store.db import Store
from .ports import ClusterView, DnsPort, InventoryPort


def _host_address(binding) -> str:
    """A published port's host side as `docker port` prints it: 0.0.0.0:8080, [::]:8080."""
    return str(binding).rsplit("/", 1)[0]


class Views:
    def __init__(
        self, store: Store, inventory: InventoryPort, dns: DnsPort | None = None, cluster: ClusterView | None = None
    ):
        self.store = store
        self.inventory = inventory
        self.dns = dns  # whether it runs, and its host suffix
        self.cluster_view = cluster

    def _learned(self) -> dict:
        return self.inventory.view()

    def networks(self) -> list[dict]:
        learned = self._learned()
        with self.store.reading() as tx:
            networks, endpoints = tx.networks.all(), tx.networks.endpoints()
        count: dict[str, int] = {}
        for e in endpoints:
            count[e.network_id] = count.get(e.network_id, 0) + 1
        return [
            {
                "id": n.id,
                "name": learned.get(n.id, ("", []))[0],
                "bridge": n.bridge,
                "subnets": [str(p) for p in n.pools()],
                "gateways": [str(g.ip) for g in n.gateways()],
                "internal": n.internal,
                "dns": self.dns is not None and bool(n.gateways()),
                "endpoints": count.get(n.id, 0),
            }
            for n in networks
        ]

    def endpoints(self) -> list[dict]:
        learned = self._learned()
        suffix = getattr(self.dns, "host_suffix", DEFAULT_HOST_SUFFIX)
        with self.store.reading() as tx:
            endpoints = tx.networks.endpoints()
        out = []
        for e in endpoints:
            net_name, containers = learned.get(e.network_id, ("", []))
            addresses = {str(a.ip) for a in (e.address4, e.address6) if a is not None}
            owner = next((c for c in containers if {c.ipv4, c.ipv6} & addresses), None)
            out.append(
                {
                    "id": e.id,
                    "network": e.network_id,
                    "network_name": net_name,
                    "host_domain": host_domain(net_name, suffix) or "",
                    "container": owner.name if owner else "",
                    "container_id": owner.id if owner else "",
                    "ipv4": str(e.address4 or ""),
                    "ipv6": str(e.address6 or ""),
                    "mac": e.mac,
                    "veth": e.host_ifname,
                    "ports": [
                        {
                            "container_port": f"{b.container_port}/{b.proto}",
                            "host": _host_address(b),
                            "family": b.family,
                        }
                        for b in e.ports
                    ],
                }
            )
        return out

    def cluster(self) -> dict:
        """Cluster mode: this host, whether etcd answers, and per cluster network its VNI, bridge,
        local endpoints and the other hosts' containers programmed here."""
        cluster = self.cluster_view
        if cluster is None:
            return {"enabled": False}
        learned = self._learned()
        with self.store.reading() as tx:
            networks = [n for n in tx.networks.all() if n.cluster]
            local = {n.id: len(tx.networks.endpoints(n.id)) for n in networks}
        state = cluster.snapshot()
        out = []
        for n in networks:
            remote = cluster.remote_peers(n.cluster)
            hosts: dict[str, int] = {}
            for host, _ in remote.values():
                hosts[host] = hosts.get(host, 0) + 1
            out.append(
                {
                    "cluster": n.cluster,
                    "name": learned.get(n.id, ("", []))[0],
                    "id": n.id,
                    "vni": n.vni,
                    "bridge": n.bridge,
                    "subnets": [str(p) for p in n.pools()],
                    "mtu": n.mtu,
                    "local_endpoints": local[n.id],
                    "remote_endpoints": len(remote),
                    "remote_hosts": dict(sorted(hosts.items())),
                    "remote_names": len(cluster.remote_names(n.cluster)),
                }
            )
        return {
            "enabled": True,
            "host": state["host"],
            "etcd_reachable": state["reachable"],
            "underlay": state.get("tunnel", {"encrypt": "none"}),
            "resyncs": state["resyncs"],
            "refused_records": state["refused_records"],
            "clashes": state["clashes"],
            "reserve": state.get("reserve", {"hits": 0, "misses": 0, "held": {}}),
            "networks": out,
        }
