"""Docker option labels -> validated domain objects. Pure; every error names field and value.

The typed request objects (plugin.protocol.requests) carry raw strings; this module gives them
meaning: CIDRs, booleans, MTU range, bridge names, MAC addresses.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass

from .addresses import parse_cidr, parse_ip, parse_ip_interface
from .errors import InvalidRequest
from .model import Endpoint, IPInterface, Network, Subnet
from .naming import bridge_name, is_docker_bridge_name, is_valid_ifname, owned_link_prefixes, veth_names

OPT_BRIDGE_NAME = "com.docker.network.bridge.name"
OPT_MTU = "com.docker.network.driver.mtu"
OPT_ICC = "com.docker.network.bridge.enable_icc"
OPT_MASQUERADE = "com.docker.network.bridge.enable_ip_masquerade"
OPT_HOST_BINDING_IPV4 = "com.docker.network.bridge.host_binding_ipv4"
# Docker 28's gateway modes, per address family: "nat" (the default); "nat-unprotected" (NAT, and
# every container port reachable by direct routing from outside the host); "routed" (no NAT:
# published container ports reachable directly, from other networks too, and ICMP); "isolated"
# (internal networks only): no gateway address at all, so the bridge has none and the host is
# unreachable.
OPT_GATEWAY_MODE = {4: "com.docker.network.bridge.gateway_mode_ipv4", 6: "com.docker.network.bridge.gateway_mode_ipv6"}
GATEWAY_MODES = ("nat", "nat-unprotected", "routed", "isolated")
# Host interfaces (colon-separated) from which published ports are reachable at the container's
# own address (Docker 28.2).
OPT_TRUSTED = "com.docker.network.bridge.trusted_host_interfaces"
# Options of Docker's bridge driver that pybridge accepts and ignores (documented in README).
IGNORED_BRIDGE_OPTIONS = frozenset(
    {
        "com.docker.network.bridge.default_bridge",
        "com.docker.network.container_iface_prefix",
    }
)
OPT_DNS_UPSTREAM = "pybridge.dns.upstream"
OPT_DNS_LOG = "pybridge.dns.log"
OPT_CLUSTER = "pybridge.cluster"  # the cluster network's name, the same on every host
KNOWN_OPTIONS = frozenset(
    {
        OPT_BRIDGE_NAME,
        OPT_MTU,
        OPT_ICC,
        OPT_MASQUERADE,
        OPT_HOST_BINDING_IPV4,
        OPT_DNS_UPSTREAM,
        OPT_DNS_LOG,
        OPT_CLUSTER,
        OPT_TRUSTED,
        *OPT_GATEWAY_MODE.values(),
    }
)
_CLUSTER_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
OUR_NAMESPACE = "pybridge."

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")

MTU_MIN, MTU_MAX, MTU_MIN_IPV6 = 68, 65535, 1280


def parse_bool(field: str, value: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidRequest(f"invalid value {value!r} for {field}: expected true or false")


def parse_mac(field: str, value: str) -> str:
    if not isinstance(value, str) or not _MAC_RE.fullmatch(value):
        raise InvalidRequest(f"invalid {field} {value!r}: expected a MAC address like 02:42:ac:11:00:02")
    if int(value[:2], 16) & 1:
        raise InvalidRequest(f"invalid {field} {value!r}: a multicast MAC address cannot be an interface address")
    return value.lower()


def parse_mtu(value: str, ipv6: bool) -> int:
    try:
        mtu = int(value, 10)
    except (TypeError, ValueError):
        raise InvalidRequest(f"invalid {OPT_MTU} {value!r}: not an integer") from None
    low = MTU_MIN_IPV6 if ipv6 else MTU_MIN
    if not low <= mtu <= MTU_MAX:
        raise InvalidRequest(f"invalid {OPT_MTU} {mtu}: must be between {low} and {MTU_MAX}")
    return mtu


def parse_upstreams(field: str, text: str) -> tuple[tuple[str, int], ...]:
    """'1.1.1.1, 10.0.0.53:5353, [fd00::53]:53' -> ((ip, port), ...)."""
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        host, port = item, "53"
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else "53"
        elif item.count(":") == 1:
            host, port = item.split(":")
        addr = parse_ip(field, host)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidRequest(f"invalid {field} {item!r}: bad port")
        out.append((str(addr), int(port)))
    return tuple(out)


def parse_cluster_name(field: str, value: str) -> str:
    if not isinstance(value, str) or not _CLUSTER_NAME.fullmatch(value):
        raise InvalidRequest(
            f"invalid {field} {value!r}: 1-63 lower-case letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return value


def check_adoptable_bridge(name: str, prefix: str, docker_bridges: frozenset[str] = frozenset()) -> None:
    """A bridge a user names may be any existing bridge but Docker's own (docker0,
    docker_gwbridge, br-<id>, or one Docker reports for a network of its own) and names in the
    space of links pybridge makes itself."""
    if is_docker_bridge_name(name) or name in docker_bridges:
        raise InvalidRequest(
            f"invalid {OPT_BRIDGE_NAME} {name!r}: it is Docker's bridge; pybridge "
            "will not add its addresses or rules to it"
        )
    if name.startswith(owned_link_prefixes(prefix)):
        raise InvalidRequest(
            f"invalid {OPT_BRIDGE_NAME} {name!r}: names starting with "
            f"{', '.join(owned_link_prefixes(prefix))} are reserved for the links pybridge makes"
        )


def gateway_modes(generic: dict[str, str], internal: bool) -> dict[int, str]:
    """Each address family's gateway mode; refuses a mode that is not one of GATEWAY_MODES and
    "isolated" on a network that is not internal."""
    out = {}
    for version, key in OPT_GATEWAY_MODE.items():
        mode = generic.get(key, "nat") or "nat"
        if mode not in GATEWAY_MODES:
            raise InvalidRequest(f"invalid {key} {str(mode)[:32]!r}: expected one of {', '.join(GATEWAY_MODES)}")
        if mode == "isolated" and not internal:
            raise InvalidRequest(f"{key}=isolated is only for an --internal network")
        out[version] = mode
    return out


def isolated_families(generic: dict[str, str], internal: bool) -> set[int]:
    """The address families whose gateway mode is "isolated" (no gateway address)."""
    return {v for v, mode in gateway_modes(generic, internal).items() if mode == "isolated"}


def parse_trusted_interfaces(value: str) -> tuple[str, ...]:
    """'eth3:vxlan.1' -> ('eth3', 'vxlan.1'): each an interface name, no duplicates."""
    if not isinstance(value, str):
        raise InvalidRequest(f"invalid {OPT_TRUSTED}: expected interface names separated by ':'")
    names = tuple(dict.fromkeys(value.split(":"))) if value else ()
    for name in names:
        if not is_valid_ifname(name):
            raise InvalidRequest(
                f"invalid {OPT_TRUSTED} {value[:80]!r}: {name[:32]!r} is not an interface name "
                "(1-15 letters, digits, '_', '.' or '-'; names separated by ':')"
            )
    return names


@dataclass(frozen=True)
class IpamDataSpec:
    """One IPv4Data/IPv6Data entry as dockerd sent it (strings, not yet validated)."""

    pool: str
    gateway: str = ""
    aux: tuple[tuple[str, str], ...] = ()
    space: str = ""  # the IPAM's address space: pybridge's IPAM answers with its own


# The address spaces pybridge's IPAM driver reports (GetDefaultAddressSpaces).
LOCAL_SPACE, GLOBAL_SPACE = "pybridge-local", "pybridge-global"
# Networks of a swarm have swarmkit's IDs (25 characters of base 36), local ones libnetwork's.
_SWARM_ID = re.compile(r"[0-9a-z]{25}")


def check_swarm_network(network_id: str, data: list[IpamDataSpec]) -> None:
    """A swarm-scoped network takes its addresses from pybridge only through a config-only
    network: without one, dockerd gives each node's copy a subnet of its own default pools and
    ignores --subnet and --ipam-driver (seen on 28.5). dockerd sends nothing at `docker network
    create --scope swarm`, so this is refused when the first container joins on a node."""
    if _SWARM_ID.fullmatch(network_id) and any(d.space not in (LOCAL_SPACE, GLOBAL_SPACE) for d in data):
        raise InvalidRequest(
            "a swarm-scoped pybridge network needs its addresses from pybridge, through a config-only "
            "network: docker network create --config-only --ipam-driver pybridge-plugin:latest --subnet SUBNET "
            "NAME-config; docker network create -d pybridge-plugin:latest --scope swarm --attachable "
            "--config-from NAME-config NAME"
        )


def parse_subnet(entry: IpamDataSpec, version: int) -> Subnet:
    label = f"IPv{version}Data"
    pool = parse_cidr(f"{label} Pool", entry.pool, version)
    gateway = None
    if entry.gateway:
        gw = parse_ip_interface(f"{label} Gateway", entry.gateway)
        if gw.version != version or gw.ip not in pool:
            raise InvalidRequest(f"gateway {gw.ip} is outside subnet {pool}")
        gateway = ipaddress.ip_interface(f"{gw.ip}/{pool.prefixlen}")
    aux = []
    for name, value in entry.aux:
        addr = parse_ip_interface(f"aux address {name!r}", value)
        if addr.version != version or addr.ip not in pool:
            raise InvalidRequest(f"aux address {name}={addr.ip} is outside subnet {pool}")
        aux.append((name, ipaddress.ip_interface(f"{addr.ip}/{pool.prefixlen}")))
    return Subnet(pool=pool, gateway=gateway, aux=tuple(aux))


def network_from_request(
    network_id: str,
    generic: dict[str, str],
    *,
    ipv6: bool,
    internal: bool,
    ipv4_data: list[IpamDataSpec],
    ipv6_data: list[IpamDataSpec],
    prefix: str,
) -> Network:
    """Validate everything about a new network before any side effect."""
    check_swarm_network(network_id, ipv4_data + ipv6_data)
    unknown = sorted(k for k in generic if k.startswith(OUR_NAMESPACE) and k not in KNOWN_OPTIONS)
    if unknown:
        raise InvalidRequest(f"unknown option {unknown[0]!r}")
    name = generic.get(OPT_BRIDGE_NAME) or bridge_name(prefix, network_id)
    if not is_valid_ifname(name):
        raise InvalidRequest(f"invalid {OPT_BRIDGE_NAME} {name!r}: use 1-15 letters, digits, '_', '.' or '-'")
    if generic.get(OPT_BRIDGE_NAME):
        check_adoptable_bridge(name, prefix)
    mtu = parse_mtu(generic[OPT_MTU], ipv6) if generic.get(OPT_MTU) else None
    icc = parse_bool(OPT_ICC, generic[OPT_ICC]) if OPT_ICC in generic else True
    masq = parse_bool(OPT_MASQUERADE, generic[OPT_MASQUERADE]) if OPT_MASQUERADE in generic else True
    if generic.get(OPT_DNS_UPSTREAM):
        parse_upstreams(OPT_DNS_UPSTREAM, generic[OPT_DNS_UPSTREAM])
    if OPT_DNS_LOG in generic:
        parse_bool(OPT_DNS_LOG, generic[OPT_DNS_LOG])
    binding = ""
    if generic.get(OPT_HOST_BINDING_IPV4):
        binding = str(parse_ip(OPT_HOST_BINDING_IPV4, generic[OPT_HOST_BINDING_IPV4], 4))
    modes = gateway_modes(generic, internal)
    isolated = {v for v, mode in modes.items() if mode == "isolated"}
    trusted = parse_trusted_interfaces(generic[OPT_TRUSTED]) if OPT_TRUSTED in generic else ()
    cluster = parse_cluster_name(OPT_CLUSTER, generic[OPT_CLUSTER]) if OPT_CLUSTER in generic else ""
    if cluster:
        if generic.get(OPT_BRIDGE_NAME):
            raise InvalidRequest(f"{OPT_CLUSTER} makes its own bridge: {OPT_BRIDGE_NAME} cannot be given with it")
        if any(d.space not in (LOCAL_SPACE, GLOBAL_SPACE) for d in ipv4_data + ipv6_data):
            raise InvalidRequest(
                f"{OPT_CLUSTER} needs pybridge's IPAM, which shares addresses between the "
                "hosts: add --ipam-driver pybridge"
            )
    subnets = [parse_subnet(e, 4) for e in ipv4_data] + [parse_subnet(e, 6) for e in ipv6_data]
    # dockerd before 28 (no GwAllocCheck) reserves a gateway anyway: it is not used
    subnets = [dataclasses.replace(s, gateway=None) if s.pool.version in isolated else s for s in subnets]
    for i, a in enumerate(subnets):
        for b in subnets[i + 1 :]:
            if a.pool.version == b.pool.version and a.pool.overlaps(b.pool):
                raise InvalidRequest(f"subnets {a.pool} and {b.pool} of one network overlap")
    return Network(
        id=network_id,
        bridge=name,
        subnets=tuple(subnets),
        mtu=mtu,
        internal=internal,
        ipv6=ipv6,
        icc=icc,
        masquerade=masq,
        host_binding_ipv4=binding,
        options=tuple(sorted(generic.items())),
        cluster=cluster,
        routed=frozenset(v for v, mode in modes.items() if mode == "routed"),
        unprotected=frozenset(v for v, mode in modes.items() if mode == "nat-unprotected"),
        trusted=trusted,
    )


def generate_mac(address4: ipaddress.IPv4Interface | None) -> str:
    """Docker's scheme: 02:42 followed by the IPv4 address; random when there is none."""
    if address4 is not None:
        tail = address4.ip.packed
    else:
        tail = os.urandom(4)
    return ":".join(f"{b:02x}" for b in (0x02, 0x42, *tail))


