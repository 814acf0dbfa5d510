"""Issue 11: the Prometheus metrics, read from a plugin driven through its HTTP layer (fakes for
the kernel). The end-to-end test scrapes the real plugin."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from plugin.config import ConfigError, load_settings, parse_listen

from .test_protocol import EID, NID, call, create_network


def scrape(services) -> dict[tuple[str, tuple], float]:
    text = generate_latest(services.metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples, name, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def metered(fake_services):
    fake_services.enable_metrics()
    from plugin.app import create_app

    return fake_services, create_app(fake_services).test_client()


def test_calls_state_pools_and_firewall_changes_move_the_metrics(metered):
    services, client = metered
    before = scrape(services)
    assert value(before, "pybridge_networks") == 0
    assert value(before, "pybridge_firewall_changes_total") == 0
    _, _, pool = create_network(client)
    _, addr = call(client, "IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "", "Options": None})
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
    assert call(client, "NetworkDriver.CreateNetwork", {"NetworkID": "", "Options": {}})[0] == 500
    after = scrape(services)
    net = {"network": NID[:12], "network_id": NID[:12]}  # no Docker name learned (no watcher here)
    assert value(after, "pybridge_networks") == 1
    assert value(after, "pybridge_endpoints", **net) == 1
    assert value(after, "pybridge_pool_addresses", subnet="10.200.1.0/24", **net) == 254
    assert value(after, "pybridge_pool_addresses_used", subnet="10.200.1.0/24", **net) == 2  # gateway + one
    assert value(after, "pybridge_rpc_duration_seconds_count", method="NetworkDriver.CreateNetwork") == 2
    assert value(after, "pybridge_rpc_errors_total", method="NetworkDriver.CreateNetwork") == 1
    assert ("pybridge_rpc_errors_total", (("method", "IpamDriver.RequestAddress"),)) not in after
    changes = value(after, "pybridge_firewall_changes_total")
    assert changes >= 2  # the network, then its port
    assert changes == services.firewall.counters().changes
    assert value(after, "pybridge_firewall_change_duration_seconds_count") == changes
    assert value(after, "pybridge_docker_events_reconnects_total") == 0


def test_a_refused_firewall_change_counts_as_a_failure(metered):
    services, client = metered
    services.firewall.fail = True
    status, _, _ = create_network(client)
    assert status == 500
    samples = scrape(services)
    assert value(samples, "pybridge_firewall_change_failures_total") >= 1
    assert value(samples, "pybridge_networks") == 0  # nothing half-made


def test_self_heal_counts_the_firewall_rewrites(metered):
    services, client = metered
    create_network(client)
    assert value(scrape(services), "pybridge_self_heal_total", kind="firewall") == 0
    services.firewall.kernel = None  # someone deleted our table
    assert services.doctor.heal_firewall()
    assert value(scrape(services), "pybridge_self_heal_total", kind="firewall") == 1


@pytest.mark.parametrize(
    "text,parsed",
    [
        ("127.0.0.1:9474", ("127.0.0.1", 9474)),
        ("[::1]:9100", ("::1", 9100)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("off", None),
        ("", None),
    ],
)
def test_metrics_setting(text, parsed):
    assert parse_listen("PYBRIDGE_METRICS", text) == parsed
    assert load_settings({"PYBRIDGE_METRICS": text}).metrics == parsed


@pytest.mark.parametrize(
    "text",
    [
        "localhost:9474",
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:70000",
        "::1:9474",
        "127.0.0.1:94 74",
        "1.2.3.4:80\n",
        "$(id):1",
    ],
)
def test_bad_metrics_settings_are_refused_naming_the_setting(text):
    with pytest.raises(ConfigError, match="PYBRIDGE_METRICS"):
        parse_listen("PYBRIDGE_METRICS", text)


def test_metrics_are_on_loopback_by_default():
    assert load_settings({}).metrics == ("127.0.0.1", 9474)


def test_a_fault_in_firewall_work_fails_the_call_and_is_reported_not_fatal(metered):
    """Issue 18: a fault in firewall work (a firewall tool killed by a signal, a bug of ours)
    fails what needed the firewall with a clear error; the plugin goes on answering, and doctor
    and the metrics say what happened."""
    services, client = metered
    fw = services.firewall
    fw.fault = "nft was killed by SIGSEGV"
    status, out = create_network(client)[:2]
    assert status == 500 and "killed by SIGSEGV" in out["Err"]
    assert fw.counters().faults >= 1  # the injected fault really fired
    assert call(client, "Plugin.Activate")[0] == 200  # still serving
    problems = services.doctor.examine()["problems"]
    assert any(p.startswith("firewall: cannot be checked:") and "SIGSEGV" in p for p in problems)
    assert any("fault(s) since start" in p and p.endswith("nft was killed by SIGSEGV") for p in problems)
    assert value(scrape(services), "pybridge_firewall_faults_total") == fw.counters().faults
    fw.fault = None
    assert create_network(client, subnet="10.200.2.0/24")[0] == 200  # once the fault is gone, calls work
    assert not [p for p in services.doctor.examine()["problems"] if "cannot be checked" in p]


# Issue 20, item 5: the metrics server served a thread per connection with no read timeout:
# connections that sent half a request were held for ever, each with its thread and memory.

HALF = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"  # and then nothing


def _http_get(port: int) -> tuple[int, bytes]:
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/metrics")
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _closed_by_server(s) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_half_sent_requests_hold_no_thread_for_long_and_never_lock_a_scraper_out(metered):
    import socket
    import threading

    from plugin import metrics as m

    from ..waiting import wait_for
    from .test_dns import free_port

    services, _ = metered
    port = free_port()
    assert services.metrics.serve("127.0.0.1", port)
    before = threading.active_count()
    held = []
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(HALF)
            held.append(s)
        # threads stay bounded (a connection's thread and its deadline timer, at most the limit)
        assert threading.active_count() - before <= 2 * getattr(m, "HARD_LIMIT", 16) + 2, (
            threading.active_count() - before
        )
        # a scrape gets through while they are held
        status, body = _http_get(port)
        assert status == 200 and b"pybridge_networks" in body
        # and every half-sent request is closed by the server, the last within its time
        assert wait_for(lambda: all(_closed_by_server(s) for s in held), 30)
        assert wait_for(lambda: threading.active_count() - before <= 1, 30), threading.active_count() - before
        server = services.metrics._server
        assert server.evicted + server.refused + server.expired >= 290, vars(server)
    finally:
        for s in held:
            s.close()
        services.metrics.close()
