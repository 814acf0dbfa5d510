"""Issue 18 through a real dockerd: Docker 28's gateway modes (routed, nat-unprotected) and
trusted host interfaces, shown by traffic from the outside namespace, which routes the
networks' subnets through the host (what direct routing needs); then what a Docker 28+ user
writes on `docker run`: --gw-priority, IPv6-only networks, endpoint sysctls."""

from __future__ import annotations

import ipaddress

import pytest

from .dockerenv import docker, free_port, free_subnet, free_subnet6, sh, wait_for
from .test_connectivity import outside  # noqa: F401  (fixture)
from .test_ports import SERVER, fetch_from_ns

MODE4 = "com.docker.network.bridge.gateway_mode_ipv4"
MODE6 = "com.docker.network.bridge.gateway_mode_ipv6"
TRUSTED = "com.docker.network.bridge.trusted_host_interfaces"
LISTEN_81 = (
    "sh",
    "-c",
    "(while true; do echo other | nc -l -p 81; done) & while true; do echo pong | nc -l -p 80; done",
)


def engine_major() -> int:
    return int(docker("version", "-f", "{{.Server.Version}}").split(".")[0])


def needs(major: int):
    if engine_major() < major:
        pytest.skip(f"Docker {major} or later")


def route_through_host(outside, subnet: str) -> None:
    via = outside.host_ip6 if ":" in subnet else outside.host_ip
    sh("ip", "-n", outside.ns, "route", "replace", subnet, "via", via)


def network_routed_to(dk, outside, option: str) -> tuple[str, str]:
    """A network with the option, its subnet routed from the outside namespace through the host."""
    subnet = free_subnet()
    net = dk.network("--subnet", subnet, *(("-o", option) if option else ()))
    route_through_host(outside, subnet)
    return net, subnet


def peer_seen(outside, dk, network, port) -> str:
    """The source address the outside namespace sees when a container of the network connects."""
    listener = outside.listen(port, seconds=8)
    try:
        dk.run_once(network, "sh", "-c", f"echo hi | nc -w 3 {outside.ip} {port}", check=False)
    finally:
        listener.kill()
    return listener.communicate()[0].strip()


def test_routed_opens_published_container_ports_directly_with_no_nat(dk, outside):
    net, subnet = network_routed_to(dk, outside, f"{MODE4}=routed")
    other = dk.network("--subnet", free_subnet())
    port = free_port()
    web = dk.run(net, "-p", f"{port}:80", cmd=LISTEN_81)
    ip = dk.ip(web, net)
    assert wait_for(lambda: fetch_from_ns(outside.ns, ip, 80) == "pong", 15), "the published port, at its address"
    assert fetch_from_ns(outside.ns, ip, 81) == "", "an unpublished port stays closed"
    assert fetch_from_ns(outside.ns, outside.host_ip, port) == "", "no host port: nothing is NATed"
    assert "pong" in dk.run_once(other, "sh", "-c", f"nc -w 3 {ip} 80", check=False).stdout, (
        "another network reaches it directly"
    )
    assert ipaddress.ip_address(peer_seen(outside, dk, net, free_port())) in ipaddress.ip_network(subnet), (
        "out without masquerade"
    )


def test_nat_unprotected_opens_every_port_from_outside_but_not_from_other_networks(dk, outside):
    net, _ = network_routed_to(dk, outside, f"{MODE4}=nat-unprotected")
    other = dk.network("--subnet", free_subnet())
    web = dk.run(net, cmd=LISTEN_81)
    ip = dk.ip(web, net)
    assert wait_for(lambda: fetch_from_ns(outside.ns, ip, 81) == "other", 15), "an unpublished port, directly"
    assert "other" not in dk.run_once(other, "sh", "-c", f"nc -w 3 {ip} 81", check=False).stdout
    assert peer_seen(outside, dk, net, free_port()) == outside.host_ip, "masqueraded as ever"


