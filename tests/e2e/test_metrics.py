"""The Prometheus endpoint (issue 11, item 2) of the test plugin, scraped over HTTP on the host
(127.0.0.1:19474, set by scripts/test.sh) while a real network, container, published port, DNS
query and firewall repair move the values."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from .dockerenv import NFT, TABLE, free_port, free_subnet, gateway_of, sh, wait_for

METRICS = "http://127.0.0.1:19474/metrics"


def scrape() -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(METRICS, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_scrape_shows_networks_endpoints_pools_calls_dns_and_firewall_and_values_move(dk):
    before = scrape()
    subnet, port = free_subnet(), free_port()
    net = dk.network("--subnet", subnet)
    web = dk.run(net, "-p", f"{port}:80")
    nid = dk.network_id(net)
    labels = {"network": net, "network_id": nid[:12]}
    # a name lookup through the network's DNS (the gateway), from a container of the network
    dk.run_once(net, "nslookup", web, gateway_of(dk, net))

    def moved():
        s = scrape()
        return (
            s
            if get(s, "pybridge_endpoints", **labels) == 1
            and get(s, "pybridge_dns_queries_total", rcode="NOERROR", **labels) >= 1
            else None
        )

    after = wait_for(moved, 15)  # the network's Docker name comes from the event watcher
    if not after:  # (say which of the two never showed, and under which labels)
        last = scrape()
        seen = sorted((k, v) for k, v in last.items() if any(nid[:12] in str(label) for label in k[1]))
        shown = (
            get(last, "pybridge_endpoints", **labels),
            get(last, "pybridge_dns_queries_total", rcode="NOERROR", **labels),
        )
        raise AssertionError(
            f"the network, its endpoint and the DNS answer never showed in the metrics: "
            f"endpoints, NOERROR answers = {shown}; the network's series: {seen}"
        )
    assert get(after, "pybridge_networks") == get(before, "pybridge_networks") + 1
    assert get(after, "pybridge_pool_addresses", subnet=subnet, **labels) == 254
    assert get(after, "pybridge_pool_addresses_used", subnet=subnet, **labels) >= 2  # gateway + web
    for method in ("NetworkDriver.CreateNetwork", "NetworkDriver.CreateEndpoint", "IpamDriver.RequestAddress"):
        assert get(after, "pybridge_rpc_duration_seconds_count", method=method) > get(
            before, "pybridge_rpc_duration_seconds_count", method=method
        ), method
    assert get(after, "pybridge_firewall_changes_total") >= get(before, "pybridge_firewall_changes_total") + 2
    assert get(after, "pybridge_firewall_change_duration_seconds_sum") > 0
    assert get(after, "pybridge_dns_forwarded_total", **labels) == 0  # a name it knows: answered locally

    # someone deletes our table: the plugin puts it back, and counts it
    healed = get(after, "pybridge_self_heal_total", kind="firewall")
    sh(*NFT, "delete", "table", "inet", TABLE)
    assert wait_for(lambda: get(scrape(), "pybridge_self_heal_total", kind="firewall") > healed, 15)

    # a refused call is an error of its method
    errors = get(after, "pybridge_rpc_errors_total", method="NetworkDriver.CreateNetwork")
    ok, _ = dk.try_network("--subnet", free_subnet(), "-o", "com.docker.network.driver.mtu=abc")
    assert not ok
    assert get(scrape(), "pybridge_rpc_errors_total", method="NetworkDriver.CreateNetwork") == errors + 1


def test_metrics_listen_on_loopback_only():
    local = [line.split()[3] for line in sh("ss", "-Hltn", "sport = :19474").stdout.splitlines()]
    assert local == ["127.0.0.1:19474"], local


def test_half_sent_requests_cannot_pile_up_threads_or_memory_in_the_running_plugin():
    """Issue 20, item 5, as a local user tried it: connections that send half a request
    (the request line and one header, then nothing) held a thread each for ever; new ones then
    waited, a scrape took seconds and the plugin grew from 103 to 141 MB. Now the plugin's
    threads stay bounded, scrapes are answered meanwhile, and the connections are closed."""
    import os
    import socket

    from .dockerenv import plugin_pids

    def threads() -> int:
        return sum(len(os.listdir(f"/proc/{pid}/task")) for pid in plugin_pids())

    def rss_kb() -> int:
        total = 0
        for pid in plugin_pids():
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return total

    scrape()
    base_threads, base_rss = threads(), rss_kb()
    held = []
    try:
        for _ in range(600):
            try:
                s = socket.create_connection(("127.0.0.1", 19474), timeout=5)
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                held.append(s)
            except OSError:
                continue  # closed at once: the limit at work
            if len(held) % 100 == 0:
                assert threads() - base_threads <= 40, threads() - base_threads
        assert threads() - base_threads <= 40, threads() - base_threads
        assert get(scrape(), "pybridge_networks") >= 0  # answered while they are held
        grown = rss_kb() - base_rss
        print(f"{len(held)} half-sent requests held: +{threads() - base_threads} threads, +{grown} kB")
        assert grown < 20_000, f"the plugin grew {grown} kB"
    finally:
        for s in held:
            s.close()
    assert wait_for(lambda: threads() - base_threads <= 2, 30)
