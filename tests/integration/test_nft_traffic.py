"""Traffic through our nftables table with whatever owns the rest of the firewall: a "host"
namespace with two of our networks (bridges and "containers" that are namespaces) and an uplink
to an "outside" namespace (203.0.113.0/30), all made by the test, and then in turn: no iptables
at all (a host whose dockerd runs with "iptables": false), iptables-nft with FORWARD's policy
DROP (what dockerd sets), and iptables-legacy with the same. Each case is proven by traffic, and
by the traffic stopping when our one static rule is taken away."""

import ipaddress
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid

import pytest

from plugin.domain.model import Endpoint, Network, Subnet
from plugin.domain.ports import PortBinding
from plugin.kernel.nft import NftFirewall

from ..dbusconf import bus_config
from ..waiting import wait_for

TOOLS = "/var/lib/pybridge-test-tools/firewalld"  # scripts/test.sh unpacks firewalld there


def firewalld_command() -> tuple[list[str], list[str], dict] | None:
    """(firewalld's argv, firewall-cmd's argv, environment) of the host's firewalld, or of the
    one scripts/test.sh unpacked (its configuration copied where each run may change it)."""
    if shutil.which("firewalld") and shutil.which("firewall-cmd"):
        return ["firewalld"], ["firewall-cmd"], {}
    if not os.path.isfile(f"{TOOLS}/usr/sbin/firewalld") or not shutil.which("dbus-daemon"):
        return None
    env = {"PYTHONPATH": f"{TOOLS}/usr/lib/python3/dist-packages"}
    return (
        ["/usr/bin/python3", f"{TOOLS}/usr/sbin/firewalld", "--default-config", f"{TOOLS}/usr/lib/firewalld"],
        ["/usr/bin/python3", f"{TOOLS}/usr/bin/firewall-cmd"],
        env,
    )


SERVER = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16); s.settimeout(1)
end = time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        c, peer = s.accept()
    except socket.timeout:
        continue
    c.sendall(peer[0].encode()); c.close()
"""
CLIENT = r"""
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5)
    print(c.recv(100).decode())
except OSError:
    print("-")
