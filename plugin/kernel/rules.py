"""Pure firewall rule rendering: networks -> the full contents of pybridge's own chains.

pybridge owns a few chains per table (named <PREFIX>-<BUILTIN>) with one jump from each built-in
chain. Every change rewrites our chains whole, from state, in one iptables-restore batch per
family: restore after a restart and cleanup of rules without a record come for free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..domain.model import Network


@dataclass(frozen=True)
class Jump:
    table: str
    builtin: str
    chain: str

    def rule(self) -> str:
        return f"-A {self.builtin} -j {self.chain}"


def chains(prefix: str) -> dict[str, list[str]]:
    """Our chains per table."""
    return {"filter": [f"{prefix}-FORWARD"], "nat": [f"{prefix}-POSTROUTING"]}


def jumps(prefix: str, docker_user: bool = False) -> list[Jump]:
    """Our jumps. dockerd re-inserts its own FORWARD rules at the top when it restarts, which
    would put its bridge ACCEPTs before us; DOCKER-USER is the chain dockerd keeps first and
    leaves to others, so where it exists our filter chain is jumped to from there too."""
    out = [Jump("filter", "FORWARD", f"{prefix}-FORWARD"),
           Jump("nat", "POSTROUTING", f"{prefix}-POSTROUTING")]
    if docker_user:
        out.insert(0, Jump("filter", "DOCKER-USER", f"{prefix}-FORWARD"))
    return out


# Docker's own bridges (docker0 and br-<12 hex>, and custom names matched by none of these):
# traffic from a pybridge network to them is dropped, as Docker drops traffic between its bridges.
DOCKER_BRIDGES = ("docker0", "br-+")


def _inbound_rules(chain: str, n: Network) -> list[str]:
    """What may enter the network's bridge: replies, its own containers (ICC), nothing else.
    Run for every network before any outbound accept, so one network never reaches another."""
    br = n.bridge
    rules = [f"-A {chain} -i {br} -o {br} -j {'ACCEPT' if n.icc else 'DROP'}"]
    if not n.internal:
        rules.append(f"-A {chain} -o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    rules.append(f"-A {chain} -o {br} -j DROP")
    return rules


def _outbound_rules(chain: str, n: Network) -> list[str]:
    br = n.bridge
    if n.internal:
        return [f"-A {chain} -i {br} -j DROP"]
    rules = [f"-A {chain} -i {br} -o {other} -j DROP" for other in DOCKER_BRIDGES]
    rules.append(f"-A {chain} -i {br} -j ACCEPT")
    return rules


def _nat_rules(chain: str, n: Network, version: int) -> list[str]:
    if n.internal or not n.masquerade:
        return []
    return [f"-A {chain} -s {pool} ! -o {n.bridge} -j MASQUERADE" for pool in n.pools(version)]


def render(prefix: str, networks: Iterable[Network], version: int) -> dict[str, list[str]]:
    """{table: [rule lines]} for our chains in one address family."""
    fwd, post = f"{prefix}-FORWARD", f"{prefix}-POSTROUTING"
    out: dict[str, list[str]] = {"filter": [], "nat": []}
    ordered = sorted(networks, key=lambda n: n.bridge)
    for n in ordered:
        out["filter"] += _inbound_rules(fwd, n)
    for n in ordered:
        out["filter"] += _outbound_rules(fwd, n)
        out["nat"] += _nat_rules(post, n, version)
    return out


def restore_text(prefix: str, rules: dict[str, list[str]], missing_jumps: Iterable[Jump]) -> str:
    """iptables-restore --noflush input: declaring a chain creates or flushes it."""
    lines = []
    missing = list(missing_jumps)
    for table, names in chains(prefix).items():
        lines.append(f"*{table}")
        lines += [f":{name} - [0:0]" for name in names]
        lines += rules.get(table, [])
        lines += [f"-I {j.builtin} 1 -j {j.chain}" for j in missing if j.table == table]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def removal_text(prefix: str, present_jumps: Iterable[Jump]) -> str:
    """Remove our jumps, then flush and delete our chains."""
    lines = []
    present = list(present_jumps)
    for table, names in chains(prefix).items():
        lines.append(f"*{table}")
        lines += [f":{name} - [0:0]" for name in names]
        lines += [f"-D {j.builtin} -j {j.chain}" for j in present if j.table == table]
        lines += [f"-X {name}" for name in names]
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


def our_rules(prefix: str, saved: str) -> list[str]:
    """Lines of an iptables-save dump that belong to us (our chains, or jumps to them)."""
    marker = f"{prefix}-"
    return [line for line in saved.splitlines()
            if line.startswith(("-A ", ":")) and marker in line]
