"""The nftables firewall adapter against a real kernel, in a namespace of the test's own: our
table as data, changes by elements, the static iptables rule, drift element by element, and the
monitor that tells damage from others' changes and from our own."""

import ipaddress
import subprocess
import threading
import time

import pytest

from plugin.domain.errors import KernelError
from plugin.domain.model import Endpoint, Network, Subnet
from plugin.domain.ports import PortBinding
from plugin.kernel import nft
from plugin.kernel.nft import NftFirewall

from ..waiting import wait_for
from .conftest import run

STATIC = "-A FORWARD -m mark --mark 0x1000000/0x1000000 -m comment --comment PBTI -j ACCEPT"
NET = Network(
    id="a" * 64,
    bridge="pt-br1",
    ipv6=True,
    subnets=(
        Subnet(ipaddress.ip_network("10.200.9.0/24"), ipaddress.ip_interface("10.200.9.1/24")),
        Subnet(ipaddress.ip_network("fd70:6201:9::/64"), ipaddress.ip_interface("fd70:6201:9::1/64")),
    ),
)
EP = Endpoint(
    id="e" * 64,
    network_id=NET.id,
    host_ifname="pth1",
    container_ifname="ptc1",
    mac="02:00:00:00:00:09",
    address4=ipaddress.ip_interface("10.200.9.2/24"),
    address6=ipaddress.ip_interface("fd70:6201:9::2/64"),
    ports=(PortBinding("tcp", 80, "", 8080), PortBinding("udp", 53, "127.0.0.1", 5353, 4)),
)
BARE = Endpoint(**{**EP.__dict__, "ports": ()})


@pytest.fixture
def fw(netns):
    f = NftFirewall("PBTI", netns=netns)
    yield f
    f.close()


def forward(netns):
    return [l for l in run(netns, "iptables-nft", "-S", "FORWARD").splitlines() if l.startswith("-A")]


def test_changes_by_elements_keep_the_table_equal_to_the_state(fw, netns):
    fw.sync([], [], [])
    assert fw.drift([], []) == []
    fw.add_network(NET)
    fw.add_network(NET)  # a retry doubles nothing
    assert fw.drift([NET], [BARE]) == []
    fw.change_ports(NET, BARE, EP)
    assert fw.drift([NET], [EP]) == []
    assert "udp . 5353 : 53" in run(netns, "nft", "list", "map", "inet", "pbti", "port4_at").replace("127.0.0.1 . ", "")
    fw.change_ports(NET, EP, BARE)
    assert fw.drift([NET], [BARE]) == []
    fw.set_foreign(["docker0", "virbr0", "pt-br1"], ["pt-br1"])
    assert fw.drift([NET], [BARE]) == []
    with pytest.raises(KernelError):  # withdrawn twice: the caller then syncs
        fw.change_ports(NET, EP, BARE)
    fw.remove_network(NET)
    assert fw.drift([], []) == []
    fw.remove_all()
    assert "pbti" not in run(netns, "nft", "list", "tables")


def test_drift_names_each_element_and_chain_that_differs(fw, netns):
    fw.sync([NET], [EP], [])
    run(netns, "nft", "delete", "element", "inet", "pbti", "to4_any", "{ tcp . 8080 }")
    run(netns, "nft", "add", "element", "inet", "pbti", "bridges", '{ "stray0" }')
    run(netns, "nft", "flush", "chain", "inet", "pbti", "forward")
    problems = fw.drift([NET], [EP])
    assert "to4_any: element tcp . 8080 : 10.200.9.2 is missing" in problems
    assert "bridges: element stray0 is not in the state" in problems
    assert "chain forward has 0 rules, expected 20" in problems, problems
    fw.sync([NET], [EP], [])
    assert fw.drift([NET], [EP]) == []


