"""The ports the use cases (plugin/driver) need from the services beside them: the DNS, the
cluster and the veth reaper. Each is a Protocol: the driver depends on these, never on
plugin.dns or plugin.cluster, and tests/unit/test_interfaces.py checks that the real services
have every member with the same parameters (as it does for the kernel adapters' ports)."""

from __future__ import annotations

from typing import ContextManager, Iterable, Protocol

from ..cluster.records import EndpointRecord, NetRecord
from ..domain.model import ContainerInfo
from ..store.db import Tx

Peers = dict[str, tuple[str, frozenset[str]]]      # mac -> (host, addresses)


class DnsPort(Protocol):
    """The per-network DNS: which networks it serves (reconcile), what it learned from Docker."""

    host_suffix: str                                # NAME.NETWORK.<this> on the host; "" none

    def reconcile(self) -> None: ...
    def learned_view(self) -> dict[str, tuple[str, list[ContainerInfo]]]: ...
    def local_names(self, network_id: str) -> list[ContainerInfo]: ...
    def forget(self, network_id: str, tx: Tx) -> None: ...
    def stop(self) -> None: ...


class ClusterPort(Protocol):
    """This host's part in a cluster of hosts sharing etcd (plugin.cluster.service)."""

    def changing(self) -> ContextManager[None]: ...
    def join_network(self, name: str, subnets: list[tuple[str, str]], mtu: int,
                     aux: tuple[str, ...] = ()) -> NetRecord: ...
    def leave_network(self, name: str) -> None: ...
    def publish_endpoint(self, name: str, endpoint_id: str, record: EndpointRecord) -> None: ...
    def withdraw_endpoint(self, name: str, endpoint_id: str) -> None: ...
    def remote_peers(self, name: str) -> Peers: ...
    def remote_names(self, name: str) -> list[ContainerInfo]: ...
    def snapshot(self) -> dict: ...
    def start(self) -> None: ...

    @property
    def loaded(self) -> bool:
        """Whether etcd was read once (until then the remote view is empty, not 'nobody')."""
        ...

    @property
    def refused(self) -> int:
        """Records from etcd refused as not pybridge's, since start."""
        ...


class ReaperPort(Protocol):
    """Deletes veths off the plugin call's path (or at once, in tests)."""

    def delete(self, names: Iterable[str]) -> None: ...


class Lifecycle:
    """Whether this plugin instance has been uninstalled: the HTTP layer then refuses calls,
    and nothing is written to the firewall any more (the watchdog would put the table back)."""

    def __init__(self) -> None:
        self.retired = False

    def retire(self) -> None:
        self.retired = True