def _endpoint_address(network: Network, field: str, value: str, version: int) -> IPInterface | None:
    """An endpoint address dockerd sent ('' for none), checked against the network's subnets."""
    if not value:
        return None
    addr = parse_ip_interface(field, value, version)
    if network.pools(version) and not any(addr.ip in p for p in network.pools(version)):
        raise InvalidRequest(f"address {addr.ip} is outside the subnets of network {network.id[:12]}")
    return addr


def endpoint_from_request(
    network: Network, endpoint_id: str, *, address: str, address6: str, mac: str, prefix: str
) -> tuple[Endpoint, bool]:
    """Validate a CreateEndpoint request. Returns the endpoint and whether pybridge chose the MAC."""
    found4 = _endpoint_address(network, "Interface.Address", address, 4)
    found6 = _endpoint_address(network, "Interface.AddressIPv6", address6, 6)
    addr4 = found4 if isinstance(found4, ipaddress.IPv4Interface) else None  # (parsed with their version)
    addr6 = found6 if isinstance(found6, ipaddress.IPv6Interface) else None
    chosen = not mac
    mac = generate_mac(addr4) if chosen else parse_mac("Interface.MacAddress", mac)
    if network.mac and mac == network.mac.lower():
        raise InvalidRequest(f"invalid Interface.MacAddress {mac}: it is the network's gateway's MAC")
    host, cont = veth_names(prefix, endpoint_id)
    return Endpoint(
        id=endpoint_id,
        network_id=network.id,
        host_ifname=host,
        container_ifname=cont,
        mac=mac,
        address4=addr4,
        address6=addr6,
    ), chosen