def test_trusted_host_interfaces_reach_published_ports_at_the_containers_address(dk, outside):
    host_if = sh("ip", "-o", "addr", "show", "to", outside.host_ip).stdout.split()[1]
    net, _ = network_routed_to(dk, outside, f"{TRUSTED}={host_if}:pbt-none0")
    port = free_port()
    web = dk.run(net, "-p", f"127.0.0.1:{port}:80", cmd=LISTEN_81)
    ip = dk.ip(web, net)
    assert wait_for(lambda: fetch_from_ns(outside.ns, ip, 80) == "pong", 15), "published (on loopback), directly"
    assert fetch_from_ns(outside.ns, ip, 81) == "", "unpublished: closed"
    plain, _ = network_routed_to(dk, outside, "")
    web2 = dk.run(plain, "-p", f"127.0.0.1:{free_port()}:80", cmd=SERVER)
    assert fetch_from_ns(outside.ns, dk.ip(web2, plain), 80) == "", "a network without them stays closed"
    ok, err = dk.try_network("--subnet", free_subnet(), "-o", f"{TRUSTED}=eth0 eth1")
    assert not ok and "is not an interface name" in err


def test_routed_ipv6_next_to_nat_ipv4(dk, outside):
    """The common case: IPv6 routed (no NAT66), IPv4 NATed."""
    subnet6 = free_subnet6()
    net = dk.network("--subnet", free_subnet(), "--ipv6", "--subnet", subnet6, "-o", f"{MODE6}=routed")
    route_through_host(outside, subnet6)
    port = free_port()
    web = dk.run(net, "-p", f"{port}:80", cmd=SERVER)
    ip6 = dk.ip(web, net, v6=True)
    assert wait_for(lambda: fetch_from_ns(outside.ns, ip6, 80) == "pong", 15), "IPv6: the container port, directly"
    assert fetch_from_ns(outside.ns, outside.host_ip, port) == "pong", "IPv4: the host port"
    assert fetch_from_ns(outside.ns, outside.host_ip6, port) == "", "no IPv6 host port"


def test_gw_priority_picks_the_default_route(dk):
    needs(28)
    first, second = dk.network("--subnet", (s1 := free_subnet())), dk.network("--subnet", (s2 := free_subnet()))
    gw1, gw2 = (str(ipaddress.ip_network(s)[1]) for s in (s1, s2))
    for high, gw in ((second, gw2), (first, gw1)):
        low = first if high == second else second
        out = sh(
            "docker",
            "run",
            "--rm",
            "--dns",
            "127.0.0.1",
            "--network",
            low,
            "--network",
            f"name={high},gw-priority=10",
            "pybridge-test-busybox:latest",
            "ip",
            "route",
            "show",
            "default",
        ).stdout
        assert f"default via {gw} " in out, (high, out)


def test_an_ipv6_only_network(dk, outside):
    needs(28)
    subnet6 = free_subnet6()
    net = dk.network("--ipv4=false", "--ipv6", "--subnet", subnet6)
    assert docker("network", "inspect", "-f", "{{.EnableIPv4}} {{len .IPAM.Config}}", net) == "false 1"
    port = free_port()
    web = dk.run(net, "-p", f"{port}:80", cmd=SERVER)
    assert dk.ip(web, net) == "" and ipaddress.ip_address(dk.ip(web, net, v6=True)) in ipaddress.ip_network(subnet6)
    assert wait_for(lambda: fetch_from_ns(outside.ns, outside.host_ip6, port) == "pong", 15), "published on IPv6"
    assert fetch_from_ns(outside.ns, outside.host_ip, port) == "", "and not on IPv4"
    addrs = dk.exec(web, "ip", "-o", "addr", "show", "dev", "eth0").stdout
    assert " inet " not in addrs and " inet6 fd70" in addrs, addrs


def test_endpoint_sysctls_are_applied_in_the_container(dk):
    """dockerd itself writes com.docker.network.endpoint.sysctls into the container's
    namespace, for any driver (IFNAME: the container's interface of that network)."""
    needs(25)
    net = dk.network("--subnet", free_subnet())
    opt = "com.docker.network.endpoint.sysctls=net.ipv4.conf.IFNAME.log_martians=1"
    name = dk.run(None, "--network", f"name={net},driver-opt={opt}")
    assert dk.exec(name, "cat", "/proc/sys/net/ipv4/conf/eth0/log_martians").stdout.strip() == "1"
    assert dk.exec(name, "cat", "/proc/sys/net/ipv4/conf/lo/log_martians").stdout.strip() == "0", "that one only"
