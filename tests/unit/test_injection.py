"""Item 1 of issue 8: no value from a request reaches iptables-restore unparsed.

The scope-ID form of an IPv6 address ("::1%<anything>", newlines included) is accepted by
Python's ipaddress; regexes anchored with '$' accept a trailing newline. Every value that names
an address goes through one parser, and the renderer refuses any unsafe token on its own."""

import ipaddress
from dataclasses import replace

import pytest

from plugin.domain import addresses
from plugin.domain.errors import InvalidRequest, KernelError
from plugin.domain.model import Endpoint, Network, Subnet
from plugin.domain.naming import is_valid_ifname
from plugin.domain.options import network_from_request, parse_mac
from plugin.domain.ports import PortBinding, parse_portmap
from plugin.kernel import commands, iptables_migration, nftrules
from plugin.protocol import fields

INJECTION = "::1%0 -j RETURN\nCOMMIT\n*filter\n-I INPUT 1 -j ACCEPT\nCOMMIT\n"
HOSTILE_ADDRESSES = [
    INJECTION,
    "::1%0",
    "fe80::1%eth0",
    "10.200.1.1\n",
    "10.200.1.1 ",
    " 10.200.1.1",
    "10.200.1.1#x",
    '10.200.1.1"',
    "10.200.1.0/24\n",
    "fe80::%1/64",
    "10.200.1.1/24\n",
]


@pytest.mark.parametrize("value", HOSTILE_ADDRESSES)
def test_the_address_parser_refuses_scope_ids_and_stray_characters(value):
    for parse in (addresses.parse_ip, addresses.parse_ip_interface, addresses.parse_cidr):
        with pytest.raises(InvalidRequest, match="invalid field"):
            parse("field", value)


def test_the_address_parser_checks_the_family():
    assert addresses.parse_ip("f", "10.1.2.3", 4) == ipaddress.ip_address("10.1.2.3")
    with pytest.raises(InvalidRequest, match="IPv4"):
        addresses.parse_ip("f", "::1", 4)
    with pytest.raises(InvalidRequest, match="IPv6"):
        addresses.parse_ip_interface("f", "10.1.2.3/24", 6)


OPTION = "com.docker.network.bridge.host_binding_ipv4"


@pytest.mark.parametrize("value", [INJECTION, "::1%0", "::1", "fd70::1", "10.200.1.1\n"])
def test_host_binding_ipv4_takes_an_ipv4_address_only(value):
    with pytest.raises(InvalidRequest, match=OPTION):
        network_from_request(
            "ab" * 32, {OPTION: value}, ipv6=False, internal=False, ipv4_data=[], ipv6_data=[], prefix="pt"
        )


def test_validation_regexes_match_the_whole_value():
    assert not is_valid_ifname("br0\n")
    assert not is_valid_ifname("-br0")
    with pytest.raises(InvalidRequest):
        fields.ident({"NetworkID": "ab" * 32 + "\n"}, "NetworkID")
    with pytest.raises(InvalidRequest):
        parse_mac("f", "02:42:ac:11:00:02\n")
    with pytest.raises(InvalidRequest):
        parse_portmap([{"Proto": 6, "Port": 80, "HostIP": "::1%0", "HostPort": 8080}])


