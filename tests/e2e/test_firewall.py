"""Issue 9 through a real dockerd: the upgrade from the iptables chains of earlier versions, and
the static rule with dockerd on iptables-legacy (dockerd restarted under it). Issue 18: an
administrator's own nftables rules next to ours, whichever firewall backend dockerd has."""

import ipaddress
import os
import subprocess
import uuid

import pytest

from plugin.domain.model import Network, Subnet
from tests.legacy_iptables import IptablesFirewall

from .dockerenv import (
    NFT,
    CHAIN_PREFIX,
    DOCKER_FIREWALL,
    ENGINE_TREE,
    MANAGED,
    STATIC,
    STATIC_LINE,
    docker,
    free_port,
    free_subnet,
    restart_dockerd,
    sh,
    wait_for,
    wait_plugin_socket,
)
from .test_connectivity import outside, reaches_out  # noqa: F401  (fixture)
from .test_ports import SERVER, fetch_from_ns

NO_RESTART = pytest.mark.skipif(
    os.environ.get("PYBRIDGE_TEST_NO_DOCKERD_RESTART") == "1", reason="PYBRIDGE_TEST_NO_DOCKERD_RESTART=1"
)


def old_chains() -> list[str]:
    return [
        l
        for tool in ("iptables-save", "ip6tables-save")
        for l in sh(tool).stdout.splitlines()
        if f"{CHAIN_PREFIX}-" in l
    ]


def test_an_upgrade_from_the_iptables_chains_loses_no_network_and_leaves_no_old_rule(dk, outside):
    subnet = free_subnet()
    net = dk.network("--subnet", subnet)
    bridge = f"pt-{dk.network_id(net)[:12]}"
    port = free_port()
    dk.run(net, "-p", f"{port}:80", cmd=SERVER)
    assert wait_for(lambda: fetch_from_ns(outside.ns, outside.host_ip, port) == "pong", 15)
    # what the previous version kept, written by its own adapter: chains, rules and jumps
    pool = ipaddress.ip_network(subnet)
    IptablesFirewall(CHAIN_PREFIX).sync(
        [
            Network(
                id=dk.network_id(net),
                bridge=bridge,
                subnets=(Subnet(pool, ipaddress.ip_interface(f"{pool.network_address + 1}/{pool.prefixlen}")),),
            )
        ]
    )
    assert any(l.startswith(f":{CHAIN_PREFIX}-FORWARD") for l in old_chains())
    docker("plugin", "disable", "-f", MANAGED)  # the upgrade: the new version starts
    docker("plugin", "enable", MANAGED)
    assert wait_plugin_socket()
    assert wait_for(lambda: old_chains() == [], 15), old_chains()
    assert wait_for(lambda: fetch_from_ns(outside.ns, outside.host_ip, port) == "pong", 15), "the port still answers"
    assert reaches_out(dk, net, outside, port + 1), "and the network still reaches out"


def _legacy_rules() -> list[str]:
    """Every rule, chain or policy other than ACCEPT in the iptables-legacy tables there are (a
    table, once made, stays registered; empty, it is nobody's)."""
    out = []
    for tool, names in (
        ("iptables-legacy", "/proc/net/ip_tables_names"),
        ("ip6tables-legacy", "/proc/net/ip6_tables_names"),
    ):
        try:
            tables = open(names).read().split()
        except OSError:
            continue
        for table in tables:
            out += [
                l
                for l in sh(tool, "-t", table, "-S").stdout.splitlines()
                if not l.endswith(" ACCEPT") or not l.startswith("-P ")
            ]
    return out


def _alternative(name: str) -> str:
    """The engine's alternative chosen now (/usr/sbin/iptables-nft, say), not the binary it
    leads to. An engine in a tree of its own (scripts/engine.sh) has its own."""
    return os.readlink(f"{ENGINE_TREE}/etc/alternatives/{name}")


def _choose(name: str, path: str) -> None:
    sh(*(("chroot", ENGINE_TREE) if ENGINE_TREE else ()), "update-alternatives", "--set", name, path)


