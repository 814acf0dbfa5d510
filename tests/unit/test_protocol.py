"""The plugin protocol as dockerd speaks it (docs/protocol.md), through Flask's test client:
no Content-Type, empty bodies for handshakes, nulls, 200+JSON on success, 500+Err on failure,
404 for unknown methods."""

import json

import pytest

NID = "3c7e" + "a" * 60
EID = "9f1a" + "b" * 60
HEADERS = {"Accept": "application/vnd.docker.plugins.v1.2+json"}


def call(client, method, body=None, raw=None):
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    resp = client.post(f"/{method}", data=data, headers=HEADERS)  # no Content-Type, like dockerd
    return resp.status_code, json.loads(resp.data or b"null")


def create_network(client, subnet="10.200.1.0/24", generic=None, internal=False, ipv6=False):
    status, pool = call(
        client,
        "IpamDriver.RequestPool",
        {"AddressSpace": "pybridge-local", "Pool": subnet, "SubPool": "", "Options": {}, "V6": False},
    )
    assert status == 200, pool
    status, gw = call(
        client,
        "IpamDriver.RequestAddress",
        {"PoolID": pool["PoolID"], "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}},
    )
    assert status == 200, gw
    options = {"com.docker.network.enable_ipv6": ipv6, "com.docker.network.generic": generic or {}}
    if internal:
        options["com.docker.network.internal"] = True
    status, out = call(
        client,
        "NetworkDriver.CreateNetwork",
        {
            "NetworkID": NID,
            "Options": options,
            "IPv4Data": [{"AddressSpace": "pybridge-local", "Pool": pool["Pool"], "Gateway": gw["Address"]}],
            "IPv6Data": [],
        },
    )
    return status, out, pool


@pytest.mark.parametrize(
    "method",
    [
        "Plugin.Activate",
        "NetworkDriver.GetCapabilities",
        "IpamDriver.GetCapabilities",
        "IpamDriver.GetDefaultAddressSpaces",
    ],
)
def test_handshake_calls_accept_an_empty_body(client, method):
    status, body = call(client, method)
    assert status == 200 and isinstance(body, dict) and body


def test_activate_implements_both_interfaces(client):
    assert call(client, "Plugin.Activate")[1] == {"Implements": ["NetworkDriver", "IpamDriver"]}


def test_capabilities(client):
    assert call(client, "NetworkDriver.GetCapabilities")[1] == {
        "Scope": "local",
        "ConnectivityScope": "local",
        "GwAllocChecker": True,
    }
    assert call(client, "IpamDriver.GetCapabilities")[1] == {
        "RequiresMACAddress": False,
        "RequiresRequestReplay": False,
    }
    spaces = call(client, "IpamDriver.GetDefaultAddressSpaces")[1]
    assert spaces["LocalDefaultAddressSpace"] and spaces["GlobalDefaultAddressSpace"]


GEN = "com.docker.network.generic"
MODE4, MODE6 = "com.docker.network.bridge.gateway_mode_ipv4", "com.docker.network.bridge.gateway_mode_ipv6"


@pytest.mark.parametrize(
    "options, answer",
    [
        (None, {"SkipIPv4": False, "SkipIPv6": False}),
        ({GEN: {}, "com.docker.network.internal": True}, {"SkipIPv4": False, "SkipIPv6": False}),
        ({GEN: {MODE4: "isolated"}, "com.docker.network.internal": True}, {"SkipIPv4": True, "SkipIPv6": False}),
        (
            {GEN: {MODE4: "isolated", MODE6: "isolated"}, "com.docker.network.internal": True},
            {"SkipIPv4": True, "SkipIPv6": True},
        ),
        ({GEN: {MODE6: "nat"}}, {"SkipIPv4": False, "SkipIPv6": False}),
        ({GEN: {MODE4: "routed", MODE6: "nat-unprotected"}}, {"SkipIPv4": False, "SkipIPv6": False}),
    ],
)
def test_gateway_check_skips_the_gateway_of_isolated_internal_networks_only(client, options, answer):
    """Docker 28+ asks before reserving gateway addresses (GwAllocChecker)."""
    assert call(client, "NetworkDriver.GwAllocCheck", {"Options": options}) == (200, answer)


@pytest.mark.parametrize(
    "options, message",
    [
        ({GEN: {MODE4: "isolated"}}, "isolated is only for an --internal network"),
        ({GEN: {MODE4: "route"}}, "expected one of nat, nat-unprotected, routed, isolated"),
        ({GEN: {MODE6: "NAT"}, "com.docker.network.internal": True}, "gateway_mode_ipv6 'NAT'"),
        ({GEN: {MODE4: ["isolated"]}}, "com.docker.network.generic"),
    ],
)
def test_gateway_check_refuses_modes_pybridge_does_not_have(client, options, message):
    status, body = call(client, "NetworkDriver.GwAllocCheck", {"Options": options})
    assert status == 500 and message in body["Err"], body


def test_unknown_method_is_404_with_err(client):
    status, body = call(client, "NetworkDriver.NoSuchMethod", {})
    assert status == 404 and "Err" in body


def test_full_container_lifecycle_as_dockerd_sends_it(client, fake_services):
    status, out, pool = create_network(client)
    assert (status, out) == (200, {})
    assert pool["Pool"] == "10.200.1.0/24"
    status, addr = call(client, "IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "", "Options": None})
    assert status == 200 and addr["Address"] == "10.200.1.2/24"
    portmap = [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 18080, "HostPortEnd": 18080}]
    status, ep = call(
        client,
        "NetworkDriver.CreateEndpoint",
        {
            "NetworkID": NID,
            "EndpointID": EID,
            "Interface": {"Address": addr["Address"], "AddressIPv6": "", "MacAddress": ""},
            "Options": {
                "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}],
                "com.docker.network.portmap": portmap,
            },
        },
    )
    assert status == 200
    assert ep == {"Interface": {"MacAddress": "02:42:0a:c8:01:02"}}  # never the Address back
    status, join = call(
        client,
        "NetworkDriver.Join",
        {
            "NetworkID": NID,
            "EndpointID": EID,
            "SandboxKey": "/var/run/docker/netns/abc",
            "Options": {"com.docker.network.portmap": portmap},
        },
    )
    assert status == 200
    assert join["InterfaceName"] == {"SrcName": "ptc9f1abbbbbbbb", "DstPrefix": "eth"}
    assert join["Gateway"] == "10.200.1.1"
    assert (
        call(client, "NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NID, "EndpointID": EID, "Options": {}})[
            0
        ]
        == 200
    )
    status, info = call(client, "NetworkDriver.EndpointOperInfo", {"NetworkID": NID, "EndpointID": EID})
    assert status == 200 and isinstance(info["Value"], dict)
    for method in ("RevokeExternalConnectivity", "Leave", "DeleteEndpoint"):
        assert call(client, f"NetworkDriver.{method}", {"NetworkID": NID, "EndpointID": EID}) == (200, {})
    assert call(client, "IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": "10.200.1.2"}) == (200, {})
    assert call(client, "IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": "10.200.1.1"}) == (200, {})
    assert call(client, "IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]}) == (200, {})
    assert call(client, "NetworkDriver.DeleteNetwork", {"NetworkID": NID}) == (200, {})
    assert fake_services.netlink.devices == {}
    with fake_services.store.reading() as tx:
        assert tx.networks.all() == [] and tx.networks.endpoints() == [] and tx.leases.pools() == []
        assert tx.leases.all() == []


def test_mac_is_returned_only_when_dockerd_sent_none(client):
    create_network(client)
    status, ep = call(
        client,
        "NetworkDriver.CreateEndpoint",
        {
            "NetworkID": NID,
            "EndpointID": EID,
            "Interface": {"Address": "10.200.1.9/24", "AddressIPv6": "", "MacAddress": "02:42:0a:c8:01:63"},
        },
    )
    assert status == 200 and ep == {"Interface": {}}


def test_internal_network_join_gives_no_gateway(client):
    create_network(client, internal=True)
    call(
        client,
        "NetworkDriver.CreateEndpoint",
        {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": "10.200.1.2/24"}},
    )
    status, join = call(client, "NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID})
    assert status == 200 and "Gateway" not in join and join["DisableGatewayService"] is True


@pytest.mark.parametrize(
    "method",
    [
        "NetworkDriver.DeleteNetwork",
        "NetworkDriver.DeleteEndpoint",
        "NetworkDriver.Leave",
        "NetworkDriver.RevokeExternalConnectivity",
        "IpamDriver.ReleasePool",
        "IpamDriver.ReleaseAddress",
    ],
)
def test_teardown_of_unknown_ids_succeeds(client, method):
    body = {"NetworkID": NID, "EndpointID": EID, "PoolID": "10.9.9.0/24#00000000", "Address": "10.9.9.9"}
    assert call(client, method, body) == (200, {})
    assert call(client, method, body) == (200, {})


@pytest.mark.parametrize("body", [None, {}, {"Options": None}, {"NetworkID": None}])
def test_create_network_without_id_is_a_clear_error(client, body):
    status, out = call(client, "NetworkDriver.CreateNetwork", body)
    assert status == 500 and "NetworkID" in out["Err"]


@pytest.mark.parametrize("raw", [b"{", b"[1,2]", b'"text"', b"\xff\xfe"])
def test_malformed_bodies_get_err_not_traceback(client, raw):
    status, out = call(client, "NetworkDriver.CreateNetwork", raw=raw)
    assert status == 500 and "Err" in out and "Traceback" not in out["Err"]


def test_null_body_is_tolerated_where_nothing_is_required(client):
    assert call(client, "NetworkDriver.DiscoverNew", raw=b"null") == (200, {})
    assert call(client, "NetworkDriver.AllocateNetwork", raw=b"null") == (200, {"Options": {}})


def test_oversized_body_is_refused(client):
    status, out = call(client, "NetworkDriver.CreateNetwork", raw=b" " * (2 << 20))
    assert status == 413 and "Err" in out


def test_ipam_errors_use_http_500_with_err(client):
    # IPAM reads "Error" on 200 responses, so a failure must never be 200 (docs/protocol.md).
    status, out = call(client, "IpamDriver.RequestAddress", {"PoolID": "nope", "Address": ""})
    assert status == 500 and "unknown pool" in out["Err"]


def test_create_endpoint_on_unknown_network_names_it(client):
    status, out = call(client, "NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID, "Interface": {}})
    assert status == 500 and NID[:12] in out["Err"]


def test_stats_report_per_method_latency(client):
    call(client, "NetworkDriver.GetCapabilities")
    stats = json.loads(client.get("/pybridge/stats").data)
    assert stats["NetworkDriver.GetCapabilities"]["count"] == 1


SWARM_ID = "s1ri11csg9exlsvtpkyh4z3ha"  # swarmkit's IDs, as dockerd 28.5 sent them


@pytest.mark.parametrize("space, ok", [("LocalDefault", False), ("GlobalDefault", False), ("pybridge-local", True)])
def test_a_swarm_network_is_made_only_with_addresses_from_pybridge(client, fake_services, space, ok):
    """Issue 10, item 3: `--scope swarm` without --config-from gets a subnet of Docker's default
    pools on each node, whatever --subnet said; through a config-only network it gets pybridge's."""
    body = {
        "NetworkID": SWARM_ID,
        "Options": {"com.docker.network.generic": {}},
        "IPv4Data": [{"AddressSpace": space, "Pool": "10.200.9.0/24", "Gateway": "10.200.9.1/24"}],
        "IPv6Data": [],
    }
    status, out = call(client, "NetworkDriver.CreateNetwork", body)
    if ok:
        assert (status, out) == (200, {})
        call(client, "NetworkDriver.DeleteNetwork", {"NetworkID": SWARM_ID})
    else:
        assert status == 500 and "--config-from NAME-config" in out["Err"], out
        assert fake_services.netlink.devices == {}


def test_the_host_views_list_networks_and_endpoints_with_docker_names(client, fake_services):
    """Issue 11: what the host command `pybridge` shows (ls, ps, port), from the plugin's socket.
    Names come from what the event watcher reported to the container inventory; a network not
    learned yet shows none. The DNS is off here (issue 21: it took the names with it)."""
    from plugin.domain.model import ContainerInfo

    _, _, pool = create_network(client)
    status, addr = call(client, "IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "", "Options": None})
    call(
        client,
        "NetworkDriver.CreateEndpoint",
        {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": addr["Address"]}, "Options": {}},
    )
    call(
        client,
        "NetworkDriver.ProgramExternalConnectivity",
        {
            "NetworkID": NID,
            "EndpointID": EID,
            "Options": {
                "com.docker.network.portmap": [
                    {"Proto": 6, "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}
                ]
            },
        },
    )
    nets = client.get("/pybridge/networks").get_json()["networks"]
    assert nets == [
        {
            "id": NID,
            "name": "",
            "bridge": f"pt-{NID[:12]}",
            "subnets": ["10.200.1.0/24"],
            "gateways": ["10.200.1.1"],
            "internal": False,
            "dns": False,
            "endpoints": 1,
        }
    ]

    assert fake_services.dns is None
    web = ContainerInfo("c" * 64, "web", (), "10.200.1.2")
    fake_services.inventory.learned({NID: ("app", {web.id: web})}, {NID})  # the watcher's report
    assert client.get("/pybridge/networks").get_json()["networks"][0]["name"] == "app"
    (ep,) = client.get("/pybridge/endpoints").get_json()["endpoints"]
    assert ep["container"] == "web" and ep["network_name"] == "app" and ep["ipv4"] == "10.200.1.2/24"
    assert ep["ports"] == [{"container_port": "80/tcp", "host": "0.0.0.0:8080", "family": 0}]


def test_uninstall_removes_links_and_firewall_and_nothing_comes_back(client, fake_services):
    """Issue 11: what scripts/uninstall.sh asks of the plugin before removing it. Afterwards the
    watchdog must not put the table back, and no call makes anything again."""
    _, _, pool = create_network(client)
    _, addr = call(client, "IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "", "Options": None})
    assert (
        call(
            client,
            "NetworkDriver.CreateEndpoint",
            {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": addr["Address"]}, "Options": {}},
        )[0]
        == 200
    )
    fw, netlink = fake_services.firewall, fake_services.netlink
    assert netlink.devices and not fw.removed
    resp = client.post("/pybridge/uninstall")
    assert resp.status_code == 200
    assert set(resp.get_json()["removed_links"]) == {f"pt-{NID[:12]}", f"pth{EID[:12]}"}
    assert netlink.devices == {} and fw.removed and fw.kernel is None
    assert fake_services.doctor.heal_firewall() == [] and fw.kernel is None
    status, body = call(
        client,
        "IpamDriver.RequestPool",
        {"AddressSpace": "pybridge-local", "Pool": "10.200.2.0/24", "SubPool": "", "Options": {}, "V6": False},
    )
    assert status == 500 and body["Err"] == "pybridge is being uninstalled"
    assert fw.kernel is None and netlink.devices == {}


def test_the_etcd_access_of_a_cluster_host_is_its_own_prefix_and_the_claims(client):
    """Issue 22, item 1: `pybridge cluster --etcd-access HOST` prints these commands; the
    integration tests run them against a real etcd with authentication on."""
    resp = client.get("/pybridge/cluster/etcd-access/10.0.0.11")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["user"] == "pybridge-10.0.0.11"
    writes = {c[-1] for c in body["commands"] if c[:2] == ["role", "grant-permission"] and c[-2] == "readwrite"}
    assert writes == {"/pybridge/v2/host/10.0.0.11/"} | {
        f"/pybridge/v2/{p}" for p in ("net/", "vni/", "members/", "addr/", "mac/")
    }
    reads = [c for c in body["commands"] if c[:2] == ["role", "grant-permission"] and c[-2] == "read"]
    assert [c[-1] for c in reads] == ["/pybridge/v2/"]
    for bad in ("10.0.0.011", "fe80::1%25eth0", "host1", "10.0.0.1%0a"):
        assert client.get(f"/pybridge/cluster/etcd-access/{bad}").status_code in (400, 404), bad
