"""Cluster mode's VXLAN filter (issue 19, item 1), proven by traffic between "hosts" that are
network namespaces on an underlay of their own, each with pybridge's real adapters: its nftables
table (NftFirewall) and its VXLAN device on a bridge (Vxlan).

    hosts A, B: a cluster network (VNI 5001) with one container each (cA, cB); C: a third host,
    a member of another network (VNI 5002) only, with no pybridge of its own (what a hostile or
    compromised host can send is anything).

What must reach cB is A's kernel sending cA's traffic. What must not: VXLAN that a container on
A makes itself (a raw socket, with another cluster host's address as its source), VXLAN that a
process on A sends (plain or raw socket), and C's VXLAN for a network C does not have. And B's
bridge learns nothing from what arrives over VXLAN.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import uuid

import pytest

from plugin.domain.model import Network, Subnet
from plugin.kernel.nft import NftFirewall
from plugin.kernel.vxlan import Vxlan
from tests.vxlancraft import SCRIPT as CRAFT

VNI, OTHER_VNI, PORT = 5001, 5002, 4789
UNDERLAY = {"A": "10.206.241.1", "B": "10.206.241.2", "C": "10.206.241.3"}
OVERLAY = {"A": "10.250.7.2", "B": "10.250.7.3"}
GATEWAY = "10.250.7.1"
BRIDGE, VXDEV = "pbtx-br", "pbtx-vx"

LISTENER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 7777)); s.settimeout(0.2)
print("ready", flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    try:
        data, peer = s.recvfrom(200)
    except socket.timeout:
        continue
    print(data.decode(errors="replace"), flush=True)
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def ns(name: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", name, *argv, check=check)


def mac_of(netns: str, dev: str) -> str:
    out = sh("ip", "-n", netns, "-br", "link", "show", dev).stdout.split()
    return out[2]


@pytest.fixture
def cluster():
    tag = uuid.uuid4().hex[:5]
    n = {k: f"pbtx{tag}{k}" for k in ("u", "A", "B", "C", "cA", "cB")}
    made: list[str] = []
    fws: dict[str, NftFirewall] = {}
    try:
        for name in n.values():
            sh("ip", "netns", "add", name)
            made.append(name)
            ns(name, "ip", "link", "set", "lo", "up")
        sh("ip", "-n", n["u"], "link", "add", "u0", "type", "bridge")
        sh("ip", "-n", n["u"], "link", "set", "u0", "up")
        for h in ("A", "B", "C"):
            sh("ip", "-n", n[h], "link", "add", "eth0", "type", "veth", "peer", "name", f"to{h}", "netns", n["u"])
            sh("ip", "-n", n["u"], "link", "set", f"to{h}", "master", "u0", "up")
            sh("ip", "-n", n[h], "addr", "add", f"{UNDERLAY[h]}/24", "dev", "eth0")
            sh("ip", "-n", n[h], "link", "set", "eth0", "up")
        net = Network(
            id="d" * 64,
            bridge=BRIDGE,
            cluster="web",
            vni=VNI,
            subnets=(Subnet(ipaddress.ip_network("10.250.7.0/24"), ipaddress.ip_interface(f"{GATEWAY}/24")),),
        )
        for h in ("A", "B"):
            sh("ip", "-n", n[h], "link", "add", BRIDGE, "type", "bridge")
            sh("ip", "-n", n[h], "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
            sh("ip", "-n", n[h], "link", "set", BRIDGE, "up")
            ns(n[h], "sysctl", "-qw", "net.ipv4.ip_forward=1")
            c = n[f"c{h}"]
            sh("ip", "-n", n[h], "link", "add", "pbtx-h", "type", "veth", "peer", "name", "eth0", "netns", c)
            sh("ip", "-n", n[h], "link", "set", "pbtx-h", "master", BRIDGE, "up")
            sh("ip", "-n", c, "addr", "add", f"{OVERLAY[h]}/24", "dev", "eth0")
            sh("ip", "-n", c, "link", "set", "eth0", "up")
            sh("ip", "-n", c, "route", "add", "default", "via", GATEWAY)
            Vxlan(netns=n[h]).ensure_vxlan(VXDEV, VNI, UNDERLAY[h], PORT, 1450, BRIDGE)
            fw = NftFirewall("PBTX", netns=n[h])
            fws[h] = fw
            fw.sync([net], [], [])
        # C: a VXLAN device of the other network, no pybridge
        sh(
            "ip",
            "-n",
            n["C"],
            "link",
            "add",
            VXDEV,
            "type",
            "vxlan",
            "id",
            str(OTHER_VNI),
            "local",
            UNDERLAY["C"],
            "dev",
            "eth0",
            "dstport",
            str(PORT),
            "nolearning",
        )
        for h, other in (("A", "B"), ("B", "A")):
            peer_mac = mac_of(n[f"c{other}"], "eth0")
            Vxlan(netns=n[h]).set_peers(VXDEV, BRIDGE, {peer_mac: (UNDERLAY[other], frozenset({OVERLAY[other]}))})
        # A and B have the network, C has another one
        fws["A"].set_vxlan_members(PORT, [(VNI, UNDERLAY["B"]), (OTHER_VNI, UNDERLAY["C"])])
        fws["B"].set_vxlan_members(PORT, [(VNI, UNDERLAY["A"]), (OTHER_VNI, UNDERLAY["C"])])
        yield n, fws
    finally:
        for fw in fws.values():
            fw.close()
        for name in made:
            sh("ip", "netns", "del", name, check=False)


def reaching_cB(n, send) -> set[str]:
    """The tags that arrive at cB's port 7777 while `send()` runs."""
    listener = subprocess.Popen(
        ["ip", "netns", "exec", n["cB"], sys.executable, "-c", LISTENER, "2.5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        send()
        out = listener.communicate(timeout=15)[0]
    finally:
        listener.kill()
    return set(out.split())


def craft(n, where: str, mode: str, src: str, vni: int, tag: str, smac: str = "02:00:00:00:00:09") -> str:
    return ns(
        n[where],
        sys.executable,
        "-c",
        CRAFT,
        mode,
        src,
        UNDERLAY["B"],
        str(vni),
        mac_of(n["cB"], "eth0"),
        smac,
        OVERLAY["B"],
        f"udp:7777:{tag}",
        check=False,
    ).stdout.strip()


def plain(n, tag: str) -> None:
    ns(
        n["cA"],
        sys.executable,
        "-c",
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
        f"[s.sendto(b'{tag}', ('{OVERLAY['B']}', 7777)) for _ in range(3)]",
    )


def test_only_the_kernels_vxlan_of_a_member_reaches_a_container(cluster):
    n, fws = cluster
    # the overlay works: cA's datagrams, carried by A's VXLAN device, reach cB
    assert reaching_cB(n, lambda: plain(n, "overlay")) == {"overlay"}

    # a container on A makes VXLAN itself, with C's address (a cluster host) as the source:
    # before issue 19, A forwarded it (C is a peer of A) and B took it (C is a peer of B)
    sent = []
    assert reaching_cB(n, lambda: sent.append(craft(n, "cA", "raw", UNDERLAY["C"], VNI, "fromcontainer"))) == set()
    assert sent == ["sent"]  # the fault really happened: the raw socket sent it

    # a process on A: a plain socket (from A's own address, which B trusts) and a raw one
    results = []
    assert (
        reaching_cB(
            n,
            lambda: results.extend(
                [
                    craft(n, "A", "udp", UNDERLAY["A"], VNI, "processudp"),
                    craft(n, "A", "raw", UNDERLAY["A"], VNI, "processraw"),
                ]
            ),
        )
        == set()
    )
    assert [r.split()[0] for r in results] == ["refused", "refused"]  # dropped on A, as it is sent

    # C is a member of the other network only: its VXLAN for this one is dropped by B ...
    assert reaching_cB(n, lambda: craft(n, "C", "raw", UNDERLAY["C"], VNI, "othernet")) == set()
    # ... and taken once C has this network too (the filter is per VNI, and the crafted frame
    # itself is good)
    fws["B"].set_vxlan_members(PORT, [(VNI, UNDERLAY["A"]), (VNI, UNDERLAY["C"])])
    assert reaching_cB(n, lambda: craft(n, "C", "raw", UNDERLAY["C"], VNI, "member")) == {"member"}
    # changed behind our back: the drift names it
    ns(n["B"], "nft", "flush", "set", "inet", fws["B"].table, "vxlan_members4")
    assert any("vxlan_members4" in p for p in fws["B"].drift([], []))


def test_bridge_learns_nothing_over_vxlan(cluster):
    """A frame from a member with cB's own MAC as its source leaves cB's bridge entry where it is."""
    n, fws = cluster
    fws["B"].set_vxlan_members(PORT, [(VNI, UNDERLAY["A"]), (VNI, UNDERLAY["C"])])
    victim = mac_of(n["cB"], "eth0")
    ns(
        n["cB"],
        sys.executable,
        "-c",
        f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);s.sendto(b'x', ('{GATEWAY}', 9))",
    )  # the bridge learns cB on its own port
    seen = []

    def inject() -> None:
        craft(n, "C", "raw", UNDERLAY["C"], VNI, "spoofed", smac=victim)
        seen.append(ns(n["B"], "bridge", "fdb", "show", "br", BRIDGE).stdout)  # at once: cB's own
        # traffic (IPv6 neighbour discovery) would move a learned entry back soon

    got = reaching_cB(n, inject)
    fdb = seen[0]
    on_vxlan = [line for line in fdb.splitlines() if line.startswith(victim) and f"dev {VXDEV}" in line]
    assert on_vxlan == [], fdb  # (with learning on, cB's MAC moved there and cB was cut off)
    assert any(line.startswith(victim) and "dev pbtx-h" in line for line in fdb.splitlines()), fdb
    assert got == {"spoofed"}  # the frame itself was delivered: the injection happened
    learning = ns(n["B"], "ip", "-d", "link", "show", VXDEV).stdout
    assert "learning off" in learning.split("bridge_slave", 1)[1], learning


def test_unsafe_members_are_refused_and_nothing_is_written(cluster):
    n, fws = cluster
    before = ns(n["B"], "nft", "list", "set", "inet", fws["B"].table, "vxlan_members4").stdout
    for bad in (
        [(VNI, "10.206.241.2; drop")],
        [(1 << 24, UNDERLAY["A"])],
        [("5001", UNDERLAY["A"])],
        [(VNI, "fe80::1%eth0")],
        [UNDERLAY["A"]],
    ):
        with pytest.raises(Exception, match="unsafe"):
            fws["B"].set_vxlan_members(PORT, bad)
    assert ns(n["B"], "nft", "list", "set", "inet", fws["B"].table, "vxlan_members4").stdout == before


def test_over_wireguard_a_tunnel_source_counts_only_through_the_tunnel(cluster):
    """PYBRIDGE_CLUSTER_ENCRYPT=wireguard: members are tunnel addresses, and VXLAN from one of
    them arriving anywhere but the tunnel's device (a forged source on the underlay) is dropped.
    The same forged frame is taken without the tunnel rule: the injection itself is good."""
    n, fws = cluster
    forged = "10.254.0.3"  # C's frame claims a member's tunnel address as its source
    fws["B"].set_vxlan_members(PORT, [(VNI, forged)])
    assert reaching_cB(n, lambda: craft(n, "C", "raw", forged, VNI, "untunnelled")) == {"untunnelled"}
    fws["B"].set_vxlan_members(PORT, [(VNI, forged)], "pbtx-wg0")
    sent = []
    assert reaching_cB(n, lambda: sent.append(craft(n, "C", "raw", forged, VNI, "forged"))) == set()
    assert sent == ["sent"]
    # and the underlay addresses are no members any more: A's own kernel VXLAN is dropped too
    assert reaching_cB(n, lambda: plain(n, "clear")) == set()
    links = ns(n["B"], "nft", "list", "set", "inet", fws["B"].table, "vxlan_tunnel_links").stdout
    assert '"pbtx-wg0"' in links, links
