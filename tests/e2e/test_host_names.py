"""Container names from the host (issue 11, item 3), through a real systemd-resolved (see
hostdns.py): the plugin registers each network's DNS for its bridge with the network's name as
routing domain, so `getent hosts web.app`, ping and an HTTP request from the host reach the
container web of network app; other names are not routed there (and go nowhere: the test
resolver has no upstream); the registration goes with the network."""

from __future__ import annotations

import os

import pytest

from .dockerenv import free_subnet, sh, wait_for
from .hostdns import Resolver, resolved_binary, stub_taken


@pytest.fixture
def resolver():
    binary = resolved_binary()
    if binary is None:       # scripts/test.sh unpacks it wherever it runs: there, its absence is a failure
        (pytest.fail if os.environ.get("PYBRIDGE_E2E") == "1" else pytest.skip)(
            "systemd-resolved is neither on this machine nor unpacked (scripts/test.sh unpacks it)")
    if stub_taken():
        pytest.skip("127.0.0.53:53 is taken: the host runs a resolver of its own, which the test must not touch")
    r = Resolver(binary)
    try:
        r.start()
        assert wait_for(r.ready, 20), "systemd-resolved did not come up"
        yield r
    finally:
        r.stop()


def test_container_names_resolve_and_answer_from_the_host(dk, resolver):
    net = dk.network("--subnet", free_subnet())
    web = dk.run(net, cmd=("httpd", "-f", "-p", "80", "-h", "/"))
    ip = dk.ip(web, net)

    def resolved():
        res = resolver.lookup("getent", "hosts", f"{web}.{net}")
        return res.returncode == 0 and res.stdout.split()[0] == ip
    assert wait_for(resolved, 30), resolver.lookup("getent", "hosts", f"{web}.{net}")
    ping = resolver.lookup("busybox", "ping", "-c", "1", "-W", "5", f"{web}.{net}")
    assert ping.returncode == 0 and ip in ping.stdout, ping
    res = resolver.lookup("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                          f"http://{web}.{net}/")
    assert res.returncode == 0 and res.stdout not in ("", "000"), res      # httpd answered, by name
    # a name outside the network's domain is not routed to it (and the test resolver has no upstream)
    assert resolver.lookup("getent", "hosts", f"{web}.not-{net}").returncode != 0
    assert resolver.lookup("getent", "hosts", web).returncode != 0

    sh("docker", "rm", "-f", web)
    dk.containers.remove(web)
    sh("docker", "network", "rm", net)
    dk.networks.remove(net)
    assert wait_for(lambda: resolver.lookup("getent", "hosts", f"{web}.{net}").returncode != 0, 15), \
        "the name still resolves after the network is gone"