"""


def ns_run(ns, *argv, check=True):
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=check)


class World:
    """host (our bridges, ip_forward on), c1 and c2 on network 1, c3 on network 2, outside."""

    def __init__(self):
        tag = uuid.uuid4().hex[:5]
        self.names = {k: f"pbtt{tag}{k}" for k in ("h", "c1", "c2", "c3", "o")}
        self.servers: list[subprocess.Popen] = []
        for ns in self.names.values():
            subprocess.run(["ip", "netns", "add", ns], check=True)
            ns_run(ns, "ip", "link", "set", "lo", "up")
        h = self.h
        ns_run(h, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.net1 = self._bridge("pt-m1", "10.200.50")
        self.net2 = self._bridge("pt-m2", "10.200.51")
        self.ip = {}
        for c, br, prefix, last in (
            ("c1", "pt-m1", "10.200.50", 2),
            ("c2", "pt-m1", "10.200.50", 3),
            ("c3", "pt-m2", "10.200.51", 2),
        ):
            ns_run(h, "ip", "link", "add", f"v{c}", "type", "veth", "peer", "name", "eth0", "netns", self.names[c])
            ns_run(h, "ip", "link", "set", f"v{c}", "master", br, "up")
            ns_run(self.names[c], "ip", "addr", "add", f"{prefix}.{last}/24", "dev", "eth0")
            ns_run(self.names[c], "ip", "link", "set", "eth0", "up")
            ns_run(self.names[c], "ip", "route", "add", "default", "via", f"{prefix}.1")
            self.ip[c] = f"{prefix}.{last}"
        ns_run(h, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", self.o)
        ns_run(h, "ip", "addr", "add", "203.0.113.1/30", "dev", "up0")
        ns_run(h, "ip", "link", "set", "up0", "up")
        ns_run(self.o, "ip", "addr", "add", "203.0.113.2/30", "dev", "eth0")
        ns_run(self.o, "ip", "link", "set", "eth0", "up")
        self.ep = Endpoint(
            id="e" * 64,
            network_id=self.net1.id,
            host_ifname="vc1",
            container_ifname="eth0",
            mac="02:00:00:00:00:01",
            address4=ipaddress.ip_interface(f"{self.ip['c1']}/24"),
            ports=(PortBinding("tcp", 80, "", 8080),),
        )
        self.fw = NftFirewall("PBTT", netns=h)

    h = property(lambda self: self.names["h"])
    o = property(lambda self: self.names["o"])

    def _bridge(self, name, prefix):
        ns_run(self.h, "ip", "link", "add", name, "type", "bridge")
        ns_run(self.h, "ip", "addr", "add", f"{prefix}.1/24", "dev", name)
        ns_run(self.h, "ip", "link", "set", name, "up")
        return Network(
            id=name.ljust(64, "0"),
            bridge=name,
            subnets=(Subnet(ipaddress.ip_network(f"{prefix}.0/24"), ipaddress.ip_interface(f"{prefix}.1/24")),),
        )

    def serve(self, who, port):
        ns = self.names[who]
        self.servers.append(
            subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, str(port), "60"])
        )
        assert wait_for(lambda: f":{port} " in ns_run(ns, "ss", "-ltn").stdout, 10)

    def ask(self, who, ip, port) -> str:
        """What the server saw as our address, or '-' when nothing got through."""
        return ns_run(self.names[who], sys.executable, "-c", CLIENT, ip, str(port)).stdout.strip()

    def firewalld(self):
        """firewalld (nftables backend, default zone public) running in the host namespace,
        on a system bus of its own: nothing of the real host's is touched."""
        daemon, self.cmd, extra = firewalld_command()
        self.bus = f"/tmp/{self.h}-bus.sock"
        self.bus_conf = f"/tmp/{self.h}-bus.conf"
        with open(self.bus_conf, "w") as f:
            f.write(bus_config(self.bus))
        self.env = {**os.environ, **extra, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={self.bus}"}
        if extra:  # the unpacked one: a system configuration of this run's own
            self.etc = f"/tmp/{self.h}-firewalld"
            shutil.copytree(f"{TOOLS}/etc/firewalld", self.etc)
            daemon = daemon + ["--system-config", self.etc]
        self.daemons = [
            subprocess.Popen(
                ["dbus-daemon", f"--config-file={self.bus_conf}", "--nofork", "--nopidfile"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        ]
        assert wait_for(lambda: os.path.exists(self.bus), 10)
        self.daemons.append(
            subprocess.Popen(
                ["ip", "netns", "exec", self.h, *daemon, "--nofork", "--nopid"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        assert wait_for(lambda: self.firewall_cmd("--state").stdout.strip() == "running", 30)

    def firewall_cmd(self, *args):
        return subprocess.run([*self.cmd, *args], env=self.env, capture_output=True, text=True, timeout=60)

    def close(self):
        self.fw.close()
        for p in self.servers + list(reversed(getattr(self, "daemons", []))):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for ns in self.names.values():
            subprocess.run(["ip", "netns", "del", ns], check=False)
        for path in (getattr(self, "bus", None), getattr(self, "bus_conf", None)):
            if path and os.path.exists(path):
                os.unlink(path)
        if getattr(self, "etc", None):
            shutil.rmtree(self.etc, ignore_errors=True)


@pytest.fixture
def world(netns):  # netns: the integration tests' root check
    w = World()
    yield w
    w.close()


def expect_everything_our_firewall_promises(w):
    assert w.ask("c1", "203.0.113.2", 9000) == "203.0.113.1", "out, masqueraded"
    assert w.ask("o", "203.0.113.1", 8080) == "203.0.113.2", "a published port, from outside"
    assert w.ask("c2", w.ip["c1"], 80) == w.ip["c2"], "ICC"
    assert w.ask("c3", w.ip["c1"], 80) == "-", "another network of ours is isolated"
    assert w.ask("c3", "203.0.113.1", 8080) != "-", "but reaches a published port"
    assert w.ask("c2", "203.0.113.1", 8080) != "-", "hairpin, from the same network"
    assert w.ask("o", w.ip["c1"], 80) == "-", "nothing unpublished enters from outside"


@pytest.mark.parametrize("backend", ["none", "iptables-nft", "iptables-legacy"])
def test_traffic_with_each_owner_of_the_rest_of_the_firewall(world, backend):
    w = world
    w.serve("c1", 80)
    w.serve("o", 9000)
    if backend != "none":  # what dockerd does: FORWARD's policy DROP
        ns_run(w.h, backend, "-N", "DOCKER-USER")
        ns_run(w.h, backend, "-A", "FORWARD", "-j", "DOCKER-USER")
        ns_run(w.h, backend, "-P", "FORWARD", "DROP")
    w.fw.sync([w.net1, w.net2], [w.ep])
    assert w.fw.drift([w.net1, w.net2], [w.ep]) == []
    expect_everything_our_firewall_promises(w)
    if backend != "none":
        rule = [
            "FORWARD",
            "-m",
            "mark",
            "--mark",
            "0x1000000/0x1000000",
            "-m",
            "comment",
            "--comment",
            "PBTT",
            "-j",
            "ACCEPT",
        ]
        assert ns_run(w.h, backend, "-S", "FORWARD").stdout.splitlines()[2] == "-A " + " ".join(rule)
        ns_run(w.h, backend, "-D", *rule)
        assert w.ask("c1", "203.0.113.2", 9000) == "-", "without the static rule, FORWARD's policy drops it"
        assert w.fw.drift([w.net1, w.net2], [w.ep]) == [f"static rule in {backend} FORWARD is missing"]
        w.fw.sync([w.net1, w.net2], [w.ep])
        assert w.ask("c1", "203.0.113.2", 9000) == "203.0.113.1"
    # the published port goes away with its elements
    w.fw.change_ports(w.net1, w.ep, Endpoint(**{**w.ep.__dict__, "ports": ()}))
    assert w.ask("o", "203.0.113.1", 8080) == "-"


def test_traffic_with_firewalld_and_after_its_reload(world):
    """firewalld rejects what no zone allows, forwarded traffic and our DNS alike; our rules at
    the head of its chains let our networks' traffic through, and a reload (which rebuilds its
    table) is healed from the kernel's nftables notifications, without polling."""
    if firewalld_command() is None:
        if os.environ.get("PYBRIDGE_E2E") == "1":
            pytest.fail(f"firewalld is neither installed nor unpacked in {TOOLS} (scripts/test.sh unpacks it)")
        pytest.skip(f"firewalld is neither installed nor unpacked in {TOOLS} (scripts/test.sh unpacks it)")
    w = world
    w.serve("c1", 80)
    w.serve("o", 9000)
    gateway_dns = subprocess.Popen(
        ["ip", "netns", "exec", w.h, sys.executable, "-c", SERVER.replace('"0.0.0.0"', '"10.200.50.1"'), "53", "60"]
    )
    w.servers.append(gateway_dns)
    w.firewalld()
    assert w.ask("c1", "203.0.113.2", 9000) == "-", "control: firewalld rejects what no zone allows"
    w.fw.sync([w.net1, w.net2], [w.ep])
    assert w.fw.drift([w.net1, w.net2], [w.ep]) == []
    expect_everything_our_firewall_promises(w)
    assert w.ask("c1", "10.200.50.1", 53) == w.ip["c1"], "DNS to the gateway"
    assert w.ask("c3", "10.200.50.1", 53) == "-", "but not another network's"
    heals = []

    def heal():
        heals.append(time.monotonic())
        if w.fw.drift([w.net1, w.net2], [w.ep]):
            w.fw.sync([w.net1, w.net2], [w.ep])

    threading.Thread(target=w.fw.watch, args=(heal,), daemon=True).start()
    assert wait_for(lambda: len(heals) == 1, 10)
    probes, stop = [], threading.Event()

    def probe():  # traffic all along the reload: the longest outage is what it costs
        while not stop.is_set():
            began = time.monotonic()
            ok = w.ask("c1", "203.0.113.2", 9000) == "203.0.113.1"
            probes.append((time.monotonic(), ok, time.monotonic() - began))

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    called = time.monotonic()
    assert w.firewall_cmd("--reload").returncode == 0
    returned = time.monotonic()
    assert wait_for(lambda: probes and probes[-1][0] > returned and probes[-1][1], 10, 0.05), "healed after the reload"
    slowest = max(p[2] for p in probes)
    stop.set()
    prober.join()
    outage, start = 0.0, None
    for t, ok, _ in probes:
        if not ok and start is None:
            start = t
        elif ok and start is not None:
            outage, start = max(outage, t - start), None
    print(
        f"firewall-cmd --reload took {returned - called:.2f} s; {len(probes)} connections during it, "
        f"longest run of failures {outage:.2f} s, slowest connection {slowest:.2f} s (a SYN lost to the "
        f"reload is sent again after 1 s); checks started by events: {len(heals) - 1}"
    )
    assert len(heals) >= 2, "the reload was seen"
    assert w.ask("c1", "10.200.50.1", 53) == w.ip["c1"]


PING = r"""
import socket, struct, sys
def checksum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    return ~(s + (s >> 16)) & 0xffff
echo = struct.pack("!BBHHH", 8, 0, 0, 0x5042, 1) + b"pybridge"
echo = echo[:2] + struct.pack("!H", checksum(echo)) + echo[4:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(1.5)
s.sendto(echo, (sys.argv[1], 0))
try:
    while True:
        data, peer = s.recvfrom(1500)
        icmp = data[(data[0] & 15) * 4:]
        if peer[0] == sys.argv[1] and icmp[0] == 0 and icmp[4:6] == b"PB":
            print("reply"); break
except socket.timeout:
    print("-")
"""


def pings(ns, ip) -> bool:
    """An ICMP echo from the namespace is answered (a raw socket: no ping binary needed)."""
    return ns_run(ns, sys.executable, "-c", PING, ip).stdout.strip() == "reply"


def test_gateway_modes_and_trusted_interfaces_by_traffic(world):
    """Issue 18: Docker 28's gateway modes, each proven by what gets through. The outside
    namespace routes both networks' subnets through the host (what direct routing needs)."""
    w = world
    for c, port in (("c1", 80), ("c1", 81), ("c3", 82)):
        w.serve(c, port)
    w.serve("o", 9000)
    for subnet in ("10.200.50.0/24", "10.200.51.0/24"):
        ns_run(w.o, "ip", "route", "add", subnet, "via", "203.0.113.1")
    routed_ep = Endpoint(**{**w.ep.__dict__, "ports": (PortBinding("tcp", 80, "", 0, 4),)})

    # nat (the default): the container's own address is closed from outside, even its published port
    w.fw.sync([w.net1, w.net2], [w.ep])
    assert w.ask("o", w.ip["c1"], 80) == "-" and w.ask("o", "203.0.113.1", 8080) == "203.0.113.2"
    assert not pings(w.o, w.ip["c1"]) and pings(w.o, "203.0.113.1"), "no echo reply from a nat network"

    # routed: the published container port at the container's address, from outside and from
    # another network; nothing else; ICMP; no NAT either way; no host port
    routed = Network(**{**w.net1.__dict__, "routed": frozenset({4})})
    w.fw.sync([routed, w.net2], [routed_ep])
    assert w.fw.drift([routed, w.net2], [routed_ep]) == []
    assert w.ask("o", w.ip["c1"], 80) == "203.0.113.2", "published port, directly, not NATed"
    assert w.ask("o", w.ip["c1"], 81) == "-", "an unpublished port stays closed"
    # (c3's network is nat: masqueraded to whatever is not its own bridge, as Docker's are)
    assert w.ask("c3", w.ip["c1"], 80) == "10.200.50.1", "from another network, directly"
    assert w.ask("c3", w.ip["c1"], 81) == "-"
    assert w.ask("o", "203.0.113.1", 8080) == "-", "no host port"
    assert w.ask("c1", "203.0.113.2", 9000) == w.ip["c1"], "out without masquerade"
    assert pings(w.o, w.ip["c1"]), "ICMP"
    assert w.ask("c3", "203.0.113.2", 9000) == "203.0.113.1", "the other (nat) network is still masqueraded"

    # nat-unprotected: every port from outside, none from another network; NAT as ever
    unprotected = Network(**{**w.net2.__dict__, "unprotected": frozenset({4})})
    w.fw.sync([w.net1, unprotected], [w.ep])
    assert w.ask("o", w.ip["c3"], 82) == "203.0.113.2", "any port, directly"
    assert w.ask("c1", w.ip["c3"], 82) == "-", "but not from another network"
    assert w.ask("c3", "203.0.113.2", 9000) == "203.0.113.1", "masqueraded"
    assert w.ask("o", w.ip["c1"], 80) == "-", "the nat network next to it stays closed"

    # trusted host interfaces: published ports at the container's address, from those only
    trusted = Network(**{**w.net1.__dict__, "trusted": ("up0",)})
    w.fw.sync([trusted, w.net2], [w.ep])
    assert w.ask("o", w.ip["c1"], 80) == "203.0.113.2", "published port, directly, from up0"
    assert w.ask("o", w.ip["c1"], 81) == "-", "unpublished: closed"
    assert w.ask("c3", w.ip["c1"], 80) == "-", "another network is no trusted interface"
    assert w.ask("o", "203.0.113.1", 8080) == "203.0.113.2", "and the host port as ever"


def test_a_mark_another_table_set_before_ours_opens_nothing(world):
    """Issue 20, item 3: the static rule accepts whatever carries our mark bit, ahead of
    Docker's isolation; pybridge never cleared the bit on packets it had not marked, so another
    table's chain before ours (or tc, BPF: Calico's default mask includes the bit) opened
    FORWARD to anything. Here a table of another tool marks every forwarded packet at priority
    -300, and traffic to a bridge that is not ours, which FORWARD's policy drops, must stay
    dropped. Failed before: the SYN was accepted by the static rule."""
    w = world
    ns_run(w.h, "ip", "link", "add", "dk-m3", "type", "bridge")
    ns_run(w.h, "ip", "addr", "add", "10.200.52.1/24", "dev", "dk-m3")
    ns_run(w.h, "ip", "link", "set", "dk-m3", "up")
    c4 = f"{w.h}c4"
    subprocess.run(["ip", "netns", "add", c4], check=True)
    w.names["c4"] = c4  # removed with the world
    ns_run(c4, "ip", "link", "set", "lo", "up")
    ns_run(w.h, "ip", "link", "add", "vc4", "type", "veth", "peer", "name", "eth0", "netns", c4)
    ns_run(w.h, "ip", "link", "set", "vc4", "master", "dk-m3", "up")
    ns_run(c4, "ip", "addr", "add", "10.200.52.2/24", "dev", "eth0")
    ns_run(c4, "ip", "link", "set", "eth0", "up")
    ns_run(c4, "ip", "route", "add", "default", "via", "10.200.52.1")
    ns_run(w.o, "ip", "route", "add", "10.200.52.0/24", "via", "203.0.113.1")
    w.serve("c4", 80)
    w.serve("c1", 80)
    w.serve("o", 9000)
    ns_run(w.h, "iptables-nft", "-N", "DOCKER-USER")
    ns_run(w.h, "iptables-nft", "-A", "FORWARD", "-j", "DOCKER-USER")
    ns_run(w.h, "iptables-nft", "-P", "FORWARD", "DROP")
    w.fw.sync([w.net1, w.net2], [w.ep])
    assert w.ask("o", "10.200.52.2", 80) == "-", "FORWARD's policy drops it"
    ns_run(w.h, "nft", "add", "table", "inet", "pbttother")
    ns_run(w.h, "nft", "add", "chain", "inet", "pbttother", "markall", "{ type filter hook forward priority -300; }")
    ns_run(
        w.h,
        "nft",
        "add",
        "rule",
        "inet",
        "pbttother",
        "markall",
        "meta",
        "mark",
        "set",
        "meta",
        "mark",
        "or",
        "0x01000000",
        "counter",
    )
    assert w.ask("o", "10.200.52.2", 80) == "-", "another table's mark opened FORWARD through our static rule"
    assert "packets 0 " not in ns_run(w.h, "nft", "list", "chain", "inet", "pbttother", "markall").stdout, (
        "the other table's rule never marked anything: the test proves nothing"
    )
    expect_everything_our_firewall_promises(w)  # what we allow still goes through


def test_two_instances_on_one_host_share_the_mark_bit_and_neither_clears_the_others(world):
    """The bit is cleared before every instance's forward chain (unmark, priority -2), never in
    one instance's forward chain: there it cleared what the other instance's `allow` had set, and
    FORWARD's policy dropped all of that instance's traffic (CI found it: the product plugin and
    the test plugin side by side)."""
    w = world
    w.serve("c1", 80)
    w.serve("o", 9000)
    ns_run(w.h, "iptables-nft", "-N", "DOCKER-USER")
    ns_run(w.h, "iptables-nft", "-A", "FORWARD", "-j", "DOCKER-USER")
    ns_run(w.h, "iptables-nft", "-P", "FORWARD", "DROP")
    other = NftFirewall("PBTTOTHER", netns=w.h)  # another instance, with the default mark too
    try:
        other.sync([w.net2], [])
        w.fw.sync([w.net1], [w.ep])
        assert w.ask("c1", "203.0.113.2", 9000) == "203.0.113.1", "the first instance's traffic is dropped"
        assert w.ask("o", "203.0.113.1", 8080) == "203.0.113.2"
        assert w.ask("c3", "203.0.113.2", 9000) == "203.0.113.1", "the second instance's traffic is dropped"
    finally:
        other.remove_all()
        other.close()
