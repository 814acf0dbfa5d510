"""Pure firewall rule rendering: networks -> the contents of pybridge's own chains, and where our
jumps belong among everyone else's rules. Rules are token tuples; every token is checked before
any text exists (nothing from a request is ever spliced into iptables-restore input unchecked).

Our chains, per address family, named <PREFIX>-<NAME>:

  raw    PREROUTING  (from raw PREROUTING) drops, before routing: packets for 127.0.0.0/8 that
                     did not come from lo (route_localnet on a bridge would let a container or a
                     LAN neighbour reach the host's 127.0.0.1 services and loopback-published
                     ports), and DNS to a gateway from anywhere but its own network (-> DNS).
         DNS         per gateway: from the host (lo) or the network's bridge and subnets, go on;
                     anything else is dropped without an answer.
  filter ISOLATE     DROP only: what may not enter or leave our networks. Jumped to from
                     DOCKER-USER after the administrator's rules (before Docker's trailing
                     RETURN), so it runs before Docker's own ACCEPTs, and from our FORWARD.
         EGRESS      what our networks may not reach: bridges that are not ours (Docker's,
                     libvirt's, anyone's) unless a published port (DNAT) leads there.
         FORWARD     the ACCEPTs. Jumped to from FORWARD right after DOCKER-USER, so that an
                     administrator's DOCKER-USER rules are always seen first.
  nat    POSTROUTING masquerade: outbound, hairpin, loopback.
         DNAT        published ports; never the DNS port of a gateway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from plugin.domain.model import Endpoint, Network
from plugin.domain.naming import is_valid_ifname
from plugin.kernel.commands import _SAFE_TOKEN, line, safe
from plugin.kernel.iptables_migration import TABLES, Saved, chains
from plugin.kernel.iptables_migration import (
    parse_saved as parse_saved,
    removal_text as removal_text,
)  # the adapter uses them

BUILTINS = {
    "raw": ("PREROUTING", "OUTPUT"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}
DNS_PORT = 53

Rule = tuple  # the tokens of one rule: ("-A", chain, ...)


@dataclass(frozen=True)
class Jump:
    """A jump from another chain into ours, and where it must sit: by default anywhere
    (inserted first); `after` a given rule when that rule exists; `before` a given rule when it
    exists (else last)."""

    table: str
    builtin: str
    chain: str
    match: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()

    def spec(self) -> tuple[str, ...]:
        return (*self.match, "-j", self.chain)

    def rule(self) -> str:
        return line(("-A", self.builtin, *self.spec()))

    def placed(self, rules: list[tuple], at: int) -> bool:
        if self.after and self.after in rules and at < rules.index(self.after):
            return False
        if self.before and self.before in rules and at > rules.index(self.before):
            return False
        return True

    def insertion(self, rules: list[tuple]) -> Rule:
        """The rule that puts this jump in place, in a chain that does not hold it."""
        if self.after and self.after in rules:
            return ("-I", self.builtin, rules.index(self.after) + 2, *self.spec())
        if self.before:
            if self.before in rules:
                return ("-I", self.builtin, rules.index(self.before) + 1, *self.spec())
            return ("-A", self.builtin, *self.spec())
        return ("-I", self.builtin, 1, *self.spec())


LOCAL = ("-m", "addrtype", "--dst-type", "LOCAL")
DOCKER_USER = "DOCKER-USER"


def jumps(prefix: str) -> list[Jump]:
    """Our jumps. The one from DOCKER-USER is wanted only where that chain exists."""
    return [
        Jump("raw", "PREROUTING", f"{prefix}-PREROUTING"),
        Jump("filter", DOCKER_USER, f"{prefix}-ISOLATE", before=("-j", "RETURN")),
        Jump("filter", "FORWARD", f"{prefix}-FORWARD", after=("-j", DOCKER_USER)),
        Jump("nat", "POSTROUTING", f"{prefix}-POSTROUTING"),
        Jump("nat", "PREROUTING", f"{prefix}-DNAT", LOCAL),
        Jump("nat", "OUTPUT", f"{prefix}-DNAT", LOCAL),
    ]


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


def _to_port(chain: str, n: Network, ip, b, verdict: str) -> Rule:
    return (
        "-A",
        chain,
        "-d",
        _host(ip, 4 if ip.version == 4 else 6),
        "-o",
        n.bridge,
        "-p",
        b.proto,
        "-m",
        b.proto,
        "--dport",
        b.container_port,
        "-m",
        "conntrack",
        "--ctstate",
        "DNAT",
        "-j",
        verdict,
    )


def _isolate_rules(prefix: str, networks: list[Network], published: dict, foreign: list[str]) -> list[Rule]:
    """DROP only. Internal networks first (nothing in or out, even replies, even DNATed), then
    replies go on, then for every network: its published ports (when DNATed there), its own
    containers (ICC), and nothing else may enter; and nothing of ours may enter a bridge that
    is not ours (EGRESS)."""
    iso, egress = f"{prefix}-ISOLATE", f"{prefix}-EGRESS"
    rules: list[Rule] = []
    for n in networks:
        if n.internal:
            rules += [
                ("-A", iso, "-i", n.bridge, "!", "-o", n.bridge, "-j", "DROP"),
                ("-A", iso, "-o", n.bridge, "!", "-i", n.bridge, "-j", "DROP"),
            ]
    if networks:
        rules.append(("-A", iso, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"))
    for n in networks:
        rules += [_to_port(iso, n, ip, b, "RETURN") for ip, b in published[n.id]]
    for n in networks:
        rules.append(("-A", iso, "-i", n.bridge, "-o", n.bridge, "-j", "RETURN" if n.icc else "DROP"))
    for n in networks:
        rules.append(("-A", iso, "-o", n.bridge, "-j", "DROP"))
    if foreign:
        rules += [("-A", iso, "-i", n.bridge, "-j", egress) for n in networks if not n.internal]
        rules.append(("-A", egress, "-m", "conntrack", "--ctstate", "DNAT", "-j", "RETURN"))
        rules += [("-A", egress, "-o", f, "-j", "DROP") for f in foreign]
    return rules


def _forward_rules(prefix: str, networks: list[Network], published: dict) -> list[Rule]:
    """The ACCEPTs, after ISOLATE has dropped what may not pass. They hold on their own too
    (should ISOLATE be flushed, nothing enters a network that was not let in here)."""
    fwd = f"{prefix}-FORWARD"
    rules: list[Rule] = [("-A", fwd, "-j", f"{prefix}-ISOLATE")] if networks else []
    for n in networks:
        if not n.internal:
            rules.append(
                ("-A", fwd, "-o", n.bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
            )
        rules += [_to_port(fwd, n, ip, b, "ACCEPT") for ip, b in published[n.id]]
        if n.icc:
            rules.append(("-A", fwd, "-i", n.bridge, "-o", n.bridge, "-j", "ACCEPT"))
        if not n.internal:
            rules.append(("-A", fwd, "-i", n.bridge, "-j", "ACCEPT"))
    return rules


def _nat_rules(chain: str, n: Network, version: int) -> list[Rule]:
    if n.internal or not n.masquerade:
        return []
    return [("-A", chain, "-s", pool, "!", "-o", n.bridge, "-j", "MASQUERADE") for pool in n.pools(version)]


def _host(ip, version: int) -> str:
    return f"{ip}/{32 if version == 4 else 128}"


def _port_rules(post: str, dnat: str, n: Network, published, version: int) -> list[Rule]:
    """DNAT from any local address (or the binding's own) to the container; masquerade hairpin
    traffic, and (IPv4) what comes from loopback, which route_localnet lets out."""
    rules = []
    for ip, b in published:
        dst = ("-d", _host(b.host_ip, version)) if b.host_ip else ()
        to = f"{ip}:{b.container_port}" if version == 4 else f"[{ip}]:{b.container_port}"
        rules.append(
            (
                "-A",
                dnat,
                *dst,
                "-p",
                b.proto,
                "-m",
                b.proto,
                "--dport",
                b.host_port,
                "-j",
                "DNAT",
                "--to-destination",
                to,
            )
        )
        rules.append(
            (
                "-A",
                post,
                "-s",
                _host(ip, version),
                "-d",
                _host(ip, version),
                "-p",
                b.proto,
                "-m",
                b.proto,
                "--dport",
                b.container_port,
                "-j",
                "MASQUERADE",
            )
        )
    if published and version == 4:
        rules.append(("-A", post, "-s", "127.0.0.0/8", "-o", n.bridge, "-j", "MASQUERADE"))
    return rules


def _gateway_dns_rules(prefix: str, networks: list[Network], version: int) -> tuple[list[Rule], list[Rule]]:
    """(raw, nat) rules that keep each gateway's DNS port its own network's: no published port
    captures it, and only the host and the network's own subnets on its bridge reach it."""
    pre, dns, dnat = f"{prefix}-PREROUTING", f"{prefix}-DNS", f"{prefix}-DNAT"
    raw: list[Rule] = []
    nat: list[Rule] = []
    for n in networks:
        for gw in (g for g in n.gateways() if g.version == version):
            g = _host(gw.ip, version)
            nat += [
                ("-A", dnat, "-d", g, "-p", proto, "-m", proto, "--dport", DNS_PORT, "-j", "RETURN")
                for proto in ("udp", "tcp")
            ]
            raw.append(("-A", dns, "-d", g, "-i", "lo", "-j", "RETURN"))
            raw += [("-A", dns, "-s", pool, "-d", g, "-i", n.bridge, "-j", "RETURN") for pool in n.pools(version)]
            raw.append(("-A", dns, "-d", g, "-j", "DROP"))
    if raw:
        raw[:0] = [("-A", pre, "-p", proto, "-m", proto, "--dport", DNS_PORT, "-j", dns) for proto in ("udp", "tcp")]
    return raw, nat


def render(
    prefix: str,
    networks: Iterable[Network],
    version: int,
    endpoints: Iterable[Endpoint] = (),
    foreign: Iterable[str] = (),
) -> dict[str, list[Rule]]:
    """{table: [rules as token tuples]} for our chains in one address family. `foreign` names
    the bridges on the host that are not ours (those that carry no route through a gateway)."""
    post, dnat = f"{prefix}-POSTROUTING", f"{prefix}-DNAT"
    ordered = sorted(networks, key=lambda n: n.bridge)
    own = {n.bridge for n in ordered}
    others = sorted({f for f in foreign if is_valid_ifname(f) and f not in own})
    endpoints = list(endpoints)
    published = {n.id: _published(n, endpoints, version) for n in ordered}
    raw_dns, nat_dns = _gateway_dns_rules(prefix, ordered, version)
    out: dict[str, list[Rule]] = {"raw": [], "filter": [], "nat": []}
    if ordered and version == 4:
        out["raw"].append(("-A", f"{prefix}-PREROUTING", "-d", "127.0.0.0/8", "!", "-i", "lo", "-j", "DROP"))
    out["raw"] += raw_dns
    out["filter"] = _isolate_rules(prefix, ordered, published, others) + _forward_rules(prefix, ordered, published)
    # What the host delivers to itself (to a gateway address, say) leaves through lo and is never
    # source-NATed: a host's DNS query to a gateway keeps the gateway as its source.
    if ordered:
        out["nat"].append(("-A", post, "-o", "lo", "-j", "RETURN"))
    out["nat"] += nat_dns
    for n in ordered:
        out["nat"] += _port_rules(post, dnat, n, published[n.id], version) + _nat_rules(post, n, version)
    return out


def _chain_exists(tables: Saved, table: str, chain: str) -> bool:
    return chain in BUILTINS.get(table, ()) or chain in tables.get(table, {})


def jump_fixes(prefix: str, tables: Saved) -> tuple[dict[str, list[Rule]], list[str]]:
    """The rules that bring our jumps where they belong, per table, and the problems they fix:
    a jump missing, out of place, there twice, or left by an older version (into a chain of ours
    from a chain that should not hold it). Positions are computed on a copy of each chain that
    every fix is applied to, in the order iptables-restore will apply them."""
    fixes: dict[str, list[Rule]] = {t: [] for t in TABLES}
    problems: list[str] = []
    work = {t: {c: list(rs) for c, rs in tables.get(t, {}).items()} for t in TABLES}
    wanted = [j for j in jumps(prefix) if _chain_exists(tables, j.table, j.builtin)]
    wanted_at = {(j.table, j.builtin, j.spec()) for j in wanted}
    own = {c for names in chains(prefix).values() for c in names}
    for table in TABLES:
        for chain, rules in work[table].items():
            if chain in own:
                continue
            for r in list(rules):
                stale = (
                    len(r) >= 2
                    and r[-2] in ("-j", "-g")
                    and r[-1].startswith(f"{prefix}-")
                    and (table, chain, r) not in wanted_at
                )
                if stale and all(_SAFE_TOKEN.fullmatch(t) for t in r):
                    fixes[table].append(("-D", chain, *r))
                    rules.remove(r)
                    problems.append(f"stale jump -A {chain} {' '.join(r)} ({table})")
    for j in wanted:
        rules = work[j.table].setdefault(j.builtin, [])
        at = [i for i, r in enumerate(rules) if r == j.spec()]
        if len(at) == 1 and j.placed(rules, at[0]):
            continue
        problems.append(
            f"{'missing' if not at else 'misplaced' if len(at) == 1 else 'duplicate'} jump {j.rule()} ({j.table})"
        )
        fixes[j.table] += [("-D", j.builtin, *j.spec()) for _ in at]
        rules[:] = [r for r in rules if r != j.spec()]
        fix = j.insertion(rules)
        fixes[j.table].append(fix)
        rules.insert(fix[2] - 1 if fix[0] == "-I" else len(rules), j.spec())
    return fixes, problems


def table_text(prefix: str, table: str, rules: list[Rule], fixes: Sequence[Rule] = ()) -> str:
    """One table of iptables-restore --noflush input: declaring our chains flushes them, then
    their rules, then the jump fixes."""
    lines = [f"*{table}"]
    lines += [f":{safe(name)} - [0:0]" for name in chains(prefix)[table]]
    lines += [line(r) for r in rules]
    lines += [line(r) for r in fixes]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def restore_text(prefix: str, rules: dict[str, list[Rule]], fixes: dict[str, list[Rule]] | None = None) -> str:
    """All of our tables, checked token by token (KernelError on an unsafe one)."""
    fixes = fixes or {}
    return "".join(table_text(prefix, t, rules.get(t, []), fixes.get(t, [])) for t in TABLES)


def drift(prefix: str, wanted: dict[str, list[Rule]], tables: Saved) -> list[str]:
    """How the kernel's rules differ from what we want: jumps (missing, misplaced, duplicated,
    stale), missing chains, and chains whose rule count differs (iptables-save rewrites rules,
    so counts are compared)."""
    _, problems = jump_fixes(prefix, tables)
    for table, names in chains(prefix).items():
        for name in names:
            want = sum(1 for r in wanted.get(table, []) if r[1] == name)
            have = tables.get(table, {}).get(name)
            if have is None:
                problems.append(f"missing chain {name} ({table})")
            elif len(have) != want:
                problems.append(f"chain {name} ({table}) has {len(have)} rules, expected {want}")
    return problems
