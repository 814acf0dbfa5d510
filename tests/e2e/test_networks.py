"""Networks and endpoints through a real dockerd: subnets, names, connect/disconnect, options."""

import ipaddress
import json

import pytest

from .dockerenv import AUTO_POOL, IFPREFIX, PLUGIN, docker, free_subnet, free_subnet6, ifaces, our_rules, sh


def bridge_addresses(dk, network, family="inet"):
    out = json.loads(sh("ip", "-j", "addr", "show", "dev", f"pt-{dk.network_id(network)[:12]}").stdout)
    return [f"{a['local']}/{a['prefixlen']}" for a in out[0]["addr_info"] if a["family"] == family]


def ping(dk, network, target, v6=False):
    cmd = ("ping6",) if v6 else ("ping",)
    return dk.run_once(network, *cmd, "-c1", "-W3", target, check=False)


def test_explicit_subnet_ping_by_ip_and_by_name(dk):
    subnet = free_subnet()
    net = dk.network("--subnet", subnet)
    web = dk.run(net)
    ip = dk.ip(web, net)
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(subnet)
    assert ip.endswith(".2")  # .1 is the gateway
    assert ping(dk, net, ip).returncode == 0
    res = ping(dk, net, web)
    assert res.returncode == 0 and ip in res.stdout
    nid = dk.network_id(net)
    bridge = ifaces()[f"pt-{nid[:12]}"]
    assert bridge["linkinfo"]["info_kind"] == "bridge"


