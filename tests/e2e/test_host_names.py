"""Container names from the host (issue 11, item 3), through a real systemd-resolved (see
hostdns.py): the plugin registers each network's DNS for its bridge with NETWORK.pybridge.internal
as routing domain (issue 20: never the network's bare name), so `getent hosts
web.app.pybridge.internal`, ping and an HTTP request from the host reach the container web of
network app; other names are not routed there (and go nowhere: the test resolver has no
upstream); the registration goes with the network."""

from __future__ import annotations

import ipaddress
import json
import os

import pytest

from .dockerenv import free_subnet, sh, wait_for
from .hostdns import Resolver, resolved_binary, stub_taken


@pytest.fixture
def resolver():
    binary = resolved_binary()
    if binary is None:  # scripts/test.sh unpacks it wherever it runs: there, its absence is a failure
        (pytest.fail if os.environ.get("PYBRIDGE_E2E") == "1" else pytest.skip)(
            "systemd-resolved is neither on this machine nor unpacked (scripts/test.sh unpacks it)"
        )
    if stub_taken():
        pytest.skip("127.0.0.53:53 is taken: the host runs a resolver of its own, which the test must not touch")
    r = Resolver(binary)
    try:
        r.start()
        assert wait_for(r.ready, 20), "systemd-resolved did not come up"
        yield r
    finally:
        r.stop()


SUFFIX = "pybridge.internal"


def test_container_names_resolve_and_answer_from_the_host(dk, resolver):
    net = dk.network("--subnet", free_subnet())
    web = dk.run(net, cmd=("httpd", "-f", "-p", "80", "-h", "/"))
    ip = dk.ip(web, net)
    name = f"{web}.{net}.{SUFFIX}"

    def resolved():
        res = resolver.lookup("getent", "hosts", name)
        return res.returncode == 0 and res.stdout.split()[0] == ip

    assert wait_for(resolved, 30), resolver.lookup("getent", "hosts", name)
    ping = resolver.lookup("busybox", "ping", "-c", "1", "-W", "5", name)
    assert ping.returncode == 0 and ip in ping.stdout, ping
    res = resolver.lookup("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", f"http://{name}/")
    assert res.returncode == 0 and res.stdout not in ("", "000"), res  # httpd answered, by name
    # a name outside the network's domain is not routed to it (and the test resolver has no upstream)
    assert resolver.lookup("getent", "hosts", f"{web}.not-{net}.{SUFFIX}").returncode != 0
    assert resolver.lookup("getent", "hosts", f"{web}.{net}").returncode != 0
    assert resolver.lookup("getent", "hosts", web).returncode != 0

    sh("docker", "rm", "-f", web)
    dk.containers.remove(web)
    sh("docker", "network", "rm", net)
    dk.networks.remove(net)
    assert wait_for(lambda: resolver.lookup("getent", "hosts", name).returncode != 0, 15), (
        "the name still resolves after the network is gone"
    )


def test_a_networks_name_takes_over_no_domain_of_the_host_and_the_hosts_queries_stay_home(dk, resolver):
    """Issue 20, item 1: a network's bare name was the host's routing domain, so with
    -o pybridge.dns.upstream=<its creator's server> every host lookup under that name went there
    (a network named com: all of .com). Now only NAME.NETWORK.pybridge.internal is routed to the
    network, and the network's DNS answers the host from its records, forwarding nothing: the
    creator's server sees no query from the host. Failed before: `anything.NETWORK` reached it."""
    from .test_dns import Upstream

    upstream = Upstream()
    try:
        net = dk.network("--subnet", free_subnet(), "-o", f"pybridge.dns.upstream=127.0.0.1:{upstream.port}")
        web = dk.run(net)
        ip = dk.ip(web, net)
        name = f"{web}.{net}.{SUFFIX}"
        assert wait_for(lambda: resolver.lookup("getent", "hosts", name).stdout.split()[:1] == [ip], 30), (
            resolver.lookup("getent", "hosts", name)
        )
        before = upstream.queries
        for other in (f"ext.{net}", f"bank.{net}", f"nope.{net}.{SUFFIX}", f"ext.pybridge.test.{net}.{SUFFIX}"):
            res = resolver.lookup("getent", "hosts", other)
            assert res.returncode != 0, (other, res.stdout)
        assert upstream.queries == before, "a lookup of the host reached the network creator's server"
    finally:
        upstream.close()


