"""Issue 8, items 5 and 6, by traffic through a real dockerd: loopback stays loopback, an
administrator's DOCKER-USER rules come first, no bridge that is not ours is reachable unless a
published port leads there, internal means nothing leaves, and no mapping captures a gateway's
DNS. "Outside" and "LAN" machines are namespaces these tests make."""

import os
import subprocess
import sys
import uuid

import pytest

from .dockerenv import (
    PLUGIN,
    STATIC,
    STATIC_LINE,
    docker,
    elements,
    free_port,
    free_subnet,
    gateway_of,
    sandbox,
    sh,
    static_program,
    wait_for,
)
from .test_connectivity import LISTENER, connect, outside  # noqa: F401  (fixture)
from .test_dns import ask_from
from .test_ports import SERVER, fetch

UDP_SINK_C = r"""
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a; memset(&a, 0, sizeof a);
    a.sin_family = AF_INET; a.sin_port = htons(atoi(argv[1]));
    if (bind(s, (struct sockaddr *)&a, sizeof a)) return 1;
    for (;;) {
        char buf[256]; int n = recv(s, buf, sizeof buf - 1, 0);
        if (n > 0) { buf[n] = 0; printf("%s\n", buf); fflush(stdout); }
    }
}
"""


@pytest.fixture(scope="session")
def udp_sink(tmp_path_factory):
    """A static program for the busybox image that prints every UDP datagram it receives."""
    return static_program(tmp_path_factory.mktemp("udpsink"), "udpsink", UDP_SINK_C)


def send_udp_from(container: str, ip: str, port: int, payload: str) -> None:
    """One datagram sent from inside a container's network namespace."""
    code = (
        "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))"
    )
    sh("nsenter", f"--net={sandbox(container)}", sys.executable, "-c", code, ip, str(port), payload)


def bridge(dk, net):
    return f"pt-{dk.network_id(net)[:12]}"


