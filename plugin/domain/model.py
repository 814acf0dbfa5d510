"""The records pybridge keeps: networks, endpoints and IPAM pools (their leases are rows of the
store, the logic that hands them out is in ipam/)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Union

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPInterface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


@dataclass(frozen=True)
class Taken:
    """A range that automatic and explicit subnets must not overlap, and why (a host route, a
    pool pybridge holds)."""

    network: IPNetwork
    reason: str


@dataclass(frozen=True)
class ContainerInfo:
    """One container's endpoint on one network, as Docker's inspect shows it (for the DNS)."""

    id: str
    name: str
    aliases: tuple[str, ...] = ()
    ipv4: str = ""
    ipv6: str = ""
    restarts: bool = False  # has a restart policy: dockerd starts it again by itself


@dataclass(frozen=True)
class Subnet:
    """One subnet of a network, as dockerd's IPv4Data/IPv6Data entry describes it."""

    pool: IPNetwork
    gateway: IPInterface | None = None
    aux: tuple[tuple[str, IPInterface], ...] = ()

    @property
    def version(self) -> int:
        return self.pool.version


@dataclass(frozen=True)
class Network:
    id: str
    bridge: str
    subnets: tuple[Subnet, ...]
    mtu: int | None = None
    internal: bool = False
    ipv6: bool = False
    icc: bool = True
    masquerade: bool = True
    host_binding_ipv4: str = ""
    bridge_owned: bool = True
    options: tuple[tuple[str, str], ...] = ()
    cluster: str = ""  # the cluster network it is part of (-o pybridge.cluster), or ""
    vni: int = 0  # its VXLAN network identifier, from the cluster
    mac: str = ""  # the gateway's MAC (the bridge's), the same on every host of a cluster
    # gateway modes beyond "nat" (Docker 28's): per address family
    routed: frozenset[int] = frozenset()  # no NAT; published container ports open directly
    unprotected: frozenset[int] = frozenset()  # nat-unprotected: NAT, and every port open directly
    trusted: tuple[str, ...] = ()  # host interfaces with direct access to published ports

    def gateways(self) -> list[IPInterface]:
        return [s.gateway for s in self.subnets if s.gateway is not None]

    def gateway(self, version: int) -> IPInterface | None:
        for s in self.subnets:
            if s.version == version and s.gateway is not None:
                return s.gateway
        return None

    def pools(self, version: int | None = None) -> list[IPNetwork]:
        return [s.pool for s in self.subnets if version is None or s.version == version]


@dataclass(frozen=True)
class Endpoint:
    id: str
    network_id: str
    host_ifname: str
    container_ifname: str
    mac: str
    address4: ipaddress.IPv4Interface | None = None
    address6: ipaddress.IPv6Interface | None = None
    sandbox_key: str = ""
    options: tuple[tuple[str, str], ...] = field(default=())
    ports: tuple[Any, ...] = ()  # PortBinding, while the endpoint is its container's gateway


@dataclass(frozen=True)
class PoolRecord:
    """An IPAM pool (RequestPool's answer): the subnet it hands addresses from, the walk's cursor."""

    id: str
    space: str
    subnet: IPNetwork
    ip_range: IPNetwork | None
    cursor: int
    cluster: str = ""  # the cluster network whose addresses it hands out (shared in etcd), or ""
