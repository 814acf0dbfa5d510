"""What the hosts of a cluster share in etcd: the key layout and the records, as typed values.

Pure. Everything read back from etcd is hostile (another host, an older version, a person with
etcdctl may have written it): `parse_*` turn bytes into records or raise InvalidRecord naming
the key, and a watcher skips what does not parse.

Layout, under PREFIX = /pybridge/v2/. What a host says about itself is under a prefix of its
own, host/HOST/, which etcd's access control lets only that host write (one etcd user and role
per host: `pybridge cluster --etcd-access HOST` prints them); the rest are claims, which every host
may create (create-only by compare-and-swap) and which each name their holder:

  host/HOST/member/CLUSTERNET      this host has the network (host lease)
  host/HOST/ep/CLUSTERNET/EPID     EndpointRecord: MAC and addresses of a container there (host lease)
  host/HOST/name/CLUSTERNET/CID    NameRecord: a container's name, aliases, addresses (host lease)
  host/HOST/addr/CLUSTERNET/ADDRHEX  the host's own list of the addresses it claims (host lease):
                                   who holds an address is the host that listed it first
                                   (etcd's create revision), whatever addr/ says now
  host/HOST/want/CLUSTERNET/ADDRHEX  this host asks for an address another host holds in its
                                   reserve (claimed ahead, not handed out): the holder gives it
                                   up; "{}" (host lease, deleted once answered)
  host/HOST/tunnel                 TunnelRecord: its WireGuard public key and port (host lease;
                                   PYBRIDGE_CLUSTER_ENCRYPT=wireguard), reached at HOST itself
  net/CLUSTERNET                   NetRecord: subnets, gateways, VNI, gateway MAC, MTU (no lease)
  vni/VNI                          CLUSTERNET, so that a VNI is claimed once (no lease)
  members/CLUSTERNET/HOST          the network's hosts, so that the last to leave removes its
                                   record atomically (host lease; membership itself is the
                                   host's member key, which no other host can write)
  addr/CLUSTERNET/ADDRHEX          AddrRecord: who holds an address (host lease; gateway: none)
  mac/CLUSTERNET/MACHEX            MacClaim: the host and endpoint that hold a MAC (host lease)

HOST is the host's underlay address, which is unique in a cluster by definition. Version 1 put
member/, ep/ and name/ keys under a prefix per network; its keys are not read (all hosts of a
cluster upgrade together; the old keys go with the old hosts' leases).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from ..domain.addresses import parse_cidr, parse_ip
from ..domain.errors import InvalidRequest, PybridgeError
from ..domain.model import ContainerInfo, Endpoint

PREFIX = "/pybridge/v2/"
VNI_FIRST, VNI_LAST = 4096, (1 << 24) - 1  # below 4096: left to the user's own VXLANs
# A cluster network's name: what -o pybridge.cluster= gives, the same on every host.
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_HEX_ID = re.compile(r"[0-9a-f]{1,64}")
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_DNS_NAME = re.compile(r"[A-Za-z0-9_.-]{1,253}")
_VNI_KEY = re.compile(r"[0-9]{1,8}")
_WG_KEY = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")  # 32 bytes in base64


class InvalidRecord(PybridgeError):
    """A value in etcd that is not what pybridge writes there."""


def host_id(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return str(address)


# keys
def net_key(name: str) -> str:
    return f"{PREFIX}net/{name}"


def vni_key(vni: int) -> str:
    return f"{PREFIX}vni/{vni}"


def host_prefix(host: str) -> str:
    """Everything host HOST says about itself (and nothing else)."""
    return f"{PREFIX}host/{host}/"


def member_key(name: str, host: str) -> str:
    return f"{host_prefix(host)}member/{name}"


def members_prefix(name: str) -> str:
    """The index of network NAME's hosts (a claim, for the last host's atomic leave)."""
    return f"{PREFIX}members/{name}/"


def members_key(name: str, host: str) -> str:
    return members_prefix(name) + host


def addr_prefix(name: str) -> str:
    return f"{PREFIX}addr/{name}/"


def addr_key(name: str, address: int) -> str:
    return f"{addr_prefix(name)}{address:032x}"


def mac_prefix(name: str) -> str:
    return f"{PREFIX}mac/{name}/"


def mac_key(name: str, mac: str) -> str:
    return mac_prefix(name) + mac.replace(":", "")


def ep_prefix(name: str, host: str) -> str:
    return f"{host_prefix(host)}ep/{name}/"


def ep_key(name: str, host: str, endpoint_id: str) -> str:
    return ep_prefix(name, host) + endpoint_id


def name_prefix(name: str, host: str) -> str:
    return f"{host_prefix(host)}name/{name}/"


def name_key(name: str, host: str, container_id: str) -> str:
    return name_prefix(name, host) + container_id


def listing_prefix(name: str, host: str) -> str:
    """Host HOST's own list of the addresses it claims on network NAME."""
    return f"{host_prefix(host)}addr/{name}/"