# item 5
def test_loopback_is_unreachable_from_a_neighbour_on_a_bridge_with_route_localnet(dk, neighbour):
    """route_localnet=1 (set for loopback-published ports) let a LAN neighbour on the bridge, or
    a container with NET_RAW, reach 127.0.0.1: host services and ports published there."""
    net = dk.network("--subnet", free_subnet())
    published = free_port()
    dk.run(net, "-p", f"127.0.0.1:{published}:80", cmd=SERVER)
    br = bridge(dk, net)
    assert open(f"/proc/sys/net/ipv4/conf/{br}/route_localnet").read().strip() == "1"
    assert wait_for(lambda: fetch("127.0.0.1", published) == "pong", 15), "the host reaches it"
    service = free_port()
    listener = subprocess.Popen(
        [sys.executable, "-c", LISTENER, "127.0.0.1", str(service), "8"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert wait_for(lambda: f"127.0.0.1:{service} " in sh("ss", "-Hltn").stdout, 10)
        gw = gateway_of(dk, net)
        ns, dev = neighbour(br, f"{gw.rsplit('.', 1)[0]}.250/24", gw)
        # the neighbour routes 127.0.0.0/8 to the host, as an attacker on the segment would (its
        # own lo is down, so it has no local route for 127.0.0.0/8 in the way)
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv4.conf.{dev}.route_localnet=1")
        sh("ip", "-n", ns, "route", "add", "127.0.0.0/8", "via", gw, "dev", dev)
        code = (
            "import socket, sys; s = socket.socket(); s.settimeout(3); "
            "print(s.connect_ex(('127.0.0.1', int(sys.argv[1]))))"
        )
        for port in (service, published):
            res = sh("ip", "netns", "exec", ns, sys.executable, "-c", code, str(port), check=False)
            assert res.stdout.strip() not in ("0", ""), f"127.0.0.1:{port} answered a neighbour"
    finally:
        out, _ = listener.communicate(timeout=30)
    assert out.strip() == "", f"the host service saw {out.split()}"


# item 6
def test_administrators_docker_user_rules_come_first_even_after_our_rule_is_repaired(dk, outside):
    net = dk.network("--subnet", free_subnet())
    port = free_port()
    listener = outside.listen(port, seconds=60)
    rule = ["DOCKER-USER", "-d", f"{outside.ip}/32", "-i", bridge(dk, net), "-j", "DROP"]
    try:
        assert connect(dk, net, outside.ip, port).returncode == 0, "control: out it goes"
        sh("iptables", "-I", *rule)
        assert connect(dk, net, outside.ip, port).returncode != 0, "the administrator's rule holds"
        # our static rule is lost (a firewall reload, a reinstall) and healing puts it back,
        # after the jump to DOCKER-USER
        sh("iptables", "-D", *STATIC)
        assert wait_for(lambda: STATIC_LINE in sh("iptables", "-S", "FORWARD").stdout, 15)
        fw = sh("iptables", "-S", "FORWARD").stdout.splitlines()
        assert fw.index("-A FORWARD -j DOCKER-USER") < fw.index(STATIC_LINE)
        assert connect(dk, net, outside.ip, port).returncode != 0, "and still holds after the repair"
    finally:
        sh("iptables", "-D", *rule, check=False)
    assert connect(dk, net, outside.ip, port).returncode == 0
    listener.kill()


@pytest.fixture
def user_bridge():
    """A bridge that is neither Docker's nor ours (libvirt's or LXD's would look like this), with
    a 'virtual machine' namespace behind it listening on TCP port 80."""
    tag = uuid.uuid4().hex[:6]
    br, ns, host_if, ns_if = f"pbtv{tag}", f"pbt-vm-{tag}", f"pbtw{tag}", f"pbtx{tag}"
    subnet = free_subnet()
    base = subnet.rsplit(".", 1)[0]
    proc = None
    try:
        sh("ip", "link", "add", br, "type", "bridge")
        sh("ip", "addr", "add", f"{base}.1/24", "dev", br)
        sh("ip", "link", "set", br, "up")
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", host_if, "master", br, "up")
        sh("ip", "link", "set", ns_if, "netns", ns)
        sh("ip", "-n", ns, "addr", "add", f"{base}.2/24", "dev", ns_if)
        sh("ip", "-n", ns, "link", "set", ns_if, "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", f"{base}.1")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", LISTENER, f"{base}.2", "80", "120"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert wait_for(lambda: f"{base}.2:80 " in sh("ip", "netns", "exec", ns, "ss", "-Hltn").stdout, 10), (
            "the VM's listener never came up"
        )
        yield br, f"{base}.2"
    finally:
        if proc:
            proc.kill()
        sh("ip", "link", "del", host_if, check=False)
        sh("ip", "link", "del", br, check=False)
        sh("ip", "netns", "del", ns, check=False)


def _no_isolation_pending():
    import json

    out = sh("curl", "-s", "--unix-socket", f"/run/docker/plugins/{PLUGIN}.sock", "http://x/pybridge/doctor").stdout
    return not any("not isolated yet" in p for p in json.loads(out)["problems"])


def test_no_bridge_that_is_not_ours_is_reachable_unless_a_published_port_leads_there(dk, user_bridge):
    """Our networks were kept away from Docker's bridges by the names docker0 and br-+ only: a
    custom-named Docker bridge (or docker_gwbridge) and any other bridge were open."""
    import socket

    vm_bridge, vm = user_bridge
    with socket.socket() as probe:  # control: the VM listens, and the host reaches it
        probe.settimeout(3)
        assert probe.connect_ex((vm, 80)) == 0, "the VM is not reachable even from the host"
    custom = f"pbtc{uuid.uuid4().hex[:6]}"
    docker_net = dk.network(
        "--subnet", free_subnet(), "-o", f"com.docker.network.bridge.name={custom}", driver="bridge", ipam=None
    )
    port = free_port()
    web = dk.run(docker_net, "-p", f"{port}:80", cmd=SERVER)
    web_ip = dk.ip(web, docker_net)
    net = dk.network("--subnet", free_subnet())
    assert wait_for(_no_isolation_pending, 10), "the new bridges are isolated (netlink events, no polling)"
    assert connect(dk, net, web_ip, 80).returncode != 0, f"Docker's bridge {custom} was reachable"
    assert connect(dk, net, vm, 80).returncode != 0, f"the bridge {vm_bridge} was reachable"
    res = dk.run_once(net, "sh", "-c", f"nc -w 3 {gateway_of(dk, net)} {port}", check=False)
    assert "pong" in res.stdout, "a port Docker publishes is reachable through the host"
    assert custom in elements("foreign") and vm_bridge in elements("foreign")


def test_an_internal_network_sends_nothing_out_not_even_through_its_gateway(dk, udp_sink):
    """A container on an --internal network could send, one way, to another network's published
    port by addressing its own gateway (the host DNATed it across)."""
    port = free_port()
    pub = dk.network("--subnet", free_subnet())
    sink = dk.run(pub, "-p", f"{port}:9/udp", "-v", f"{udp_sink}:/bin/udpsink:ro", cmd=("udpsink", "9"))
    internal, normal = dk.network("--subnet", free_subnet(), "--internal"), dk.network("--subnet", free_subnet())
    inside, control = dk.run(internal), dk.run(normal)
    send_udp_from(inside, gateway_of(dk, internal), port, "from-internal")
    assert wait_for(
        lambda: (
            send_udp_from(control, gateway_of(dk, normal), port, "from-normal"),
            "from-normal" in docker("logs", sink),
        )[1],
        15,
    ), "control: a normal network reaches it"
    assert "from-internal" not in docker("logs", sink)


def test_a_published_port_53_does_not_capture_a_gateways_dns(dk):
    net, other = dk.network("--subnet", free_subnet()), dk.network("--subnet", free_subnet())
    gw = gateway_of(dk, other)
    dk.run(net, "-p", f"{gw}:53:80/tcp", "-p", f"{gw}:53:80/udp", cmd=SERVER)
    client, web = dk.run(other), dk.run(other)
    expected = f"ANSWER {dk.ip(web, other)}"
    assert wait_for(lambda: ask_from(sandbox(client), gw, web) == expected, 10)
    assert ask_from(sandbox(client), gw, web, tcp=True) == expected


@pytest.mark.skipif(
    os.environ.get("PYBRIDGE_TEST_NO_DOCKERD_RESTART") == "1", reason="PYBRIDGE_TEST_NO_DOCKERD_RESTART=1"
)
def test_the_static_rule_stays_after_docker_user_across_a_dockerd_restart(dk):
    from .dockerenv import restart_dockerd, wait_plugin_socket

    dk.network("--subnet", free_subnet())
    restart_dockerd()
    assert wait_plugin_socket(30)
    assert wait_for(lambda: STATIC_LINE in sh("iptables", "-S", "FORWARD").stdout, 15)
    rules = sh("iptables", "-S", "FORWARD").stdout.splitlines()
    assert rules.index("-A FORWARD -j DOCKER-USER") < rules.index(STATIC_LINE)
    assert rules.count(STATIC_LINE) == 1
