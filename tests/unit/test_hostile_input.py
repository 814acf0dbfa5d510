"""Hostile and malformed input over every method (hypothesis): the answer is a clear {"Err"}
(HTTP 500), a 404, or a success; never a traceback, never an internal error, and a failed
request changes nothing: no link, rule, state row or lease."""

import json

import pytest

from hypothesis import HealthCheck, given, settings, strategies as st

from plugin.protocol.routes import ROUTES

HEADERS = {"Accept": "application/vnd.docker.plugins.v1.2+json"}
NASTY_STRINGS = st.sampled_from(
    [
        "",
        " ",
        "a" * 300,
        "x;rm -rf /",
        "$(reboot)",
        "br0 up",
        "\u00e9\u00e8\u2603",
        "\x00",
        "../../etc",
        "10.200.1.0/24",
        "10.200.1.5/24",
        "10.200.0.0/33",
        "999.1.1.1/8",
        "fd70::/64",
        "::/0",
        "0.0.0.0/0",
        "10.200.1.1/24",
        "10.9.9.9/24",
        "10.200.1.255",
        "02:42:0a:c8:01:02",
        "ff:ff:ff:ff:ff:ff",
        "0" * 64,
        "pb-aaaaaaaaaaaa",
        "averyveryverylongbridgename",
        "-1",
        "70000",
        "68",
        "true",
        "maybe",
        # issue 8: scope IDs, trailing newlines, option-like names, quotes and comments
        "::1%0 -j RETURN\nCOMMIT\n*filter\n-I INPUT 1 -j ACCEPT\nCOMMIT\n",
        "::1%0",
        "fe80::1%eth0/64",
        "10.200.1.1\n",
        "10.200.1.5/24\n",
        "br0\n",
        "-j",
        "--help",
        "ab" * 32 + "\n",
        "10.200.1.1 -j ACCEPT",
        'x"y',
        "x#y",
        "docker0",
        "pth0123456789a",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    NASTY_STRINGS,
    st.text(max_size=40),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)
KEYS = st.sampled_from(
    [
        "NetworkID",
        "EndpointID",
        "PoolID",
        "Pool",
        "SubPool",
        "V6",
        "Address",
        "AddressSpace",
        "Options",
        "Interface",
        "IPv4Data",
        "IPv6Data",
        "SandboxKey",
        "Gateway",
        "AuxAddresses",
        "com.docker.network.generic",
        "com.docker.network.portmap",
        "MacAddress",
        "extra",
    ]
)
BODIES = st.one_of(
    st.dictionaries(KEYS, VALUES, max_size=8),
    st.builds(
        lambda opts: {
            "NetworkID": "ab" * 32,
            "Options": {"com.docker.network.generic": opts},
            "IPv4Data": [{"Pool": "10.200.1.0/24", "Gateway": "10.200.1.1/24"}],
        },
        st.dictionaries(
            st.sampled_from(
                [
                    "com.docker.network.bridge.name",
                    "com.docker.network.driver.mtu",
                    "com.docker.network.bridge.enable_icc",
                    "pybridge.dns.upstream",
                    "com.docker.network.bridge.host_binding_ipv4",
                    "pybridge.x",
                ]
            ),
            VALUES,
            max_size=3,
        ),
    ),
    st.builds(
        lambda iface: {"NetworkID": "ab" * 32, "EndpointID": "cd" * 32, "Interface": iface},
        st.dictionaries(st.sampled_from(["Address", "AddressIPv6", "MacAddress"]), VALUES),
    ),
    st.builds(
        lambda pm: {"NetworkID": "ab" * 32, "EndpointID": "cd" * 32, "Options": {"com.docker.network.portmap": pm}},
        VALUES,
    ),
    st.builds(
        lambda pm: {"NetworkID": "ab" * 32, "EndpointID": "cd" * 32, "Options": {"com.docker.network.portmap": pm}},
        st.lists(
            st.fixed_dictionaries(
                {
                    "Proto": st.sampled_from([6, 17, 132]),
                    "Port": st.integers(1, 65535),
                    "HostIP": NASTY_STRINGS,
                    "HostPort": st.integers(0, 65535),
                }
            ),
            max_size=3,
        ),
    ),
)


UNSAFE = ("\n", "\r", "%", "#", '"', "\t")


@pytest.fixture
def network_with_endpoint(client):
    """Some hostile requests only matter once a network and an endpoint exist."""
    base = {"NetworkID": "ab" * 32}
    client.post(
        "/NetworkDriver.CreateNetwork",
        headers=HEADERS,
        json={
            **base,
            "Options": {"com.docker.network.enable_ipv6": True},
            "IPv4Data": [{"Pool": "10.200.1.0/24", "Gateway": "10.200.1.1/24"}],
            "IPv6Data": [{"Pool": "fd70:6201:1::/64", "Gateway": "fd70:6201:1::1/64"}],
        },
    )
    client.post(
        "/NetworkDriver.CreateEndpoint",
        headers=HEADERS,
        json={
            **base,
            "EndpointID": "cd" * 32,
            "Interface": {"Address": "10.200.1.2/24", "AddressIPv6": "fd70:6201:1::2/64"},
        },
    )


def snapshot(services):
    with services.store.reading() as tx:
        state = (tx.networks.all(), tx.networks.endpoints(), tx.leases.pools(), tx.leases.all())
    nl = services.netlink
    return state, sorted(nl.devices), sorted(services.firewall.all_rules())


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(sorted(ROUTES)), st.one_of(BODIES, VALUES.map(json.dumps).map(str.encode), st.binary(max_size=64))
)
def test_every_method_answers_hostile_input_cleanly(client, fake_services, network_with_endpoint, method, body):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    before = snapshot(fake_services)
    resp = client.post(f"/{method}", data=raw, headers=HEADERS)
    assert resp.status_code in (200, 404, 413, 500)
    payload = json.loads(resp.data)
    assert isinstance(payload, dict)
    if resp.status_code != 200:
        err = payload["Err"]
        assert "Traceback" not in err and "internal error" not in err, err
        assert snapshot(fake_services) == before, f"{method} failed but changed state: {err}"
    rules = fake_services.firewall.all_rules()
    assert not any(c in r for r in rules for c in UNSAFE), f"{method}: unsafe text in a rule"
