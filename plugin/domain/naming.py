"""Deterministic names for the kernel objects pybridge owns.

Every link name starts with the instance's two-character prefix, so ownership can be read off
the name (restore/gc only ever removes links that carry it). Linux limits names to 15 bytes.
"""

import re

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
    return "02:" + ":".join(digits[i:i + 2] for i in range(0, 10, 2))


# a DNS domain systemd-resolved takes as a link's routing domain: letters, digits, hyphens, dots
_DOMAIN_RE = re.compile(r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


def routing_domain(network_name: str) -> str | None:
    """A network's name as the DNS domain its containers' names live under on the host
    (web.app), or None where it cannot be one (Docker allows 'my_net')."""
    name = network_name.lower().strip(".")
    return name if _DOMAIN_RE.fullmatch(name) else None
