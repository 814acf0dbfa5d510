"""DnsService: which networks the DNS serves (from the state store) and what it answers (from
Docker, through the container inventory, plugin/docker). What the inventory learned is
persisted, so after a plugin restart the DNS answers at once, before dockerd's API is back."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from ..docker.inventory import ContainerInventory, Learned
from ..domain.errors import PybridgeError
from ..domain.model import Network
from ..domain.naming import DEFAULT_HOST_SUFFIX, host_domain
from ..domain.options import OPT_DNS_LOG, OPT_DNS_UPSTREAM, parse_bool, parse_upstreams
from ..kernel.interfaces import HostDnsPort
from ..store.db import Store
from .records import build
from .server import DnsServer, NetSpec

log = logging.getLogger(__name__)


# systemd-resolved's stub listeners: asking them forwards to resolved, which routes the host
# suffix back to pybridge (a loop, and a path from one network to another's names)
RESOLVED_STUBS = ("127.0.0.53", "127.0.0.54")


def host_resolvers(
    path: str = "/etc/resolv.conf", resolved: Callable[[], tuple[str, ...]] | None = None
) -> tuple[tuple[str, int], ...]:
    """The host's DNS servers, as upstreams: resolv.conf's nameservers, but never resolved's stub:
    where it is named, resolved's own servers (`resolved`, read over D-Bus; Docker reads them from
    /run/systemd/resolve/resolv.conf) stand for it, or none when they are not known."""
    out: list[str] = []
    stub = False
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 2 or parts[0] != "nameserver" or parts[1] == "127.0.0.11":
                    continue
                if parts[1] in RESOLVED_STUBS:
                    stub = True
                elif "%" not in parts[1]:  # a scoped (link-local) resolver needs its scope ID
                    out.append(parts[1])
    except OSError:
        return ()
    if stub and resolved is not None:
        out += [a for a in resolved() if a not in RESOLVED_STUBS and a not in out]
    try:
        return parse_upstreams("nameserver", ",".join(f"[{a}]" if ":" in a else a for a in out))
    except PybridgeError:
        return ()


class DnsService:
    """Locks: the store's lock is always taken before this service's own, which guards _remote
    (the cluster watch writes it)."""

    def __init__(
        self,
        store: Store,
        server: DnsServer,
        default_upstream: str = "resolv.conf",
        host: HostDnsPort | None = None,
        host_suffix: str = DEFAULT_HOST_SUFFIX,
        inventory: ContainerInventory | None = None,
    ):
        self.store = store
        self.server = server
        self.host = host  # the host's resolver, told each named network's DNS
        self.host_suffix = host_suffix  # NAME.NETWORK.<suffix> on the host; "" for none
        self.default_upstream = default_upstream
        # Docker's names of the networks and their containers (made here when none is given)
        self.inventory = inventory if inventory is not None else ContainerInventory(store)
        self.inventory.subscribe(self._containers_changed)
        self._lock = threading.RLock()
        self._remote: dict = {}  # cluster network -> [ContainerInfo] on the other hosts

    def _with_remote(self, network, containers) -> list:
        if not network.cluster:
            return containers
        with self._lock:
            return list(containers) + list(self._remote.get(network.cluster, ()))

    def set_remote(self, cluster: str, containers) -> None:
        """The other hosts' containers on cluster network `cluster` (from the cluster watch)."""
        with self._lock:
            self._remote[cluster] = list(containers)
        with self.store.reading() as tx:
            networks = [n for n in tx.networks.all() if n.cluster == cluster]
        learned = self._known()
        for n in networks:
            name, containers = learned.get(n.id, (n.id[:12], []))
            self.server.set_snapshot(n.id, self._snapshot(n, name, containers))

    def _snapshot(self, network, name: str, containers):
        return build(
            name,
            self._with_remote(network, containers),
            [str(g.ip) for g in network.gateways()],
            host_domain=host_domain(name, self.host_suffix) or "",
        )

    def _default_upstreams(self):
        if self.default_upstream == "resolv.conf":
            return host_resolvers(resolved=self.host.servers if self.host is not None else None)
        return parse_upstreams("PYBRIDGE_DNS_UPSTREAM", self.default_upstream)

    def _known(self) -> Learned:
        return self.inventory.view()

    def reconcile(self) -> None:
        """Listeners for exactly the recorded networks; snapshots rebuilt from what we know."""
        with self.store.reading() as tx:
            networks = tx.networks.all()
        learned = self._known()
        specs = {}
        for n in networks:
            opts = dict(n.options)
            name = learned.get(n.id, (n.id[:12], []))[0]
            upstreams = (
                parse_upstreams(OPT_DNS_UPSTREAM, opts[OPT_DNS_UPSTREAM])
                if opts.get(OPT_DNS_UPSTREAM)
                else self._default_upstreams()
            )
            specs[n.id] = NetSpec(
                name=name,
                gateways=tuple(str(g.ip) for g in n.gateways()),
                bridge=n.bridge,
                subnets=tuple(str(p) for p in n.pools()),
                upstreams=upstreams,
                forward=not n.internal and bool(upstreams),
                log_queries=parse_bool(OPT_DNS_LOG, opts.get(OPT_DNS_LOG, "false")),
                host_suffix=self.host_suffix,
                host_domain=(host_domain(name, self.host_suffix) or "") if n.id in learned else "",
            )
        self.server.configure(specs)
        if self.host is not None:
            # container names from the host: NAME.NETWORK.SUFFIX routed to the network's DNS
            self.host.publish(
                {s.bridge: (s.gateways, s.host_domain) for s in specs.values() if s.gateways and s.host_domain}
            )
        for n in networks:
            name, containers = learned.get(n.id, (n.id[:12], []))
            self.server.set_snapshot(n.id, self._snapshot(n, name, containers))

    def _containers_changed(self, updated: Learned, networks: dict[str, Network]) -> None:
        """The inventory's report: these networks' containers (or Docker name) changed."""
        for nid, (name, containers) in updated.items():
            self.server.set_snapshot(nid, self._snapshot(networks[nid], name, containers))
        if any(self.server.spec_name(nid) not in (None, name) for nid, (name, _) in updated.items()):
            self.reconcile()  # the network's name is now known (or changed): relabel its server

    def stop(self) -> None:
        """No more answers (uninstall)."""
        self.server.stop()

    def find(self, ref: str) -> str | None:
        """A network ID from an ID, an ID prefix or a network name."""
        for nid, (name, _) in self._known().items():
            if ref in (nid, name):
                return nid
        with self.store.reading() as tx:
            ids = [n.id for n in tx.networks.all() if n.id.startswith(ref)]
        return ids[0] if len(ids) == 1 else None

    def overview(self) -> dict:
        learned = self._known()
        return {
            nid: {"name": learned.get(nid, (nid[:12], []))[0], "gateways": gws}
            for nid, gws in self.server.listening().items()
        }