def listing_key(name: str, host: str, address: int) -> str:
    return f"{listing_prefix(name, host)}{address:032x}"


def _split_host_address_key(key: str, kind: str) -> tuple[str, str, int] | None:
    """(host, network, address) of a host/HOST/KIND/NET/ADDRHEX key, or None."""
    if not key.startswith(PREFIX + "host/"):
        return None
    parts = key[len(PREFIX) + 5 :].split("/")
    if len(parts) != 4 or parts[1] != kind or not _NAME_RE.fullmatch(parts[2]):
        return None
    if not re.fullmatch(r"[0-9a-f]{32}", parts[3]):
        return None
    host = _host_of(key, parts[0])
    return (host, parts[2], int(parts[3], 16)) if host is not None else None


def split_listing_key(key: str) -> tuple[str, str, int] | None:
    """(host, network, address) of a host/HOST/addr/NET/ADDRHEX key, or None."""
    return _split_host_address_key(key, "addr")


def want_key(name: str, host: str, address: int) -> str:
    return f"{host_prefix(host)}want/{name}/{address:032x}"


def split_want_key(key: str) -> tuple[str, str, int] | None:
    """(asking host, network, address) of a host/HOST/want/NET/ADDRHEX key, or None."""
    return _split_host_address_key(key, "want")


def tunnel_key(host: str) -> str:
    return f"{host_prefix(host)}tunnel"


def split_tunnel_key(key: str) -> str | None:
    """The host of a host/HOST/tunnel key, or None."""
    if not key.startswith(PREFIX + "host/"):
        return None
    parts = key[len(PREFIX) + 5 :].split("/")
    if len(parts) != 2 or parts[1] != "tunnel":
        return None
    return _host_of(key, parts[0])


def split_addr_key(key: str, network: str | None = None) -> tuple[str, int] | None:
    """(network, address) of an addr/ key (of that network, if given), or None."""
    if not key.startswith(PREFIX + "addr/"):
        return None
    parts = key[len(PREFIX) + 5 :].split("/")
    if len(parts) != 2 or not _NAME_RE.fullmatch(parts[0]) or not re.fullmatch(r"[0-9a-f]{32}", parts[1]):
        return None
    if network is not None and parts[0] != network:
        return None
    return parts[0], int(parts[1], 16)


def _host_of(key: str, host: str) -> str | None:
    """The host of a host/HOST/ key, if written as pybridge writes it (and nothing else)."""
    try:
        return host if host_address(key, host) == host else None
    except InvalidRecord:
        return None


def split_member_key(key: str) -> tuple[str, str] | None:
    """(network, host) of a host/HOST/member/NETWORK key, or None."""
    if not key.startswith(PREFIX + "host/"):
        return None
    parts = key[len(PREFIX) + 5 :].split("/")
    if len(parts) != 3 or parts[1] != "member" or not _NAME_RE.fullmatch(parts[2]):
        return None
    host = _host_of(key, parts[0])
    return (parts[2], host) if host is not None else None