def test_the_static_rule_sits_after_docker_user_once_and_only_where_a_filter_table_is(fw, netns):
    fw.sync([], [], [])
    assert "filter" not in run(netns, "nft", "list", "tables")  # no iptables here: nothing written
    run(netns, "iptables-nft", "-N", "DOCKER-USER")
    run(netns, "iptables-nft", "-A", "FORWARD", "-i", "other0", "-j", "ACCEPT")
    run(netns, "iptables-nft", "-I", "FORWARD", "1", "-j", "DOCKER-USER")
    assert fw.drift([], []) == ["static rule in iptables-nft FORWARD is missing"]
    fw.sync([], [], [])
    assert forward(netns)[:3] == ["-A FORWARD -j DOCKER-USER", STATIC, "-A FORWARD -i other0 -j ACCEPT"]
    run(netns, "iptables-nft", "-D", "FORWARD", "-j", "DOCKER-USER")
    run(netns, "iptables-nft", "-A", "FORWARD", "-j", "DOCKER-USER")  # moved below ours
    run(netns, "iptables-nft", "-A", "FORWARD", *STATIC.split()[2:])  # and ours doubled
    assert fw.drift([], []) == ["static rule in iptables-nft FORWARD is misplaced or doubled"]
    fw.sync([], [], [])
    rules = forward(netns)
    assert rules.count(STATIC) == 1 and rules.index("-A FORWARD -j DOCKER-USER") < rules.index(STATIC)
    fw.remove_all()
    assert STATIC not in forward(netns) and "-A FORWARD -i other0 -j ACCEPT" in forward(netns)


def test_the_static_rule_goes_from_a_forward_that_no_longer_needs_it(fw, netns):
    """Issue 18: dockerd set FORWARD's policy to DROP and we wrote our rule; then the policy went
    back to ACCEPT with nothing else in the chain (dockerd gone, or "iptables": false): ours is
    taken away, not kept for ever."""
    run(netns, "iptables-nft", "-P", "FORWARD", "DROP")
    fw.sync([], [], [])
    assert forward(netns) == [STATIC]
    run(netns, "iptables-nft", "-P", "FORWARD", "ACCEPT")
    assert fw.drift([], []) == ["static rule in iptables-nft FORWARD is no longer needed"]
    fw.sync([], [], [])
    assert forward(netns) == [] and fw.drift([], []) == []
    run(netns, "iptables-nft", "-P", "FORWARD", "DROP")  # and back when it is needed again
    assert fw.drift([], []) == ["static rule in iptables-nft FORWARD is missing"]
    fw.sync([], [], [])
    assert forward(netns) == [STATIC]


def test_the_monitor_reports_others_damage_and_ignores_our_changes_and_theirs_elsewhere(fw, netns):
    fw.sync([NET], [BARE], [])
    calls = []
    threading.Thread(target=fw.watch, args=(lambda: calls.append(time.monotonic()),), daemon=True).start()
    assert wait_for(lambda: len(calls) == 1, 10), "a check when the monitor starts"
    time.sleep(0.3)
    fw.change_ports(NET, BARE, EP)  # ours
    fw.change_ports(NET, EP, BARE)
    run(netns, "nft", "add", "table", "inet", "someone_else")  # theirs, elsewhere
    run(netns, "nft", "add", "chain", "inet", "someone_else", "c")
    run(netns, "iptables-nft", "-t", "nat", "-N", "DOCKER")
    time.sleep(0.5)
    assert len(calls) == 1, "no check for changes that are not damage to us"
    run(netns, "nft", "delete", "element", "inet", "pbti", "self", '{ "pt-br1" . "pt-br1" }')
    assert wait_for(lambda: len(calls) == 2, 5), "damage to our table is reported"
    run(netns, "iptables-nft", "-N", "DOCKER-USER")  # the filter table appears
    assert wait_for(lambda: len(calls) == 3, 5), "a new filter table is reported (it needs our rule)"
    run(netns, "nft", "delete", "table", "inet", "someone_else")


def test_the_kernels_notifications_parse_into_the_changes_made(netns):
    """What nftevents reads from the real kernel: each object of a transaction, then the
    generation naming the process (nft) that committed it."""
    from plugin.kernel import nftevents

    sock = nft._in_netns(netns, nftevents.open_socket)
    try:
        subprocess.run(
            ["ip", "netns", "exec", netns, "nft", "-f", "-"],
            check=True,
            input="add table inet pbev\nadd chain inet pbev c\nadd rule inet pbev c accept\n",
            text=True,
        )
        run(netns, "nft", "delete", "table", "inet", "pbev")
        events, deadline = [], time.monotonic() + 5
        while len([e for e in events if isinstance(e, nftevents.Generation)]) < 2 and time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            events += nftevents.parse(sock.recv(1 << 16))
    finally:
        sock.close()
    changes = [e for e in events if isinstance(e, nftevents.Change)]
    assert changes[:3] == [
        nftevents.Change("add", "table", "inet", "pbev"),
        nftevents.Change("add", "chain", "inet", "pbev", "c"),
        nftevents.Change("add", "rule", "inet", "pbev", "c"),
    ]
    assert nftevents.Change("delete", "table", "inet", "pbev") in changes[3:]
    assert [e.process for e in events if isinstance(e, nftevents.Generation)] == ["nft", "nft"]