def test_automatic_subnets_come_from_the_default_pool_and_never_repeat(dk):
    a, b = dk.network(), dk.network()
    sa = ipaddress.ip_network(docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", a))
    sb = ipaddress.ip_network(docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", b))
    assert sa.subnet_of(AUTO_POOL) and sb.subnet_of(AUTO_POOL)
    assert not sa.overlaps(sb)
    c = dk.run(a)
    assert ping(dk, a, c).returncode == 0


@pytest.mark.parametrize("driver", [PLUGIN, f"{PLUGIN}:latest"])
def test_short_and_tagged_driver_names(dk, driver):
    net = dk.network("--subnet", free_subnet(), driver=driver, ipam=driver)
    assert docker("network", "inspect", "-f", "{{.Driver}}", net) == driver
    web = dk.run(net)
    assert ping(dk, net, web).returncode == 0


def test_docker_builtin_ipam_with_pybridge_driver(dk):
    subnet = free_subnet()
    net = dk.network("--subnet", subnet, ipam=None)
    assert docker("network", "inspect", "-f", "{{.IPAM.Driver}}", net) == "default"
    web = dk.run(net)
    assert ipaddress.ip_address(dk.ip(web, net)) in ipaddress.ip_network(subnet)
    assert ping(dk, net, web).returncode == 0


def test_connect_and_disconnect(dk):
    a = dk.network("--subnet", free_subnet())
    b = dk.network("--subnet", free_subnet())
    c = dk.run(a)
    peer = dk.run(b)
    links_before = set(ifaces())
    docker("network", "connect", b, c)
    assert "eth1" in dk.exec(c, "ip", "addr").stdout
    assert dk.exec(c, "ping", "-c1", "-W3", peer).returncode == 0
    new = set(ifaces()) - links_before
    assert any(n.startswith("pth") for n in new), new
    docker("network", "disconnect", b, c)
    assert "eth1" not in dk.exec(c, "ip", "addr").stdout
    assert not any(n.startswith("pth") for n in set(ifaces()) - links_before)


def test_static_ip_and_its_refusal_when_taken(dk):
    subnet = ipaddress.ip_network(free_subnet())
    static = str(subnet.network_address + 50)
    net = dk.network("--subnet", str(subnet))
    c = dk.run(net, "--ip", static)
    assert dk.ip(c, net) == static
    res = sh(
        "docker",
        "run",
        "--rm",
        "--network",
        net,
        "--ip",
        static,
        "--dns",
        "127.0.0.1",
        "pybridge-test-busybox",
        "true",
        check=False,
    )
    assert res.returncode != 0
    assert f"{static} is already in use" in res.stderr


def test_ip_range_limits_dynamic_addresses(dk):
    subnet = ipaddress.ip_network(free_subnet())
    ip_range = list(subnet.subnets(new_prefix=25))[1]
    net = dk.network("--subnet", str(subnet), "--ip-range", str(ip_range))
    for _ in range(2):
        c = dk.run(net)
        assert ipaddress.ip_address(dk.ip(c, net)) in ip_range
    assert bridge_addresses(dk, net) == [f"{subnet.network_address + 1}/{subnet.prefixlen}"]


def test_aux_address_is_never_handed_out(dk):
    subnet = ipaddress.ip_network(free_subnet(29))
    aux = str(subnet.network_address + 2)
    net = dk.network("--subnet", str(subnet), "--aux-address", f"router={aux}")
    got = {dk.ip(dk.run(net), net) for _ in range(3)}
    assert aux not in got
    assert got == {str(subnet.network_address + i) for i in (3, 4, 5)}


def test_aux_address_stays_reserved_after_gc(dk):
    """Issue 8, item 8: gc released the aux reservation once the lease grace had passed, so the
    address could be handed out twice."""
    import json

    subnet = ipaddress.ip_network(free_subnet(29))
    aux = str(subnet.network_address + 2)
    net = dk.network("--subnet", str(subnet), "--aux-address", f"router={aux}")
    sock = f"/run/docker/plugins/{PLUGIN}.sock"
    report = json.loads(
        sh("curl", "-s", "-X", "POST", "--unix-socket", sock, "http://x/pybridge/gc?lease_grace=0").stdout
    )
    assert report["errors"] == [] and not any(aux in r for r in report["released_leases"])
    res = sh(
        "docker",
        "run",
        "--rm",
        "--network",
        net,
        "--ip",
        aux,
        "--dns",
        "127.0.0.1",
        "pybridge-test-busybox",
        "true",
        check=False,
    )
    assert res.returncode != 0 and f"address {aux} is already in use" in res.stderr


def test_ipv6_dual_stack(dk):
    v4, v6 = free_subnet(), free_subnet6()
    net = dk.network("--ipv6", "--subnet", v4, "--subnet", v6)
    a = dk.run(net)
    addr6 = dk.ip(a, net, v6=True)
    assert ipaddress.ip_address(addr6) in ipaddress.ip_network(v6)
    assert ping(dk, net, addr6, v6=True).returncode == 0
    gw6 = str(ipaddress.ip_network(v6).network_address + 1)
    assert f"default via {gw6}" in dk.exec(a, "ip", "-6", "route").stdout


def test_mtu_option(dk):
    net = dk.network("--subnet", free_subnet(), "-o", "com.docker.network.driver.mtu=1400")
    c = dk.run(net)
    assert "mtu 1400" in dk.exec(c, "ip", "link", "show", "eth0").stdout
    assert ifaces()[f"pt-{dk.network_id(net)[:12]}"]["mtu"] == 1400


def test_bridge_name_option(dk):
    name = f"ptbr{dk.prefix[-6:]}"
    net = dk.network("--subnet", free_subnet(), "-o", f"com.docker.network.bridge.name={name}")
    assert name in ifaces()
    c = dk.run(net)
    ports = [n for n, l in ifaces().items() if n.startswith("pth") and l.get("master") == name]
    assert len(ports) == 1
    docker("rm", "-f", c)
    docker("network", "rm", net)
    assert name not in ifaces()


def test_pool_exhaustion_names_the_pool(dk):
    subnet = free_subnet(30)  # .1 gateway, .2 the only host address
    net = dk.network("--subnet", subnet)
    dk.run(net)
    res = dk.run_once(net, "true", check=False)
    assert res.returncode != 0
    assert f"no free address left in pool {subnet}" in res.stderr


def test_explicit_subnet_overlapping_one_of_ours_is_refused(dk):
    subnet = ipaddress.ip_network(free_subnet())
    dk.network("--subnet", str(subnet))
    ok, err = dk.try_network("--subnet", str(list(subnet.subnets(new_prefix=25))[0]))
    assert not ok
    assert f"overlaps pool {subnet} already held by pybridge" in err


def test_explicit_subnet_overlapping_a_host_route_is_refused(dk):
    subnet = ipaddress.ip_network(free_subnet())
    dummy = f"pbtd{dk.prefix[-6:]}"
    sh("ip", "link", "add", dummy, "type", "veth", "peer", "name", f"pbte{dk.prefix[-6:]}")
    try:
        sh("ip", "addr", "add", f"{subnet.network_address + 1}/{subnet.prefixlen}", "dev", dummy)
        sh("ip", "link", "set", dummy, "up")
        ok, err = dk.try_network("--subnet", str(subnet))
        assert not ok
        assert f"overlaps host route {subnet} (dev {dummy})" in err
    finally:
        sh("ip", "link", "del", dummy, check=False)


def test_routes_in_other_tables_count_too(dk):
    subnet = ipaddress.ip_network(free_subnet())
    sh("ip", "route", "add", "blackhole", str(subnet), "table", "4242")
    try:
        ok, err = dk.try_network("--subnet", str(list(subnet.subnets(new_prefix=26))[1]))
        assert not ok
        assert f"overlaps host route {subnet} (blackhole, table 4242)" in err
    finally:
        sh("ip", "route", "del", "blackhole", str(subnet), "table", "4242", check=False)


@pytest.mark.parametrize(
    "option, message",
    [
        ("com.docker.network.driver.mtu=abc", "invalid com.docker.network.driver.mtu 'abc'"),
        ("com.docker.network.driver.mtu=70000", "must be between 68 and 65535"),
        ("com.docker.network.bridge.name=bad;name", "invalid com.docker.network.bridge.name 'bad;name'"),
        ("com.docker.network.bridge.name=averyveryverylongname", "invalid com.docker.network.bridge.name"),
        (
            "com.docker.network.bridge.enable_icc=maybe",
            "invalid value 'maybe' for com.docker.network.bridge.enable_icc",
        ),
        ("pybridge.no.such.option=1", "unknown option 'pybridge.no.such.option'"),
        # issue 8, item 1: a scope ID carried a newline and rules of the caller's choosing into
        # ip6tables-restore; host_binding_ipv4 is an IPv4 address and nothing else
        (
            "com.docker.network.bridge.host_binding_ipv4=::1%0 -j RETURN\nCOMMIT\n*filter\n-I INPUT 1 -j ACCEPT\nCOMMIT\n",
            "invalid com.docker.network.bridge.host_binding_ipv4",
        ),
        ("com.docker.network.bridge.host_binding_ipv4=::1", "expected an IPv4 address"),
        ("com.docker.network.bridge.name=br0\n", "invalid com.docker.network.bridge.name"),
        # Docker 28's gateway modes: nat, nat-unprotected, routed and, on internal networks, isolated
        ("com.docker.network.bridge.gateway_mode_ipv4=isolated", "isolated is only for an --internal network"),
        (
            "com.docker.network.bridge.gateway_mode_ipv6=bridged",
            "invalid com.docker.network.bridge.gateway_mode_ipv6 'bridged'",
        ),
        (
            "com.docker.network.bridge.trusted_host_interfaces=eth0:bad;name",
            "invalid com.docker.network.bridge.trusted_host_interfaces",
        ),
    ],
)
def test_bad_options_fail_clearly_and_leave_nothing(dk, option, message):
    before = our_rules()
    v6 = ("--ipv6", "--subnet", free_subnet6()) if "host_binding" in option else ()
    ok, err = dk.try_network(*v6, "--subnet", free_subnet(), "-o", option)
    assert not ok
    assert message in err
    assert our_rules() == before
    # the dk fixture checks that no link, rule, state row, pool or lease is left behind


@pytest.mark.parametrize(
    "name, message",
    [("docker0", "it is Docker's bridge"), (f"{IFPREFIX}-taken", "reserved for the links pybridge makes")],
)
def test_dockers_bridge_and_our_own_names_cannot_be_taken_over(dk, name, message):
    """Issue 8, item 7: -o com.docker.network.bridge.name=docker0 added our gateway to Docker's
    bridge and dropped its traffic."""
    before = sh("ip", "-o", "addr", "show", "dev", "docker0").stdout
    ok, err = dk.try_network("--subnet", free_subnet(), "-o", f"com.docker.network.bridge.name={name}")
    assert not ok and message in err
    assert sh("ip", "-o", "addr", "show", "dev", "docker0").stdout == before
    assert name not in ifaces() or name == "docker0"


def test_an_isolated_internal_network_has_no_gateway_and_its_containers_still_talk(dk):
    """gateway_mode_ipv4=isolated: no address on the bridge (the host cannot be reached), no
    default route. dockerd 28+ asks GwAllocCheck and reserves no gateway address at all."""
    net = dk.network(
        "--subnet", free_subnet(), "--internal", "-o", "com.docker.network.bridge.gateway_mode_ipv4=isolated"
    )
    a, b = dk.run(net), dk.run(net)
    bridge = f"{IFPREFIX}-{dk.network_id(net)[:12]}"
    assert sh("ip", "-4", "-o", "addr", "show", "dev", bridge).stdout.strip() == ""
    assert "default" not in sh("docker", "exec", a, "ip", "route").stdout
    assert sh("docker", "exec", a, "ping", "-c1", "-W2", dk.ip(b, net), check=False).returncode == 0
    if int(docker("version", "-f", "{{.Server.Version}}").split(".")[0]) >= 28:
        assert docker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", net) == ""


def test_gateway_outside_subnet_is_refused(dk):
    ok, err = dk.try_network("--subnet", free_subnet(), "--gateway", "10.206.255.1")
    assert not ok and "gateway" in err.lower()