def owner_of(key: str) -> str | None:
    """The host whose prefix holds `key` (a host/HOST/... key), or None."""
    if not key.startswith(PREFIX + "host/"):
        return None
    parts = key[len(PREFIX) + 5 :].split("/")
    return _host_of(key, parts[0]) if len(parts) >= 2 else None


@dataclass(frozen=True)
class KeyParts:
    kind: str  # "ep" or "name"
    network: str
    host: str
    item: str


def split_key(key: str) -> KeyParts | None:
    """A host/HOST/ep/ or host/HOST/name/ key in its parts, or None for any other key (or a
    malformed one). The host is the prefix's: a record is about the host that wrote it."""
    if not key.startswith(PREFIX + "host/"):
        return None
    parts = key[len(PREFIX) + 5 :].split("/")
    if len(parts) != 4 or parts[1] not in ("ep", "name"):
        return None
    host, kind, network, item = parts
    if not _NAME_RE.fullmatch(network) or not _HEX_ID.fullmatch(item) or _host_of(key, host) is None:
        return None
    return KeyParts(kind, network, host, item)


# records
@dataclass(frozen=True)
class NetRecord:
    subnets: tuple[tuple[str, str], ...]  # (subnet, gateway address or "") per subnet
    vni: int
    mac: str  # the gateway's MAC, the same on every host
    mtu: int
    aux: tuple[str, ...] = ()  # --aux-address addresses, sorted: reserved on every host

    def to_json(self) -> str:
        d = {"subnets": [list(s) for s in self.subnets], "vni": self.vni, "mac": self.mac, "mtu": self.mtu}
        if self.aux:  # (a record without aux reads as before)
            d["aux"] = list(self.aux)
        return json.dumps(d, sort_keys=True)


@dataclass(frozen=True)
class AddrRecord:
    host: str  # who holds it ("" for the network's gateway and aux addresses: everyone)
    kind: str

    def to_json(self) -> str:
        return json.dumps({"host": self.host, "kind": self.kind}, sort_keys=True)


@dataclass(frozen=True)
class MacClaim:
    host: str
    endpoint: str

    def to_json(self) -> str:
        return json.dumps({"host": self.host, "endpoint": self.endpoint}, sort_keys=True)


@dataclass(frozen=True)
class EndpointRecord:
    mac: str
    ipv4: str
    ipv6: str

    def to_json(self) -> str:
        return json.dumps({"mac": self.mac, "ipv4": self.ipv4, "ipv6": self.ipv6}, sort_keys=True)

    @classmethod
    def of(cls, endpoint: Endpoint) -> EndpointRecord:
        """What other hosts learn of an endpoint here: its MAC and addresses."""
        return cls(
            endpoint.mac,
            str(endpoint.address4.ip) if endpoint.address4 else "",
            str(endpoint.address6.ip) if endpoint.address6 else "",
        )


@dataclass(frozen=True)
class TunnelRecord:
    """A host's WireGuard public key and the UDP port it listens on; its endpoint is the host's
    own underlay address (the key's prefix), so a record can only speak for its writer."""

    key: str
    port: int

    def to_json(self) -> str:
        return json.dumps({"key": self.key, "port": self.port}, sort_keys=True)


def _load(key: str, value: bytes) -> dict[str, Any]:
    try:
        d = json.loads(value)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRecord(f"etcd key {key[:100]!r}: not JSON ({e})") from None
    if not isinstance(d, dict):
        raise InvalidRecord(f"etcd key {key[:100]!r}: not an object")
    return d


def _address(key: str, value: object, version: int | None = None) -> str:
    """An address from etcd, through the one parser values from dockerd go through (no scope
    ID, nothing but hex digits, '.' and ':')."""
    if value == "":
        return ""
    try:
        return str(parse_ip(f"etcd key {key[:100]!r}:", value, version))
    except InvalidRequest as e:
        raise InvalidRecord(str(e)) from None


