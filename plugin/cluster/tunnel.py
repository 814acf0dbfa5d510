"""The path VXLAN takes between hosts: straight over the underlay (Plain), or through WireGuard
(Encrypted, PYBRIDGE_CLUSTER_ENCRYPT=wireguard).

Encrypted: this host has one WireGuard device with a tunnel address, and peers with every live
member of the cluster: each host publishes its public key and port under its own prefix
(host/HOST/tunnel, under its lease), and is reached at HOST, its own underlay address, so a record
can speak only for the host that wrote it. A host's tunnel address is not published: it is its
underlay address's host bits in the tunnel subnet, so no host can take another's. VXLAN's source
is this host's tunnel address and its destinations the other hosts' tunnel addresses; WireGuard
lets a peer send from its own tunnel address only, and drops everything it cannot authenticate.
The peers last known are kept in the state store, so a restart with etcd away peers as before.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from typing import Any, Protocol

from ..domain.errors import ConfigError, KernelError
from ..kernel.interfaces import TunnelPeer, TunnelPort
from ..store.db import Store
from . import records as r
from .records import TunnelRecord
from .service import ClusterService

log = logging.getLogger(__name__)

# outer IP, UDP and WireGuard's header and tag, by the underlay's IP version
WIREGUARD_OVERHEAD = {4: 60, 6: 80}


class UnderlayPath(Protocol):
    """Where VXLAN goes from and to: addresses for the VXLAN device, the firewall's filter and
    the MTU."""

    @property
    def local(self) -> str:
        """VXLAN's source address on this host."""
        ...

    def remote(self, host: str) -> str:
        """VXLAN's destination for cluster host `host` (its underlay address)."""
        ...

    @property
    def overhead(self) -> int:
        """What the path adds below VXLAN (bytes per packet)."""
        ...

    @property
    def link(self) -> str:
        """The device VXLAN from other hosts must arrive through ("" for any)."""
        ...


class Plain:
    """VXLAN straight on the underlay, in clear."""

    def __init__(self, underlay: str):
        self._underlay = underlay

    @property
    def local(self) -> str:
        return self._underlay

    def remote(self, host: str) -> str:
        return host

    @property
    def overhead(self) -> int:
        return 0

    @property
    def link(self) -> str:
        return ""

    def snapshot(self) -> dict[str, Any]:
        return {"encrypt": "none"}


def tunnel_address(subnet: ipaddress.IPv4Network | ipaddress.IPv6Network, underlay: str) -> str:
    """A host's tunnel address: its underlay address's host bits in the tunnel subnet."""
    host_bits = int(ipaddress.ip_address(underlay)) & int(subnet.hostmask)
    return str(subnet.network_address + host_bits)


def _checked(known: dict[str, tuple[str, int]]) -> dict[str, TunnelRecord]:
    """The state's peers, as the watch would take them from etcd (the state file is input too)."""
    out = {}
    for host, (key, port) in known.items():
        try:
            out[r.host_address("state: tunnel peer", host)] = r.parse_tunnel(
                "state: tunnel peer", TunnelRecord(key, port).to_json().encode()
            )
        except r.InvalidRecord as e:
            log.warning("cluster: ignoring a WireGuard peer in the state: %s", e)
    return out


