"""Issue 11, container names from the host: the DNS service tells the host's resolver, for each
network whose Docker name it has learned, its bridge, its DNS addresses and its name as the
routing domain; names that cannot be domains are left out; removed networks go. The real
adapter against a real systemd-resolved is in tests/e2e/test_host_names.py."""

from __future__ import annotations

import pytest

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
    svc = DnsService(fake_services.store, StubServer(), default_upstream="", host=host)
    create_network(client)
    svc.reconcile()
    assert host.current == {}, "no Docker name learned yet: nothing to route"
    svc.inventory.learned({NID: ("app", {})}, {NID})
    assert host.current == {f"pt-{NID[:12]}": (("10.200.1.1",), "app.pybridge.internal")}
    svc.inventory.learned({NID: ("my_net", {})}, {NID})  # Docker allows it; DNS does not
    assert host.current == {}
    svc.inventory.learned({NID: ("App.Prod", {})}, {NID})
    assert host.current == {f"pt-{NID[:12]}": (("10.200.1.1",), "app.prod.pybridge.internal")}
    assert call(client, "NetworkDriver.DeleteNetwork", {"NetworkID": NID}) == (200, {})
    svc.reconcile()
    assert host.current == {}


def test_routing_domains():
    assert routing_domain("app") == "app" and routing_domain("App.Prod.") == "app.prod"
    for bad in ("my_net", "-x", "x-", "a" * 64, "", "a..b", "web app", "é"):
        assert routing_domain(bad) is None, bad


# Issue 20, item 1: a network's name could take over the host's DNS (a network named com became
# resolved's routing domain for every .com lookup of the host). Names now live under a suffix of
# pybridge's own, which is refused when it is special-use, a single label or a public suffix.


def test_a_networks_name_is_registered_only_under_pybridges_own_suffix(client, fake_services):
    host = FakeHostDns()
    svc = DnsService(fake_services.store, StubServer(), default_upstream="", host=host)
    create_network(client)
    svc.reconcile()
    for name in ("com", "local", "internal", "arpa", "in-addr.arpa", "corp.example.com", "google.internal", "app"):
        svc.inventory.learned({NID: (name, {})}, {NID})
        assert host.current == {f"pt-{NID[:12]}": (("10.200.1.1",), f"{name}.pybridge.internal")}, name


def test_the_host_suffix_refuses_special_use_names_single_labels_and_public_suffixes():
    from publicsuffixlist import PublicSuffixList

    from plugin.domain.naming import DEFAULT_HOST_SUFFIX, parse_host_suffix

    psl = PublicSuffixList()
    assert not psl.is_public(DEFAULT_HOST_SUFFIX) and not psl.is_public("x." + DEFAULT_HOST_SUFFIX)
    assert parse_host_suffix(DEFAULT_HOST_SUFFIX, psl.is_public) == "pybridge.internal"
    assert parse_host_suffix("Containers.Corp.Acme-Inc.com.", psl.is_public) == "containers.corp.acme-inc.com"
    for bad in (
        "com",
        "internal",
        "local",
        "pb.local",
        "in-addr.arpa",
        "x.ip6.arpa",
        "home.arpa",
        "localhost",
        "a.localhost",
        "x.test",
        "example.com",
        "a.example.org",
        "x.onion",
        "co.uk",
        "github.io",
        "blogspot.com",
        "compute.amazonaws.com",
        "a..b",
        "-x.com",
        "x_y.com",
        "",
        "a" * 64 + ".com",
    ):
        with pytest.raises(ValueError, match="PYBRIDGE_HOST_DNS_SUFFIX"):
            parse_host_suffix(bad, psl.is_public)


def test_the_suffix_setting_is_checked_when_the_plugin_starts(tmp_path):
    from plugin.config import load_settings
    from plugin.domain.errors import ConfigError

    assert load_settings({}, state_dir=str(tmp_path)).host_dns_suffix == "pybridge.internal"
    assert (
        load_settings({"PYBRIDGE_HOST_DNS_SUFFIX": "ctr.acme-inc.com"}, state_dir=str(tmp_path)).host_dns_suffix
        == "ctr.acme-inc.com"
    )
    assert load_settings({"PYBRIDGE_HOST_DNS_SUFFIX": "off"}, state_dir=str(tmp_path)).host_dns_suffix == ""
    with pytest.raises(ConfigError, match="PYBRIDGE_HOST_DNS_SUFFIX.*co.uk"):
        load_settings({"PYBRIDGE_HOST_DNS_SUFFIX": "co.uk"}, state_dir=str(tmp_path))


def test_no_host_registration_when_the_suffix_is_off(client, fake_services):
    host = FakeHostDns()
    svc = DnsService(fake_services.store, StubServer(), default_upstream="", host=host, host_suffix="")
    create_network(client)
    svc.reconcile()
    svc.inventory.learned({NID: ("app", {})}, {NID})
    assert host.current == {}


def test_upstreams_never_the_stub_but_resolveds_own_servers_without_our_bridges(tmp_path):
    from plugin.dns.service import host_resolvers

    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n")
    assert host_resolvers(str(conf)) == ()  # the stub alone: nothing
    assert host_resolvers(str(conf), lambda: ("198.51.100.7", "2001:db8::53")) == (
        ("198.51.100.7", 53),
        ("2001:db8::53", 53),
    )
    conf.write_text("nameserver 198.51.100.9\nnameserver 127.0.0.54\n")
    assert host_resolvers(str(conf), lambda: ("198.51.100.7",)) == (("198.51.100.9", 53), ("198.51.100.7", 53))
    conf.write_text("nameserver 198.51.100.9\nnameserver 127.0.0.1\n")  # not resolved's: kept as it is
    assert host_resolvers(str(conf), lambda: ("198.51.100.7",)) == (("198.51.100.9", 53), ("127.0.0.1", 53))
