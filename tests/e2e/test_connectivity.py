"""What crosses the bridge, shown by traffic: outbound NAT, isolation both ways, ICC off,
internal networks. The "outside world" is a namespace this test creates, reached through a
veth with an address from 203.0.113.0/24 (never 192.0.2.0/24, the real uplink here)."""

import ipaddress
import subprocess
import sys
import uuid
from dataclasses import dataclass

import pytest

from .dockerenv import elements, free_subnet, host_routes, sh

LISTENER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(4); s.settimeout(float(sys.argv[3]))
try:
    while True:
        c, peer = s.accept(); print(peer[0], flush=True); c.close()
except socket.timeout:
    pass
"""


@dataclass
class Outside:
    ns: str
    host_ip: str
    ip: str
    host_ip6: str = ""
    ip6: str = ""

    def listen(self, port: int, seconds: float = 8) -> subprocess.Popen:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", LISTENER, self.ip, str(port), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        sh(
            "ip",
            "netns",
            "exec",
            self.ns,
            "sh",
            "-c",
            f"for i in $(seq 50); do ss -ltn | grep -q ':{port} ' && exit 0; sleep 0.1; done; exit 1",
        )
        return proc


@pytest.fixture
def outside(engine):
    tag = uuid.uuid4().hex[:6]
    taken = [n for n in host_routes() if n.version == 4]
    for block in ipaddress.ip_network("203.0.113.0/24").subnets(new_prefix=30):
        if not any(block.overlaps(t) for t in taken):
            break
    else:
        pytest.fail("no free /30 in 203.0.113.0/24")
    host_ip, ns_ip = str(block.network_address + 1), str(block.network_address + 2)
    ns, host_if, ns_if = f"pbt-out-{tag}", f"pbto{tag}", f"pbtp{tag}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", ns)
        sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        sh("ip", "-n", ns, "link", "set", ns_if, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", host_ip)
        net6 = f"fd70:6201:ffff:{int(tag[:4], 16):x}"
        sh("ip", "addr", "add", f"{net6}::1/64", "dev", host_if, "nodad")
        sh("ip", "-n", ns, "addr", "add", f"{net6}::2/64", "dev", ns_if, "nodad")
        sh("ip", "-n", ns, "-6", "route", "add", "default", "via", f"{net6}::1")
        yield Outside(ns, host_ip, ns_ip, f"{net6}::1", f"{net6}::2")
    finally:
        sh("ip", "link", "del", host_if, check=False)
        sh("ip", "netns", "del", ns, check=False)


def connect(dk, network, ip, port, *args):
    return dk.run_once(network, "sh", "-c", f"echo hi | nc -w 3 {ip} {port}", args=args, check=False)


def reaches_out(dk, network, outside, port) -> bool:
    """A container of the network connects to a listener in the outside namespace."""
    listener = outside.listen(port, seconds=10)
    try:
        return connect(dk, network, outside.ip, port).returncode == 0
    finally:
        listener.kill()
        listener.wait()


def can_ping(dk, container, ip):
    return dk.exec(container, "ping", "-c1", "-W2", ip, check=False).returncode == 0


def test_outbound_traffic_is_masqueraded(dk, outside):
    net = dk.network("--subnet", free_subnet())
    listener = outside.listen(18081)
    res = connect(dk, net, outside.ip, 18081)
    out, _ = listener.communicate(timeout=20)
    assert res.returncode == 0, res.stderr
    assert out.split() == [outside.host_ip]  # the host's address, not the container's


def test_masquerade_can_be_turned_off(dk, outside):
    subnet = free_subnet()
    net = dk.network("--subnet", subnet, "-o", "com.docker.network.bridge.enable_ip_masquerade=false")
    listener = outside.listen(18082)
    res = connect(dk, net, outside.ip, 18082)
    out, _ = listener.communicate(timeout=20)
    assert res.returncode == 0, res.stderr
    assert ipaddress.ip_address(out.split()[0]) in ipaddress.ip_network(subnet)


def test_networks_are_isolated_from_each_other_and_from_docker_bridges(dk):
    a = dk.network("--subnet", free_subnet())
    b = dk.network("--subnet", free_subnet())
    d = dk.network("--subnet", free_subnet(), driver="bridge", ipam=None)
    ca, cb, cd = dk.run(a), dk.run(b), dk.run(d)
    ia, ib, idk = dk.ip(ca, a), dk.ip(cb, b), dk.ip(cd, d)
    assert can_ping(dk, ca, dk.ip(dk.run(a), a))  # same network: yes
    assert not can_ping(dk, ca, ib) and not can_ping(dk, cb, ia)  # pybridge <-> pybridge
    assert not can_ping(dk, ca, idk) and not can_ping(dk, cd, ia)  # pybridge <-> Docker bridge


def test_icc_off_stops_traffic_between_containers_but_not_outbound(dk, outside):
    net = dk.network("--subnet", free_subnet(), "-o", "com.docker.network.bridge.enable_icc=false")
    c1, c2 = dk.run(net), dk.run(net)
    assert not can_ping(dk, c1, dk.ip(c2, net))
    listener = outside.listen(18083)
    res = connect(dk, net, outside.ip, 18083)
    listener.communicate(timeout=20)
    assert res.returncode == 0, res.stderr


def test_internal_network_reaches_nothing_outside(dk, outside):
    net = dk.network("--subnet", free_subnet(), "--internal")
    c1, c2 = dk.run(net, "-p", "28999:80"), dk.run(net)
    assert ("tcp", 28999) not in elements("to4_any")  # nothing published
    assert can_ping(dk, c1, dk.ip(c2, net))
    assert "default" not in dk.exec(c1, "ip", "route").stdout
    listener = outside.listen(18084, seconds=5)
    res = connect(dk, net, outside.ip, 18084)
    out, _ = listener.communicate(timeout=20)
    assert res.returncode != 0 and out.strip() == ""
    other = dk.network("--subnet", free_subnet())
    assert not can_ping(dk, dk.run(other), dk.ip(c1, net))


@pytest.mark.skipif(
    __import__("os").environ.get("PYBRIDGE_TEST_NO_DOCKERD_RESTART") == "1", reason="PYBRIDGE_TEST_NO_DOCKERD_RESTART=1"
)
def test_isolation_survives_a_dockerd_restart(dk):
    """dockerd rewrites its chains at start and puts its rules first in FORWARD."""
    from .dockerenv import restart_dockerd, wait_plugin_socket

    a = dk.network("--subnet", free_subnet())
    d = dk.network("--subnet", free_subnet(), driver="bridge", ipam=None)
    restart_dockerd()
    assert wait_plugin_socket(30)
    ca, cd = dk.run(a), dk.run(d)
    assert not can_ping(dk, cd, dk.ip(ca, a)) and not can_ping(dk, ca, dk.ip(cd, d))
    assert can_ping(dk, ca, dk.ip(dk.run(a), a))