def test_the_renderer_refuses_unsafe_tokens_even_if_a_value_slipped_through():
    net = Network(
        id="ab" * 32, bridge="pt-abababababab", subnets=(Subnet(ipaddress.ip_network("fd70:6201::/64")),), ipv6=True
    )
    ep = Endpoint(
        id="cd" * 32,
        network_id=net.id,
        host_ifname="pth1",
        container_ifname="ptc1",
        mac="02:42:00:00:00:01",
        address6=ipaddress.ip_interface("fd70:6201::2/64"),
        ports=(PortBinding("tcp", 80, INJECTION, 8080, 6),),
    )
    # what reaches iptables-restore (the static rule, the old chains' removal): token by token
    with pytest.raises(KernelError, match="unsafe"):
        commands.line(("-A", "FORWARD", "-i", "br0 -j ACCEPT"))
    with pytest.raises(KernelError, match="unsafe"):
        commands.line(("-A", "FORWARD", "-m", "comment", "--comment", INJECTION))
    saved = (
        "*filter\n:FORWARD ACCEPT [0:0]\n:PBT-FORWARD - [0:0]\n-A FORWARD -j PBT-FORWARD\n"
        '-A FORWARD -m comment --comment "x\ny" -j PBT-FORWARD\nCOMMIT\n'
    )
    text = iptables_migration.removal_text("PBT", iptables_migration.parse_saved(saved))
    assert "-D FORWARD -j PBT-FORWARD" in text and "comment" not in text  # the odd rule is not spliced
    bad_bridge = Network(id="ab" * 32, bridge="br0 -j ACCEPT", subnets=())
    # the nftables table takes values as JSON, and still refuses any that is not what it must be
    with pytest.raises(KernelError, match="unsafe address"):
        nftrules.change_ports("pbt", net, None, ep)
    for bridge in ("br0 -j ACCEPT", "@bridges", "$x"):
        with pytest.raises(KernelError, match="unsafe interface name"):
            nftrules.add_network("pbt", replace(bad_bridge, bridge=bridge))


def test_the_injection_never_reaches_the_firewall_through_the_plugin_api(client, fake_services):
    headers = {"Accept": "application/vnd.docker.plugins.v1.2+json"}
    nid, eid = "ab" * 32, "cd" * 32
    resp = client.post(
        "/NetworkDriver.CreateNetwork",
        headers=headers,
        json={
            "NetworkID": nid,
            "Options": {"com.docker.network.generic": {OPTION: INJECTION}, "com.docker.network.enable_ipv6": True},
            "IPv4Data": [{"Pool": "10.200.1.0/24", "Gateway": "10.200.1.1/24"}],
            "IPv6Data": [{"Pool": "fd70:6201::/64", "Gateway": "fd70:6201::1/64"}],
        },
    )
    if resp.status_code == 200:  # today's code: the network exists, publish a port through it
        client.post(
            "/NetworkDriver.CreateEndpoint",
            headers=headers,
            json={
                "NetworkID": nid,
                "EndpointID": eid,
                "Interface": {"Address": "10.200.1.2/24", "AddressIPv6": "fd70:6201::2/64"},
            },
        )
        client.post(
            "/NetworkDriver.ProgramExternalConnectivity",
            headers=headers,
            json={
                "NetworkID": nid,
                "EndpointID": eid,
                "Options": {"com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPort": 8080}]},
            },
        )
    lines = fake_services.firewall.all_rules()
    assert not any(c in line for line in lines for c in '\n%#"'), lines
    assert resp.status_code == 500 and OPTION in resp.get_json()["Err"]


def test_addresses_and_names_from_dockers_api_are_parsed_too():
    from plugin.docker.watcher import containers_of

    inspect = {
        "Id": "a" * 64,
        "Name": "/web",
        "State": {"Running": True},
        "NetworkSettings": {
            "Networks": {
                "app": {
                    "NetworkID": "n1",
                    "IPAddress": "10.200.1.2",
                    "GlobalIPv6Address": INJECTION,
                    "Aliases": ["x\ny", "ok"],
                },
                "bad": {"NetworkID": "n2", "IPAddress": "::1", "GlobalIPv6Address": ""},
                "odd": None,
            }
        },
    }
    found = containers_of(inspect)
    assert list(found) == ["n1"]
    name, info = found["n1"]
    assert (info.ipv4, info.ipv6, info.aliases) == ("10.200.1.2", "", ("ok",))
    assert containers_of({"Id": None, "State": "x"}) == {} and containers_of([]) == {}