def host_address(key: str, value: object) -> str:
    """A host's underlay address (a key's host part, a record's "host"): one unicast address, so
    never loopback, multicast, broadcast, link-local, reserved or unspecified: it becomes a VXLAN
    destination and a member of the firewall's filter."""
    parsed = _address(key, value)
    if not parsed:
        raise InvalidRecord(f"etcd key {key[:100]!r}: no host address")
    a = ipaddress.ip_address(parsed)
    if a.is_loopback or a.is_multicast or a.is_unspecified or a.is_link_local or a.is_reserved:
        raise InvalidRecord(f"etcd key {key[:100]!r}: {str(value)[:60]!r} is not a host's unicast address")
    return str(a)


def parse_vni_key(key: str) -> int | None:
    """The VNI a vni/ key claims, or None for a key pybridge does not write (ASCII digits only:
    str.isdigit() also takes '²')."""
    tail = key.rsplit("/", 1)[-1]
    return int(tail) if _VNI_KEY.fullmatch(tail) else None


def parse_net(key: str, value: bytes) -> NetRecord:
    d = _load(key, value)
    try:
        subnets = []
        for pool, gateway in d["subnets"]:
            net = parse_cidr(f"etcd key {key[:100]!r}: subnet", pool)
            gw = _address(key, gateway, net.version)
            if gw and ipaddress.ip_address(gw) not in net:
                raise InvalidRecord(f"etcd key {key[:100]!r}: gateway {gw} outside {net}")
            subnets.append((str(net), gw))
        vni, mac, mtu = d["vni"], d["mac"], d["mtu"]
        aux = d.get("aux", [])
        if not isinstance(aux, list) or len(aux) > 256:
            raise InvalidRecord(f"etcd key {key[:100]!r}: aux addresses malformed")
        aux = tuple(sorted(_address(key, a) for a in aux if isinstance(a, str)))
        if (
            len(aux) != len(d.get("aux", []))
            or "" in aux
            or not all(any(ipaddress.ip_address(a) in ipaddress.ip_network(p) for p, _ in subnets) for a in aux)
        ):
            raise InvalidRecord(f"etcd key {key[:100]!r}: aux addresses malformed")
    except (KeyError, TypeError, ValueError, InvalidRequest) as e:
        raise InvalidRecord(f"etcd key {key[:100]!r}: malformed network record ({e})") from None
    if not isinstance(vni, int) or not VNI_FIRST <= vni <= VNI_LAST:
        raise InvalidRecord(f"etcd key {key[:100]!r}: VNI {vni!r} out of range")
    if not isinstance(mac, str) or not _MAC_RE.fullmatch(mac):
        raise InvalidRecord(f"etcd key {key[:100]!r}: MAC {mac!r} malformed")
    if not isinstance(mtu, int) or not 68 <= mtu <= 65535:
        raise InvalidRecord(f"etcd key {key[:100]!r}: MTU {mtu!r} out of range")
    return NetRecord(tuple(subnets), vni, mac, mtu, aux)


def parse_addr(key: str, value: bytes) -> AddrRecord:
    d = _load(key, value)
    host, kind = d.get("host"), d.get("kind")
    if not isinstance(kind, str) or kind not in ("gateway", "static", "dynamic", "aux", "reserve"):
        raise InvalidRecord(f"etcd key {key[:100]!r}: kind {kind!r} unknown")
    return AddrRecord(host_address(key, host) if host else "", kind)


def parse_mac_claim(key: str, value: bytes) -> MacClaim:
    d = _load(key, value)
    host, endpoint = d.get("host"), d.get("endpoint")
    if not isinstance(endpoint, str) or not _HEX_ID.fullmatch(endpoint):
        raise InvalidRecord(f"etcd key {key[:100]!r}: endpoint {str(endpoint)[:70]!r} malformed")
    return MacClaim(host_address(key, host) if host else "", endpoint)


