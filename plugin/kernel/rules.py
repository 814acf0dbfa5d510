"""Pure firewall rule rendering: networks -> the full contents of pybridge's own chains.

pybridge owns a few chains per table (named <PREFIX>-<BUILTIN>) with one jump from each built-in
chain. Every change rewrites our chains whole, from state, in one iptables-restore batch per
family: restore after a restart and cleanup of rules without a record come for free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from ..domain.errors import KernelError
from ..domain.model import Endpoint, Network

# What a token of iptables-restore input may contain: names, addresses, ports, flags. Whitespace,
# newlines, quotes, '#' and '%' (and everything else) never reach the kernel tool.
_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_.:/,+!\[\]-]+")


def safe(token) -> str:
    """A token of a rule, refused unless it is plainly one token."""
    text = str(token)
    if not _SAFE_TOKEN.fullmatch(text):
        raise KernelError(f"refusing to write an unsafe token {text[:64]!r} into a firewall rule")
    return text


def line(tokens: Iterable) -> str:
    """One rule line from its tokens, each checked."""
    return " ".join(safe(t) for t in tokens)


Rule = tuple  # the tokens of one rule: ("-A", chain, ...)


@dataclass(frozen=True)
class Jump:
    table: str
    builtin: str
    chain: str
    match: tuple[str, ...] = ()

    def spec(self) -> tuple[str, ...]:
        return (*self.match, "-j", self.chain)

    def rule(self) -> str:
        return line(("-A", self.builtin, *self.spec()))


LOCAL = ("-m", "addrtype", "--dst-type", "LOCAL")


def chains(prefix: str) -> dict[str, list[str]]:
    """Our chains per table."""
    return {"filter": [f"{prefix}-FORWARD"], "nat": [f"{prefix}-POSTROUTING", f"{prefix}-DNAT"]}


def jumps(prefix: str, docker_user: bool = False) -> list[Jump]:
    """Our jumps. dockerd re-inserts its own FORWARD rules at the top when it restarts, which
    would put its bridge ACCEPTs before us; DOCKER-USER is the chain dockerd keeps first and
    leaves to others, so where it exists our filter chain is jumped to from there too."""
    out = [Jump("filter", "FORWARD", f"{prefix}-FORWARD"),
           Jump("nat", "POSTROUTING", f"{prefix}-POSTROUTING"),
           Jump("nat", "PREROUTING", f"{prefix}-DNAT", LOCAL),
           Jump("nat", "OUTPUT", f"{prefix}-DNAT", LOCAL)]
    if docker_user:
        out.insert(0, Jump("filter", "DOCKER-USER", f"{prefix}-FORWARD"))
    return out


# Docker's own bridges (docker0 and br-<12 hex>, and custom names matched by none of these):
# traffic from a pybridge network to them is dropped, as Docker drops traffic between its bridges.
DOCKER_BRIDGES = ("docker0", "br-+")


def _published(n: Network, endpoints: Iterable[Endpoint], version: int):
    """(container address, binding) for every port the network's endpoints publish in this
    address family."""
    if n.internal:
        return []
    out = []
    for e in endpoints:
        addr = e.address4 if version == 4 else e.address6
        if e.network_id == n.id and addr is not None:
            out += [(addr.ip, b) for b in e.ports if b.applies_to(version)]
    return out


def _inbound_rules(chain: str, n: Network, published) -> list[Rule]:
    """What may enter the network's bridge: replies, published ports (only when DNATed to
    them), its own containers (ICC), nothing else. Run for every network before any outbound
    accept, so one network never reaches another."""
    br = n.bridge
    rules = [("-A", chain, "-o", br, "-d", ip, "-p", b.proto, "--dport", b.container_port,
              "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT") for ip, b in published]
    rules.append(("-A", chain, "-i", br, "-o", br, "-j", "ACCEPT" if n.icc else "DROP"))
    if not n.internal:
        rules.append(("-A", chain, "-o", br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
                      "-j", "ACCEPT"))
    rules.append(("-A", chain, "-o", br, "-j", "DROP"))
    return rules


def _outbound_rules(chain: str, n: Network) -> list[Rule]:
    br = n.bridge
    if n.internal:
        return [("-A", chain, "-i", br, "-j", "DROP")]
    rules = [("-A", chain, "-i", br, "-o", other, "-j", "DROP") for other in DOCKER_BRIDGES]
    rules.append(("-A", chain, "-i", br, "-j", "ACCEPT"))
    return rules


def _nat_rules(chain: str, n: Network, version: int) -> list[Rule]:
    if n.internal or not n.masquerade:
        return []
    return [("-A", chain, "-s", pool, "!", "-o", n.bridge, "-j", "MASQUERADE") for pool in n.pools(version)]


def _port_rules(post: str, dnat: str, n: Network, published, version: int) -> list[Rule]:
    """DNAT from any local address (or the binding's own) to the container; masquerade hairpin
    traffic, and (IPv4) what comes from loopback, which route_localnet lets out."""
    rules = []
    host_len = 32 if version == 4 else 128
    for ip, b in published:
        dst = ("-d", f"{b.host_ip}/{host_len}") if b.host_ip else ()
        to = f"{ip}:{b.container_port}" if version == 4 else f"[{ip}]:{b.container_port}"
        rules.append(("-A", dnat, *dst, "-p", b.proto, "-m", b.proto, "--dport", b.host_port,
                      "-j", "DNAT", "--to-destination", to))
        rules.append(("-A", post, "-s", f"{ip}/{host_len}", "-d", f"{ip}/{host_len}", "-p", b.proto,
                      "-m", b.proto, "--dport", b.container_port, "-j", "MASQUERADE"))
    if published and version == 4:
        rules.append(("-A", post, "-s", "127.0.0.0/8", "-o", n.bridge, "-j", "MASQUERADE"))
    return rules


def render(prefix: str, networks: Iterable[Network], version: int,
           endpoints: Iterable[Endpoint] = ()) -> dict[str, list[Rule]]:
    """{table: [rules as token tuples]} for our chains in one address family."""
    fwd, post, dnat = f"{prefix}-FORWARD", f"{prefix}-POSTROUTING", f"{prefix}-DNAT"
    out: dict[str, list[Rule]] = {"filter": [], "nat": []}
    ordered = sorted(networks, key=lambda n: n.bridge)
    endpoints = list(endpoints)
    published = {n.id: _published(n, endpoints, version) for n in ordered}
    for n in ordered:
        out["filter"] += _inbound_rules(fwd, n, published[n.id])
    # What the host delivers to itself (to a gateway address, say) leaves through lo and is never
    # source-NATed: a host's DNS query to a gateway keeps the gateway as its source.
    if ordered:
        out["nat"].append(("-A", post, "-o", "lo", "-j", "RETURN"))
    for n in ordered:
        out["filter"] += _outbound_rules(fwd, n)
        out["nat"] += _port_rules(post, dnat, n, published[n.id], version) + _nat_rules(post, n, version)
    return out


def restore_text(prefix: str, rules: dict[str, list[Rule]], missing_jumps: Iterable[Jump]) -> str:
    """iptables-restore --noflush input: declaring a chain creates or flushes it. Every token
    is checked (KernelError on an unsafe one) before any text exists."""
    lines = []
    missing = list(missing_jumps)
    for table, names in chains(prefix).items():
        lines.append(f"*{table}")
        lines += [f":{safe(name)} - [0:0]" for name in names]
        lines += [line(r) for r in rules.get(table, [])]
        lines += [line(("-I", j.builtin, 1, *j.spec())) for j in missing if j.table == table]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def removal_text(prefix: str, present_jumps: Iterable[Jump]) -> str:
    """Remove our jumps, then flush and delete our chains."""
    lines = []
    present = list(present_jumps)
    for table, names in chains(prefix).items():
        lines.append(f"*{table}")
        lines += [f":{safe(name)} - [0:0]" for name in names]
        lines += [line(("-D", j.builtin, *j.spec())) for j in present if j.table == table]
        lines += [line(("-X", name)) for name in names]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def has_docker_user(saved: str) -> bool:
    return ":DOCKER-USER " in saved


def present_jumps(prefix: str, saved: str) -> list[Jump]:
    """Which of our jumps an iptables-save dump contains."""
    table, found = None, []
    rules = set()
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith("-A "):
            rules.add((table, line.strip()))
    for j in jumps(prefix, docker_user=True):
        if (j.table, j.rule()) in rules:
            found.append(j)
    return found



def drift(prefix: str, wanted: dict[str, list[Rule]], saved: str, docker_user: bool) -> list[str]:
    """How an iptables-save dump differs from what we want: missing jumps, missing chains, and
    chains whose rule count differs (iptables-save rewrites rules, so counts are compared)."""
    problems, table, counts, chains_seen = [], None, {}, set()
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":"):
            chains_seen.add((table, line[1:].split()[0]))
        elif line.startswith("-A "):
            chain = line.split()[1]
            counts[(table, chain)] = counts.get((table, chain), 0) + 1
    present = present_jumps(prefix, saved)
    problems += [f"missing jump {j.rule()} ({j.table})" for j in jumps(prefix, docker_user) if j not in present]
    for table, names in chains(prefix).items():
        for name in names:
            want = sum(1 for r in wanted.get(table, []) if r[1] == name)
            if (table, name) not in chains_seen:
                problems.append(f"missing chain {name} ({table})")
            elif counts.get((table, name), 0) != want:
                problems.append(f"chain {name} ({table}) has {counts.get((table, name), 0)} rules, expected {want}")
    return problems