@NO_RESTART
def test_with_dockerd_on_iptables_legacy_traffic_flows_and_the_static_rule_heals(dk, outside):
    if not os.path.exists("/usr/sbin/iptables-legacy"):
        pytest.skip("iptables-legacy is not installed")
    if DOCKER_FIREWALL == "nftables":
        pytest.skip("dockerd's firewall backend is nftables: it writes no iptables rules, legacy or not")
    if _legacy_rules():
        pytest.skip("this host has iptables-legacy rules; the test would not know what to clean")
    before = {n: _alternative(n) for n in ("iptables", "ip6tables")}
    try:
        for n in before:
            _choose(n, f"/usr/sbin/{n}-legacy")
        restart_dockerd()
        assert wait_plugin_socket(30)
        assert "-A FORWARD -j DOCKER-USER" in sh("iptables-legacy", "-S", "FORWARD").stdout, "dockerd went legacy"
        # dockerd sets FORWARD's policy to DROP when it turns forwarding on itself; here it is on
        # already, so the test does what dockerd does on a fresh host
        sh("iptables-legacy", "-P", "FORWARD", "DROP")
        assert wait_for(lambda: STATIC_LINE in sh("iptables-legacy", "-S", "FORWARD").stdout, 15)
        net = dk.network("--subnet", free_subnet())
        port = free_port()
        dk.run(net, "-p", f"{port}:80", cmd=SERVER)
        assert wait_for(lambda: fetch_from_ns(outside.ns, outside.host_ip, port) == "pong", 15), "in"
        assert reaches_out(dk, net, outside, port + 1), "out"
        sh("iptables-legacy", "-D", *STATIC)  # no events from legacy: the periodic check
        assert wait_for(lambda: STATIC_LINE in sh("iptables-legacy", "-S", "FORWARD").stdout, 15)
        assert wait_for(lambda: fetch_from_ns(outside.ns, outside.host_ip, port) == "pong", 15)
    finally:
        for n, path in before.items():
            _choose(n, path)
        restart_dockerd()
        wait_plugin_socket(30)
        for tool in ("iptables-legacy", "ip6tables-legacy"):  # what dockerd wrote there, which the test made
            sh(tool, "-P", "FORWARD", "ACCEPT", check=False)  # first: then our plugins have no rule to keep
            for table in ("filter", "nat", "mangle", "raw"):
                sh(tool, "-t", table, "-F", check=False)
                sh(tool, "-t", table, "-X", check=False)
        assert wait_for(lambda: _legacy_rules() == [], 10), _legacy_rules()


def test_an_administrators_nftables_rules_drop_what_they_drop_and_accept_opens_nothing(dk, outside):
    """What the README tells an administrator: a table of their own with a base chain on the
    forward hook. A drop there holds for pybridge's published ports (a packet must pass every base
    chain of the hook); an accept there opens nothing pybridge's isolation closes. Healing leaves
    their table alone."""
    net, other = dk.network("--subnet", free_subnet()), dk.network("--subnet", free_subnet())
    port = free_port()
    web = dk.run(net, "-p", f"{port}:80", cmd=SERVER)
    ip = dk.ip(web, net)
    assert wait_for(lambda: fetch_from_ns(outside.ns, outside.host_ip, port) == "pong", 15), "control"
    table = f"pbt_admin_{uuid.uuid4().hex[:6]}"
    rules = (
        f"table inet {table} {{\n  chain forward {{\n"
        f"    type filter hook forward priority filter - 10; policy accept;\n"
        f"    ip saddr {outside.ip} ip daddr {ip} tcp dport 80 drop\n"
        f"    ip daddr {ip} accept\n  }}\n}}\n"
    )
    res = subprocess.run([*NFT, "-f", "-"], input=rules, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    try:
        assert fetch_from_ns(outside.ns, outside.host_ip, port) == "", "the administrator's drop holds"
        direct = dk.run_once(other, "sh", "-c", f"nc -w 3 {ip} 80", check=False)
        assert "pong" not in direct.stdout, "their accept does not open another network's way in"
        assert plugin_problems() == [], "their table is not drift of ours"
    finally:
        sh(*NFT, "delete", "table", "inet", table)
    assert wait_for(lambda: fetch_from_ns(outside.ns, outside.host_ip, port) == "pong", 15), "open again"


def plugin_problems() -> list[str]:
    from .test_selfheal import plugin

    return plugin("GET", "/pybridge/doctor")["problems"]
