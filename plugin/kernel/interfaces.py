"""The interfaces of the kernel adapters. The use cases (plugin/driver) depend on these, not on
pyroute2 or iptables; the real adapters and the test fakes both implement them, and a unit test
checks that every method is there with the same parameters."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from ..domain.errors import KernelError
from ..domain.model import Endpoint, IPInterface, Network, Taken


@dataclass(frozen=True)
class LinkInfo:
    name: str
    index: int
    kind: str
    mtu: int
    master: int | None
    mac: str


class NetlinkPort(Protocol):
    """Links, addresses and routes of the host's network namespace."""

    def link(self, name: str) -> LinkInfo | None: ...
    def links(self) -> list[LinkInfo]: ...
    def ensure_bridge(self, name: str, mtu: int | None, mac: str) -> bool: ...
    def ensure_addresses(self, name: str, addresses: Iterable[IPInterface]) -> None: ...
    def addresses(self, name: str) -> set[str]: ...
    def remove_addresses(self, name: str, addresses: Iterable[IPInterface]) -> None: ...
    def delete_link(self, name: str) -> bool: ...
    def set_link_up(self, name: str, up: bool) -> bool: ...
    def create_veth(self, host: str, peer: str, bridge: str, mtu: int | None, mac: str) -> None: ...
    def set_hairpin(self, name: str) -> None: ...
    def delete_link_by_index(self, index: int, name: str) -> bool: ...
    def host_networks(self) -> list[Taken]: ...
    def foreign_bridges(self, own: Iterable[str]) -> list[str]: ...
    def watch_links(self, on_change: Callable[[], None]) -> None: ...


@dataclass(frozen=True)
class FirewallCounters:
    """Changes written to our firewall table since start: how many, how many failed, and the
    seconds they took in all; and the faults in firewall work (KernelFault), the last one named."""

    changes: int = 0
    failures: int = 0
    seconds: float = 0.0
    faults: int = 0
    last_fault: str = ""


class FirewallPort(Protocol):
    """pybridge's own firewall table. `sync` writes all of it from the state (start, healing);
    the other changes touch only what they name, whatever else is there, and raise KernelError
    when the table does not hold what they expect (the caller then syncs)."""

    def supports(self, version: int) -> bool: ...
    def sync(
        self, networks: Iterable[Network], endpoints: Iterable[Endpoint] = (), foreign: Iterable[str] | None = None
    ) -> None:
        """The whole table from this state; `foreign` replaces the bridges that are not ours
        (None: those it holds already, as set_foreign and sync keep them)."""
        ...

    def add_network(self, network: Network) -> None: ...
    def remove_network(self, network: Network, endpoints: Iterable[Endpoint] = ()) -> None: ...
    def change_ports(self, network: Network, before: Endpoint | None, after: Endpoint | None) -> None: ...
    def set_foreign(self, foreign: Iterable[str], own: Iterable[str] = ()) -> None: ...
    def set_vxlan_members(self, port: int, members: Iterable[tuple[int, str]], tunnel: str = "") -> None: ...
    def drift(self, networks: Iterable[Network], endpoints: Iterable[Endpoint] = ()) -> list[str]:
        """Differences between the table and this state (with the foreign bridges it holds)."""
        ...

    def foreign(self) -> tuple[str, ...]:
        """The bridges that are not ours, as last set (set_foreign or sync)."""
        ...

    def watch(self, on_change: Callable[[], None], legacy_every: float = 2.0) -> None: ...
    def remove_all(self) -> None: ...
    def counters(self) -> FirewallCounters: ...


class HostDnsPort(Protocol):
    """The host's resolver (systemd-resolved): which DNS servers answer for which domain on
    which link. `publish` states the whole desired set (bridge -> (server addresses, domain));
    it returns at once and is applied in the background."""

    on_servers: Callable[[], None]  # called (on the adapter's thread) when servers() changes

    def publish(self, links: dict[str, tuple[tuple[str, ...], str]]) -> None: ...

    def servers(self) -> tuple[str, ...]:
        """The resolver's own DNS servers (never its stub, nor those of the links published
        here), as last read: () until known. Returns at once; asking starts the reading."""
        ...


class SysctlPort(Protocol):
    """Network sysctls of the host."""

    def get(self, *parts: str) -> str | None: ...
    def ensure(self, value: str, *parts: str) -> None: ...
    def enable_ipv6(self, ifname: str) -> None: ...
    def enable_ipv6_forwarding(self) -> None: ...


class OverlayPort(Protocol):
    """VXLAN devices of cluster networks and their entries for remote containers (mac ->
    (underlay address of the remote host, the container's addresses))."""

    def underlay(self, address: str) -> tuple[str, int] | None: ...
    def ensure_vxlan(self, name: str, vni: int, local: str, port: int, mtu: int, bridge: str) -> bool: ...
    def peers(self, name: str) -> dict[str, tuple[str, frozenset[str]]]: ...
    def set_peers(self, name: str, bridge: str, peers: dict[str, tuple[str, frozenset[str]]]) -> None: ...
    def update_peers(
        self,
        name: str,
        bridge: str,
        peers: dict[str, tuple[str, frozenset[str]]],
        have: dict[str, tuple[str, frozenset[str]]],
    ) -> None: ...


def check_key(key: str, what: str = "WireGuard key") -> str:
    """A WireGuard key as `wg` prints it (32 bytes, base64), or KernelError naming it."""
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raw = b""
    if len(raw) != 32 or base64.b64encode(raw).decode() != key:
        raise KernelError(f"invalid {what} {key[:64]!r}: 32 bytes in base64")
    return key


@dataclass(frozen=True)
class TunnelPeer:
    """One peer of the device: its public key, where to reach it, the one address it may send
    from inside the tunnel (its tunnel address)."""

    key: str
    endpoint: str  # its underlay address
    port: int
    allowed: str  # its tunnel address

    def check(self) -> TunnelPeer:
        check_key(self.key, "peer key")
        ipaddress.ip_address(self.endpoint)
        ipaddress.ip_address(self.allowed)
        if not 0 < self.port < 65536:
            raise KernelError(f"invalid WireGuard port {self.port!r} of peer {self.endpoint}")
        return self


class TunnelPort(Protocol):
    """Cluster mode's encrypted underlay: the host's WireGuard device (plugin.kernel.wireguard)
    and its peers (public key -> TunnelPeer: the underlay address and port to reach it at, and
    the one tunnel address it may send from)."""

    def make_key(self, path: str) -> None: ...
    def public_key(self, path: str) -> str: ...
    def ensure(self, name: str, key_file: str, port: int, address: str, mtu: int) -> str: ...
    def set_key(self, name: str, key_file: str) -> None: ...
    def peers(self, name: str) -> dict[str, TunnelPeer]: ...
    def set_peers(self, name: str, peers: dict[str, TunnelPeer]) -> None: ...
    def delete(self, name: str) -> None: ...
    def exists(self, name: str) -> bool: ...