def parse_endpoint(key: str, value: bytes) -> EndpointRecord:
    d = _load(key, value)
    mac = d.get("mac")
    if not isinstance(mac, str) or not _MAC_RE.fullmatch(mac) or int(mac[:2], 16) & 1:
        raise InvalidRecord(f"etcd key {key[:100]!r}: MAC {str(mac)[:40]!r} malformed")
    rec = EndpointRecord(mac, _address(key, d.get("ipv4", ""), 4), _address(key, d.get("ipv6", ""), 6))
    if not rec.ipv4 and not rec.ipv6:
        raise InvalidRecord(f"etcd key {key[:100]!r}: endpoint without an address")
    return rec


def name_to_json(c: ContainerInfo) -> str:
    return json.dumps({"name": c.name, "aliases": list(c.aliases), "ipv4": c.ipv4, "ipv6": c.ipv6}, sort_keys=True)


def parse_name(key: str, container_id: str, value: bytes) -> ContainerInfo:
    d = _load(key, value)
    name, aliases = d.get("name"), d.get("aliases", [])
    if not isinstance(name, str) or not _DNS_NAME.fullmatch(name.lstrip("/")):
        raise InvalidRecord(f"etcd key {key[:100]!r}: name {str(name)[:60]!r} malformed")
    if (
        not isinstance(aliases, list)
        or len(aliases) > 64
        or not all(isinstance(a, str) and _DNS_NAME.fullmatch(a) for a in aliases)
    ):
        raise InvalidRecord(f"etcd key {key[:100]!r}: aliases malformed")
    ipv4, ipv6 = _address(key, d.get("ipv4", ""), 4), _address(key, d.get("ipv6", ""), 6)
    return ContainerInfo(container_id, name, tuple(aliases), ipv4, ipv6)


def parse_tunnel(key: str, value: bytes) -> TunnelRecord:
    d = _load(key, value)
    public, port = d.get("key"), d.get("port")
    if not isinstance(public, str) or not _WG_KEY.fullmatch(public):
        raise InvalidRecord(f"etcd key {key[:100]!r}: WireGuard key {str(public)[:60]!r} malformed")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidRecord(f"etcd key {key[:100]!r}: port {str(port)[:20]!r} out of range")
    return TunnelRecord(public, port)


def gateway_mac(gateway4: str, vni: int) -> str:
    """The gateway's MAC on every host: Docker's 02:42 scheme from the IPv4 gateway (no
    container can have that address), else from the VNI (locally administered, 02:43)."""
    if gateway4:
        tail = ipaddress.IPv4Address(gateway4).packed
        return ":".join(f"{b:02x}" for b in (0x02, 0x42, *tail))
    return ":".join(f"{b:02x}" for b in (0x02, 0x43, 0, *vni.to_bytes(3, "big")))


# access control: what each host may write
CLAIMS = ("net/", "vni/", "members/", "addr/", "mac/")


def writable(host: str) -> tuple[str, ...]:
    """The prefixes cluster host HOST writes: its own, and the claims."""
    return (host_prefix(host), *(PREFIX + c for c in CLAIMS))


def etcd_access(host: str, user: str) -> list[list[str]]:
    """The etcdctl commands (arguments after `etcdctl` and its connection flags) that give cluster
    host HOST its etcd user `user` and a role of the same name: read everything of pybridge's,
    write its own prefix and the claims (which every host creates, and none may overwrite: each
    holds its claimer). The password comes from $PASSWORD (set it from the host's password file)."""
    if host_id(parse_ip("host", host)) != host:
        raise InvalidRequest(f"invalid host {host[:64]!r}: its underlay address, as pybridge writes it")
    grants = [["role", "grant-permission", user, "--prefix=true", "read", PREFIX]]
    grants += [["role", "grant-permission", user, "--prefix=true", "readwrite", p] for p in writable(host)]
    return [
        ["role", "add", user],
        *grants,
        ["user", "add", user, "--interactive=false", "--new-user-password=$PASSWORD"],
        ["user", "grant-role", user, user],
    ]