class Encrypted:
    """VXLAN through this host's WireGuard device."""

    def __init__(
        self,
        wireguard: TunnelPort,
        cluster: ClusterService,
        store: Store,
        name: str,
        subnet: ipaddress.IPv4Network | ipaddress.IPv6Network,
        port: int,
        key_file: str,
        underlay: str,
    ):
        self.wireguard = wireguard
        self.cluster = cluster
        self.store = store
        self.name = name
        self.subnet = subnet
        self.port = port
        self.key_file = key_file
        self.underlay = underlay
        self._local = tunnel_address(subnet, underlay)
        if ipaddress.ip_address(self._local) in (subnet.network_address, subnet.broadcast_address):
            raise ConfigError(
                f"tunnel subnet {subnet}: this host's address {underlay} maps to {self._local}, which the subnet "
                "cannot give a host; choose a PYBRIDGE_CLUSTER_WG_SUBNET whose size covers the underlay's host bits"
            )
        self._overhead = WIREGUARD_OVERHEAD[ipaddress.ip_address(underlay).version]
        self._lock = threading.Lock()
        self.carrier = ""  # "kernel" or "userspace", once up
        self.peered: dict[str, str] = {}  # host -> its public key, as programmed
        self.ignored: dict[str, str] = {}  # host -> why it is not a peer
        self.public = ""  # this host's public key

    # --- UnderlayPath
    @property
    def local(self) -> str:
        return self._local

    def remote(self, host: str) -> str:
        return tunnel_address(self.subnet, host)

    @property
    def overhead(self) -> int:
        return self._overhead

    @property
    def link(self) -> str:
        return self.name

    # --- the device
    def up(self, underlay_mtu: int) -> None:
        """The key pair (made at first start), the device, the peers last known (the state's:
        traffic goes on while etcd is away), and this host's record for the others."""
        if not os.path.exists(self.key_file):
            self.wireguard.make_key(self.key_file)
            log.info("cluster: WireGuard key pair made (%s)", self.key_file)
        mode = os.stat(self.key_file).st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(f"{self.key_file}: the WireGuard private key must be mode 0600, not {mode:04o}")
        self.carrier = self.wireguard.ensure(
            self.name,
            self.key_file,
            self.port,
            f"{self._local}/{self.subnet.prefixlen}",
            underlay_mtu - self._overhead,
        )
        with self.store.reading() as tx:
            known = tx.meta.tunnel_peers()
        self.public = self.wireguard.public_key(self.key_file)
        self._program(_checked(known), save=False)
        self.cluster.publish_tunnel(TunnelRecord(self.public, self.port))
        log.info("cluster: WireGuard %s up (%s), tunnel address %s", self.name, self.carrier, self._local)

    def members_changed(self, records: dict[str, TunnelRecord]) -> None:
        """The cluster watch's report of every live host's tunnel record: the peers := them."""
        self._program(records, save=True)

    def _program(self, records: dict[str, TunnelRecord], save: bool) -> None:
        with self._lock:
            others = {h: rec for h, rec in sorted(records.items()) if h != self.underlay}
            by_address: dict[str, list[str]] = {}
            by_key: dict[str, list[str]] = {}
            for host, rec in others.items():
                by_address.setdefault(self.remote(host), []).append(host)
                by_key.setdefault(rec.key, []).append(host)
            ignored: dict[str, str] = {}
            peers: dict[str, TunnelPeer] = {}
            hosts: dict[str, str] = {}
            for host, rec in others.items():
                address = self.remote(host)
                if address == self._local:
                    ignored[host] = f"its tunnel address {address} is this host's"
                elif rec.key == self.public:
                    ignored[host] = "it published this host's public key"
                elif len(by_key[rec.key]) > 1:  # a copied public key: whose it is cannot be told
                    ignored[host] = f"its public key is also that of {', '.join(by_key[rec.key])}"
                elif len(by_address[address]) > 1:  # none of them can be told apart
                    ignored[host] = f"its tunnel address {address} is also that of {', '.join(by_address[address])}"
                else:
                    peers[rec.key] = TunnelPeer(rec.key, host, rec.port, address)
                    hosts[host] = rec.key
            for host, why in ignored.items():
                if self.ignored.get(host) != why:
                    log.error("cluster: host %s is not a WireGuard peer: %s", host, why)
            try:
                self.wireguard.set_peers(self.name, peers)
            except KernelError as e:
                log.error("cluster: WireGuard peers of %s: %s", self.name, e)
                return
            self.peered, self.ignored = hosts, ignored
            if save:
                with self.store.transaction() as tx:
                    tx.meta.set_tunnel_peers({h: (records[h].key, records[h].port) for h in hosts})

    def rotate(self) -> str:
        """A new key pair: the device takes it now and the other hosts learn the public key from
        etcd (established connections ride over the new handshake). Returns the public key."""
        with self._lock:
            backup = f"{self.key_file}.old"
            os.replace(self.key_file, backup)
            try:
                self.wireguard.make_key(self.key_file)
                self.wireguard.set_key(self.name, self.key_file)
            except BaseException:
                os.replace(backup, self.key_file)
                raise
            os.unlink(backup)
            self.public = self.wireguard.public_key(self.key_file)
        self.cluster.publish_tunnel(TunnelRecord(self.public, self.port))
        log.info("cluster: WireGuard key rotated")
        return self.public

    def snapshot(self) -> dict[str, Any]:
        return {
            "encrypt": "wireguard",
            "device": self.name,
            "carrier": self.carrier,
            "address": self._local,
            "port": self.port,
            "peers": dict(sorted(self.peered.items())),
            "ignored": dict(sorted(self.ignored.items())),
        }
