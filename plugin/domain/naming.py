"""Deterministic names for the kernel objects pybridge owns.

Every link name starts with the instance's two-character prefix, so ownership can be read off
the name (restore/gc only ever removes links that carry it). Linux limits names to 15 bytes.
"""

import re
from typing import Callable

IFNAMSIZ = 15
_IFNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,14}")


def bridge_name(prefix: str, network_id: str) -> str:
    return f"{prefix}-{network_id[:12]}"


def veth_names(prefix: str, endpoint_id: str) -> tuple[str, str]:
    """(host end, container end) of an endpoint's veth pair."""
    return f"{prefix}h{endpoint_id[:12]}", f"{prefix}c{endpoint_id[:12]}"


def owned_link_prefixes(prefix: str) -> tuple[str, ...]:
    return (f"{prefix}-", f"{prefix}h", f"{prefix}c", f"{prefix}x")


def vxlan_name(prefix: str, vni: int) -> str:
    """The VXLAN device of a cluster network on this host."""
    return f"{prefix}x{vni}"


def tunnel_name(prefix: str) -> str:
    """The WireGuard device cluster mode's VXLAN runs over (PYBRIDGE_CLUSTER_ENCRYPT): one per
    host, kept across restarts (no owned prefix: gc never takes it for a stray link)."""
    return f"{prefix}wg0"


def is_valid_ifname(name: str) -> bool:
    """Names the kernel accepts and that are safe on any command line: 1-15 characters of
    letters, digits, '_', '.', '-', starting with a letter or digit (so never an option)."""
    return isinstance(name, str) and bool(_IFNAME_RE.fullmatch(name))


# Bridges Docker makes: its default bridge, swarm's gateway bridge, and br-<network id[:12]>.
DOCKER_BRIDGE_NAMES = frozenset({"docker0", "docker_gwbridge"})
_DOCKER_BRIDGE_RE = re.compile(r"br-[0-9a-f]{12}")


def is_docker_bridge_name(name: str) -> bool:
    return name in DOCKER_BRIDGE_NAMES or bool(_DOCKER_BRIDGE_RE.fullmatch(name))


def chain_prefix(instance_name: str) -> str:
    """Firewall chain prefix for an instance: 'pybridge' -> 'PYBRIDGE'."""
    return re.sub(r"[^A-Z0-9]", "", instance_name.upper())[:12] or "PYBRIDGE"


def bridge_mac(network_id: str) -> str:
    """A fixed, locally administered MAC for a bridge we create. Without one the bridge takes
    the lowest MAC of its ports, and changes it as containers come and go."""
    digits = (network_id + "0" * 10)[:10].lower()
    if any(c not in "0123456789abcdef" for c in digits):
        digits = "".join(f"{ord(c) % 256:02x}" for c in network_id[:5]).ljust(10, "0")
    return "02:" + ":".join(digits[i : i + 2] for i in range(0, 10, 2))


# a DNS domain systemd-resolved takes as a link's routing domain: letters, digits, hyphens, dots
_DOMAIN_RE = re.compile(r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


def routing_domain(network_name: str) -> str | None:
    """A network's name as the DNS domain its containers' names live under on the host
    (web.app), or None where it cannot be one (Docker allows 'my_net')."""
    name = network_name.lower().strip(".")
    return name if _DOMAIN_RE.fullmatch(name) else None


# Container names from the host live under a suffix of pybridge's own (web.app.pybridge.internal),
# never under a network's bare name: a network named com would otherwise become the host's routing
# domain for every .com lookup. `.internal` is reserved by ICANN for private use, so no public
# name is ever under it; tests check the default against the public-suffix list.
DEFAULT_HOST_SUFFIX = "pybridge.internal"
# special-use names (IANA's registry, RFC 6761 and after): never a suffix, nor anything under one
SPECIAL_USE = (
    "arpa",
    "local",
    "localhost",
    "invalid",
    "test",
    "example",
    "onion",
    "alt",
    "example.com",
    "example.net",
    "example.org",
)


def parse_host_suffix(text: str, is_public: Callable[[str], bool]) -> str:
    """The suffix container names get on the host (PYBRIDGE_HOST_DNS_SUFFIX), lower case. Refused:
    not a domain, a single label, special-use or under one, a public suffix (co.uk, github.io),
    or one under which every name is public (a wildcard rule): ValueError naming the setting."""
    suffix = text.strip().lower().rstrip(".")

    def refuse(why: str) -> ValueError:
        return ValueError(f"PYBRIDGE_HOST_DNS_SUFFIX {text[:80]!r}: {why}")

    if not _DOMAIN_RE.fullmatch(suffix):
        raise refuse("not a DNS domain (labels of letters, digits and inner hyphens)")
    if "." not in suffix:
        raise refuse("a single label: it would route a whole top-level domain of the host to pybridge")
    for special in SPECIAL_USE:
        if suffix == special or suffix.endswith("." + special):
            raise refuse(f"under the special-use name {special}")
    if is_public(suffix) or is_public("x." + suffix):
        raise refuse("a public suffix: names under it belong to others")
    if len(suffix) > 200:
        raise refuse("too long to leave room for container and network names")
    return suffix


def host_domain(network_name: str, suffix: str) -> str | None:
    """The domain a network's containers have on the host (app.pybridge.internal), or None where
    there is none (no suffix, or a network name that cannot be DNS labels)."""
    name = routing_domain(network_name)
    if not suffix or name is None or len(name) + 1 + len(suffix) > 253:
        return None
    return f"{name}.{suffix}"