def test_the_plugin_reads_resolveds_own_servers_never_its_stub_nor_its_own_links(dk, resolver):
    """Issue 20, item 1: where the host's resolv.conf names resolved's stub, the upstreams are
    resolved's own servers (the stub routes pybridge's suffix back to pybridge: a loop, and one
    network reaching another's names). The real adapter against the real resolved: a link's
    server is read, a pybridge bridge's is not."""
    from jeepney import DBusAddress, new_method_call
    from jeepney.io.blocking import open_dbus_connection
    from jeepney.wrappers import Properties, unwrap_msg

    from plugin.kernel.resolved import ResolvedLinks
    from .hostdns import BUS

    link = "pbtest-up0"
    sh("ip", "link", "add", link, "type", "bridge")  # (no dummy module on every kernel)
    try:
        sh("ip", "link", "set", link, "up")
        with open(f"/sys/class/net/{link}/ifindex") as f:
            index = int(f.read())
        manager = DBusAddress(
            "/org/freedesktop/resolve1",
            bus_name="org.freedesktop.resolve1",
            interface="org.freedesktop.resolve1.Manager",
        )
        with open_dbus_connection(bus=f"unix:path={BUS}") as conn:
            # a loopback server, and no default route for the link: no lookup can leave the machine
            for method, signature, body in (
                ("SetLinkDefaultRoute", "ib", (index, False)),
                ("SetLinkDNS", "ia(iay)", (index, [(2, bytes([127, 0, 0, 99]))])),
            ):
                unwrap_msg(conn.send_and_get_reply(new_method_call(manager, method, signature, body), timeout=5))
        net = dk.network("--subnet", free_subnet())
        dk.run(net)
        nid = dk.network_id(net)
        bridge = f"pt-{nid[:12]}"
        gw = sh("ip", "-4", "-o", "addr", "show", "dev", bridge).stdout.split()[3].split("/")[0]

        def index_of(name):
            try:
                return int(open(f"/sys/class/net/{name}/ifindex").read())
            except OSError:
                return None

        def addresses_of(i):
            out = json.loads(sh("ip", "-j", "addr", "show").stdout)
            return {a["local"] for l in out if l["ifindex"] == i for a in l.get("addr_info", [])}

        def link_servers():
            with open_dbus_connection(bus=f"unix:path={BUS}") as conn:
                ((_, entries),) = unwrap_msg(conn.send_and_get_reply(Properties(manager).get("DNS"), timeout=5))
            return {(i, str(ipaddress.ip_address(bytes(raw)))) for i, _, raw in entries}

        # the running plugin registers the bridge with its gateway as server: that is in resolved
        assert wait_for(lambda: (index_of(bridge), gw) in link_servers(), 40), link_servers()
        # an instance that does not know the bridge as its own (another pybridge) leaves it out
        # all the same: a link's own address as its server is a bridge serving itself
        stranger = ResolvedLinks(f"unix:path={BUS}", index_of, addresses_of)
        stranger.publish({})
        assert stranger.servers() == ()  # not read yet: none
        assert wait_for(lambda: stranger.servers() == ("127.0.0.99",), 15), (stranger.servers(), link_servers())
        links = ResolvedLinks(f"unix:path={BUS}", index_of, addresses_of)
        links.publish({bridge: ((gw,), f"{net}.{SUFFIX}")})
        assert wait_for(lambda: links.servers() == ("127.0.0.99",), 15), (links.servers(), link_servers())
        links.publish({})
    finally:
        sh("ip", "link", "del", link, check=False)
