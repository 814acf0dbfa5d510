"""Issue 11, container names from the host: the DNS service tells the host's resolver, for each
network whose Docker name it has learned, its bridge, its DNS addresses and its name as the
routing domain; names that cannot be domains are left out; removed networks go. The real
adapter against a real systemd-resolved is in tests/e2e/test_host_names.py."""

from __future__ import annotations

from plugin.dns.service import DnsService
from plugin.domain.naming import routing_domain

from ..fakes import FakeHostDns
from .test_protocol import NID, call, create_network


class StubServer:
    def __init__(self):
        self.specs = {}

    def configure(self, specs):
        self.specs = dict(specs)

    def set_snapshot(self, nid, snapshot):
        pass

    def spec_name(self, nid):
        spec = self.specs.get(nid)
        return spec.name if spec else None


def test_named_networks_are_published_with_their_gateway_and_name(client, fake_services):
    host = FakeHostDns()
    svc = DnsService(fake_services.ctx.store, StubServer(), default_upstream="", host=host)
    create_network(client)
    svc.reconcile()
    assert host.current == {}, "no Docker name learned yet: nothing to route"
    svc.learned({NID: ("app", {})}, {NID})
    assert host.current == {f"pt-{NID[:12]}": (("10.200.1.1",), "app")}
    svc.learned({NID: ("my_net", {})}, {NID})                 # Docker allows it; DNS does not
    assert host.current == {}
    svc.learned({NID: ("App.Prod", {})}, {NID})
    assert host.current == {f"pt-{NID[:12]}": (("10.200.1.1",), "app.prod")}
    assert call(client, "NetworkDriver.DeleteNetwork", {"NetworkID": NID}) == (200, {})
    svc.reconcile()
    assert host.current == {}


def test_routing_domains():
    assert routing_domain("app") == "app" and routing_domain("App.Prod.") == "app.prod"
    for bad in ("my_net", "-x", "x-", "a" * 64, "", "a..b", "web app", "é"):
        assert routing_domain(bad) is None, bad
