"""The ports the use cases (plugin/driver) need from what lies beside them: the DNS, the
container inventory, the veth reaper, the optional steps of cluster mode (NetworkHooks) and the
cluster's status for the host command. Each is a Protocol: the driver depends on these, never on plugin.dns or plugin.cluster,
and tests/unit/test_interfaces.py checks that the real implementations have every member with
the same parameters (as it does for the kernel adapters' ports)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager, Iterable, Protocol

from ..domain.errors import InvalidRequest
from ..domain.model import ContainerInfo, Endpoint, Network
from ..store.db import Tx

Peers = dict[str, tuple[str, frozenset[str]]]  # mac -> (host, addresses)


class DnsPort(Protocol):
    """The per-network DNS: which networks it serves (reconcile)."""

    host_suffix: str  # NAME.NETWORK.<this> on the host; "" none

    def reconcile(self) -> None: ...
    def stop(self) -> None: ...


class InventoryPort(Protocol):
    """What Docker reports of the containers on our networks (plugin.docker.inventory)."""

    def view(self) -> dict[str, tuple[str, list[ContainerInfo]]]:
        """network id -> (Docker's name for it, its containers)."""
        ...

    def forget(self, network_id: str, tx: Tx) -> None: ...


class ReaperPort(Protocol):
    """Deletes veths off the plugin call's path (or at once, in tests)."""

    def delete(self, names: Iterable[str]) -> None: ...


class NetworkHooks(Protocol):
    """The optional steps of the local use cases, which cluster mode fills in
    (plugin.cluster.networks.ClusterNetworks; LocalOnly otherwise). Each takes domain objects and
    decides for itself whether a network concerns it. The use cases call them in this order:

    - create: changing(network) { join -> [store: bridge, attach, record] (on failure: detach, leave) };
      changed(network)
    - delete: changing(id) { [store: teardown, detach]; leave }; changed(network)
    - endpoint create: changing(network) { endpoint_created -> [store: record] (on failure:
      endpoint_deleted) }; endpoint delete: changing(id) { [store]; endpoint_deleted }
    - restore: attach for every network, then changed(None)
    """

    def changing(self, network: Network | str) -> ContextManager[None]:
        """Around a change of the network (or of the recorded network of this id) that must be
        one step with the hooks' own writes."""
        ...

    def join(self, network: Network) -> Network:
        """Before anything is made: the network as the hooks complete it (cluster: VNI, gateway
        MAC and MTU from the cluster's record). Refuses what they cannot serve."""
        ...

    def attach(self, network: Network) -> None:
        """After the bridge is up, in create and restore: the links the hooks put on it."""
        ...

    def links(self, network: Network) -> tuple[str, ...]:
        """The links attach makes for the network (restore and doctor claim them)."""
        ...

    def detach(self, network: Network) -> None: ...
    def leave(self, network: Network) -> None: ...
    def changed(self, network: Network | None) -> None:
        """The set of networks changed: this one was created or deleted (None: all restored)."""
        ...

    def endpoint_created(self, network: Network, endpoint: Endpoint) -> None: ...
    def endpoint_deleted(self, network: Network, endpoint_id: str) -> None: ...


class LocalOnly:
    """NetworkHooks of a host that is in no cluster: nothing to add, and a cluster network is
    refused."""

    def changing(self, network: Network | str) -> ContextManager[None]:
        return nullcontext()

    def join(self, network: Network) -> Network:
        if network.cluster:
            raise InvalidRequest(
                f"{network.cluster!r}: pybridge.cluster needs cluster mode: set the plugin's "
                "PYBRIDGE_CLUSTER_ETCD and PYBRIDGE_CLUSTER_ADDRESS"
            )
        return network

    def attach(self, network: Network) -> None:
        pass

    def links(self, network: Network) -> tuple[str, ...]:
        return ()

    def detach(self, network: Network) -> None:
        pass

    def leave(self, network: Network) -> None:
        pass

    def changed(self, network: Network | None) -> None:
        pass

    def endpoint_created(self, network: Network, endpoint: Endpoint) -> None:
        pass

    def endpoint_deleted(self, network: Network, endpoint_id: str) -> None:
        pass


class ClusterView(Protocol):
    """What the host command and doctor show of the cluster (plugin.cluster.service)."""

    def snapshot(self) -> dict: ...
    def remote_peers(self, name: str) -> Peers: ...
    def remote_names(self, name: str) -> list[ContainerInfo]: ...

    @property
    def refused(self) -> int:
        """Records from etcd refused as not pybridge's, since start."""
        ...


class Lifecycle:
    """This plugin instance's state as the use cases share it: `retired` once uninstalled (the
    HTTP layer then refuses calls, and nothing is written to the firewall any more: the watchdog
    would put the table back); `exposed` while our table (or a chain or set of it) is gone and
    not yet back (what only its raw protections make safe is withheld meanwhile:
    route_localnet, cluster VXLAN devices up; see restore.Doctor)."""

    def __init__(self) -> None:
        self.retired = False
        self.exposed = False

    def retire(self) -> None:
        self.retired = True
