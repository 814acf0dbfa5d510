"""Cluster mode over contract-enforcing fakes: two or three "hosts" (each its own store, netlink,
VXLAN devices) sharing one fake etcd. The real thing, with dockerd on three namespaces and a real
etcd, is tests/multihost."""

from __future__ import annotations

import ipaddress
import json
import re
import threading

import pytest

from plugin.cluster import records as r
from plugin.cluster.interfaces import ClusterUnavailable, Delete, Put
from plugin.config import load_settings
from plugin.domain.errors import Conflict, InvalidRequest
from plugin.domain.model import ContainerInfo
from plugin.domain.options import LOCAL_SPACE, IpamDataSpec
from plugin.ipam.claims import ENDPOINT_NAME
from plugin.store.db import Store
from plugin.wiring import build_services
from tests.fakes import FakeFirewall, FakeKV, FakeNetlink, FakeOverlay, FakeSysctl, host_over_fakes
from tests.waiting import wait_for

SUBNET = "10.205.0.0/24"


def wait_until(predicate, what: str, timeout: float = 10) -> None:
    assert wait_for(predicate, timeout=timeout, interval=0.02), f"waited {timeout} s for: {what}"


GATEWAY = "10.205.0.1/24"


def make_host(tmp_path, kv, n: int, clustered: bool = True):
    address = f"10.206.255.{n}"
    env = {"PYBRIDGE_NAME": "pbtest", "PYBRIDGE_IFPREFIX": "pt", "PYBRIDGE_DEFAULT_POOLS": "10.207.0.0/16:24"}
    if clustered:
        env |= {
            "PYBRIDGE_CLUSTER_ETCD": "http://10.206.255.254:2379",
            "PYBRIDGE_CLUSTER_ADDRESS": address,
            "PYBRIDGE_CLUSTER_GRACE": "5",
        }
    d = tmp_path / f"h{n}"
    d.mkdir()
    services = host_over_fakes(env, d, kv.as_user(r.writable(address)) if clustered else kv, address)
    services.address = address
    return services


@pytest.fixture
def kv():
    return FakeKV()


@pytest.fixture
def hosts(tmp_path, kv):
    made = [make_host(tmp_path, kv, n) for n in (1, 2, 3)]
    yield made
    for h in made:
        if h.cluster is not None:
            h.cluster.stop()  # its threads use the store: they end before it closes
        h.store.close()
    # each host is an etcd user that may write only its own prefix and the claims: no plugin
    # write went anywhere else, in any test
    assert [h.cluster.kv.refused for h in made if h.cluster is not None] == [0] * len(made)


def nid(n: int) -> str:
    return f"{n:02x}" * 32


def create_cluster_net(h, network_id, subnet=SUBNET, gateway=GATEWAY, name="web", **generic):
    """What dockerd does for docker network create -d pybridge --ipam-driver pybridge --subnet ..."""
    pool = h.ipam.request_pool(LOCAL_SPACE, subnet, "", False)
    gw = h.ipam.request_address(
        pool["PoolID"], gateway.split("/")[0], {"RequestAddressType": "com.docker.network.gateway"}
    )
    try:
        h.networks.create(
            network_id,
            {"pybridge.cluster": name, **generic},
            ipv6=False,
            internal=False,
            ipv4_data=[IpamDataSpec(pool=subnet, gateway=gw, space=LOCAL_SPACE)],
            ipv6_data=[],
        )
    except Exception:  # dockerd gives back what it reserved for a network that failed
        h.ipam.release_address(pool["PoolID"], gw)
        h.ipam.release_pool(pool["PoolID"])
        raise
    return pool["PoolID"]


def test_records_refuse_what_pybridge_does_not_write():
    key = r.ep_key("web", "10.206.255.1", "ab" * 32)
    for bad in (
        b"{not json",
        b"[]",
        b'{"mac": "01:00:5e:00:00:01", "ipv4": "10.0.0.1"}',
        b'{"mac": "02:42:0a:00:00:02", "ipv4": "10.0.0.1; rm -rf /"}',
        b'{"mac": "02:42:0a:00:00:02"}',
        b'{"mac": "02:42:0a:00:00:02", "ipv4": "fd00::1"}',
    ):
        with pytest.raises(r.InvalidRecord):
            r.parse_endpoint(key, bad)
    assert r.parse_endpoint(key, b'{"mac": "02:42:0a:00:00:02", "ipv4": "10.0.0.2"}').ipv4 == "10.0.0.2"
    for bad in (
        b'{"subnets": [["10.0.0.0/24", "10.1.0.1"]], "vni": 4096, "mac": "02:42:0a:00:00:01", "mtu": 1450}',
        b'{"subnets": [["10.0.0.0/24", ""]], "vni": 1, "mac": "02:42:0a:00:00:01", "mtu": 1450}',
        b'{"subnets": [["10.0.0.0/24", ""]], "vni": 4096, "mac": "zz", "mtu": 1450}',
        b'{"subnets": "x", "vni": 4096, "mac": "02:42:0a:00:00:01", "mtu": 1450}',
    ):
        with pytest.raises(r.InvalidRecord):
            r.parse_net(r.net_key("web"), bad)
    with pytest.raises(r.InvalidRecord):
        r.parse_name(r.name_key("web", "10.206.255.1", "ab"), "ab", b'{"name": "a b"}')
    for key in (
        "/pybridge/v2/host/not-an-ip/ep/web/abcd",
        "/pybridge/v2/host/10.0.0.1/ep/Web/abcd",
        "/pybridge/v2/host/10.0.0.1/ep/web/xyz",
        "/pybridge/v2/host/10.0.0.1/ep/web/ab/cd",
        "/pybridge/v2/host/10.0.0.1/other/web/abcd",
        "/pybridge/v1/ep/web/10.0.0.1/abcd",  # version 1's layout is not read
        "/other/ep/web/10.0.0.1/ab",
    ):
        assert r.split_key(key) is None, key


def test_one_record_per_cluster_network_with_the_same_vni_and_gateway_mac_everywhere(hosts, kv):
    a, b, _ = hosts
    create_cluster_net(a, nid(1))
    create_cluster_net(b, nid(2))
    with a.store.reading() as tx:
        na = tx.networks.get(nid(1))
    with b.store.reading() as tx:
        nb = tx.networks.get(nid(2))
    assert na.vni == nb.vni >= r.VNI_FIRST and na.mac == nb.mac == "02:42:0a:cd:00:01"
    assert na.mtu == nb.mtu == 1450  # 1500 of the underlay, minus VXLAN's 50
    vx = f"pt{'x'}{na.vni}"
    assert a.netlink.devices[vx].master == na.bridge and b.netlink.devices[vx].master == nb.bridge
    assert a.netlink.devices[na.bridge].mac == b.netlink.devices[nb.bridge].mac == na.mac
    index, _ = kv.range(r.members_prefix("web"))
    assert set(index) == {r.members_key("web", a.address), r.members_key("web", b.address)}
    # each host's membership is under its own prefix (which only it may write)
    assert set(kv.range(r.host_prefix(a.address))[0]) == {r.member_key("web", a.address)}
    assert set(kv.range(r.host_prefix(b.address))[0]) == {r.member_key("web", b.address)}
    # every host here is an etcd user whose role writes its own prefix and the claims alone (as
    # `pybridge cluster --etcd-access` sets up): nothing the plugins wrote went elsewhere
    assert a.cluster.kv.refused == b.cluster.kv.refused == 0  # (every test's teardown checks it too)
    as_a = kv.as_user(r.writable(a.address))
    with pytest.raises(ClusterUnavailable, match="permission denied"):
        as_a.txn([], [Put(r.member_key("web", b.address), b"{}")])
    with pytest.raises(ClusterUnavailable, match="permission denied"):
        as_a.txn([], [Delete(r.member_key("web", b.address))])
    assert kv.get(r.member_key("web", b.address)) == b"{}"


def test_another_subnet_under_the_same_name_is_refused_and_leaves_nothing(hosts, kv):
    a, b, _ = hosts
    create_cluster_net(a, nid(1))
    before = dict(kv.data)
    with pytest.raises(Conflict, match="cluster network web has 10.205.0.0/24"):
        create_cluster_net(b, nid(2), subnet="10.205.1.0/24", gateway="10.205.1.1/24")
    assert b.netlink.devices == {} and dict(kv.data) == before
    with b.store.reading() as tx:
        assert tx.networks.all() == []


def test_an_overlapping_subnet_of_another_cluster_network_is_refused(hosts):
    a, b, _ = hosts
    create_cluster_net(a, nid(1))
    with pytest.raises(Conflict, match="overlaps 10.205.0.0/24 of cluster network web"):
        create_cluster_net(b, nid(2), subnet="10.205.0.0/23", gateway="10.205.0.1/23", name="api")


def test_cluster_option_needs_cluster_mode_and_pybridge_ipam(tmp_path, kv):
    plain = make_host(tmp_path, kv, 9, clustered=False)
    with pytest.raises(InvalidRequest, match="needs cluster mode"):
        create_cluster_net(plain, nid(1))
    assert plain.netlink.devices == {}
    h = make_host(tmp_path, kv, 8)
    with pytest.raises(InvalidRequest, match="needs pybridge's IPAM"):
        h.networks.create(
            nid(2),
            {"pybridge.cluster": "web"},
            ipv6=False,
            internal=False,
            ipv4_data=[IpamDataSpec(pool="10.205.9.0/24", gateway="10.205.9.1/24", space="default")],
            ipv6_data=[],
        )
    for bad in ("Web", "-x", "a" * 64, "a/b", "a b"):
        with pytest.raises(InvalidRequest, match="pybridge.cluster"):
            create_cluster_net(h, nid(3), name=bad)
    with pytest.raises(InvalidRequest, match="at most 1450"):
        create_cluster_net(h, nid(4), **{"com.docker.network.driver.mtu": "1500"})
    assert kv.data == {} and h.netlink.devices == {}


def test_concurrent_allocation_on_three_hosts_never_hands_out_an_address_twice(hosts, kv):
    pools = [create_cluster_net(h, nid(i + 1)) for i, h in enumerate(hosts)]
    got: list[str] = []
    lock = threading.Lock()

    def start(h, pool):
        for _ in range(20):
            a = h.ipam.request_address(pool, "", {})
            with lock:
                got.append(a)

    threads = [threading.Thread(target=start, args=(h, p)) for h, p in zip(hosts, pools) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 120 and len(set(got)) == 120 and "10.205.0.1/24" not in got
    held, _ = kv.range(r.addr_prefix("web"))
    assert len(held) == 121  # and the gateway, everyone's


def test_a_host_with_a_stale_view_still_gets_only_free_addresses(hosts, kv, monkeypatch):
    """What the compare-and-swap is for: B read the addresses before A claimed its own (the
    race of concurrent starts, made certain here by giving B an empty view every time)."""
    a, b, _ = hosts
    pa, pb = create_cluster_net(a, nid(1)), create_cluster_net(b, nid(2))
    mine = {a.ipam.request_address(pa, "", {}) for _ in range(5)}
    real_range = kv.range
    monkeypatch.setattr(
        b.cluster.kv, "range", lambda prefix: ({}, 0) if prefix == r.addr_prefix("web") else real_range(prefix)
    )
    theirs = {b.ipam.request_address(pb, "", {}) for _ in range(5)}
    assert not mine & theirs and "10.205.0.1/24" not in theirs


def test_the_others_containers_are_programmed_by_what_changed_not_read_back_whole(hosts):
    """Issue 23, item 8: every change of another host's containers read all the device's
    entries back from the kernel and set them whole (at 50 hosts x 50 containers, 2,450 each
    time). After the device is set once, only what changed is programmed; the fake overlay
    checks that what the caller believes programmed is what is."""
    a, b, _ = hosts
    pa, _ = create_cluster_net(a, nid(1)), create_cluster_net(b, nid(2))
    b.cluster.start()
    with b.store.reading() as tx:
        vx = f"ptx{tx.networks.get(nid(2)).vni}"
    wait_until(lambda: b.cluster.loaded, what="B's first read of etcd")
    ips = []
    for i in range(6):
        addr = a.ipam.request_address(pa, "", {})
        a.endpoints.create(nid(1), f"e{i}" * 32, address=addr, address6="", mac="")
        ips.append(addr.split("/")[0])
        wait_until(lambda: len(b.overlay.peers(vx)) == i + 1, what=f"B learns A's container {i}")
    whole = b.overlay.full_sets
    for i in (0, 3):
        a.endpoints.delete(nid(1), f"e{i}" * 32)
    wait_until(lambda: len(b.overlay.peers(vx)) == 4, what="B forgets the two deleted")
    assert {ip for _, addrs in b.overlay.peers(vx).values() for ip in addrs} == {ips[i] for i in (1, 2, 4, 5)}
    assert b.overlay.full_sets == whole, "no change was set whole"
    assert whole <= 2, f"set whole {whole} times: at attach and the first read only"


def test_a_static_address_another_host_holds_is_refused(hosts):
    a, b, _ = hosts
    pa, pb = create_cluster_net(a, nid(1)), create_cluster_net(b, nid(2))
    assert a.ipam.request_address(pa, "10.205.0.50", {}) == "10.205.0.50/24"
    with pytest.raises(Conflict, match="10.205.0.50 is already in use in cluster network web"):
        b.ipam.request_address(pb, "10.205.0.50", {})
    with b.store.reading() as tx:
        assert tx.leases.all(pb) == [(pb, int(ipaddress.ip_address("10.205.0.1")), "gateway")]


def test_endpoints_reach_the_other_hosts_vxlan_and_go_with_the_host(hosts, kv):
    a, b, _ = hosts
    pa, _ = create_cluster_net(a, nid(1)), create_cluster_net(b, nid(2))
    b.cluster.start()
    addr = a.ipam.request_address(pa, "", {})
    a.endpoints.create(nid(1), "e1" * 32, address=addr, address6="", mac="")
    with b.store.reading() as tx:
        vx = f"ptx{tx.networks.get(nid(2)).vni}"
    ip = addr.split("/")[0]
    mac = "02:42:" + ":".join(f"{int(o):02x}" for o in ip.split("."))
    wait_until(lambda: b.overlay.peers(vx) == {mac: (a.address, frozenset({ip}))}, what="B learns A's container")
    a.endpoints.delete(nid(1), "e1" * 32)
    wait_until(lambda: b.overlay.peers(vx) == {}, what="B forgets it when it is deleted")
    a.endpoints.create(nid(1), "e2" * 32, address=addr, address6="", mac="")
    wait_until(lambda: mac in b.overlay.peers(vx), what="B learns it again")
    kv.expire(a.cluster._lease)  # A died: its lease runs out after the grace
    wait_until(lambda: b.overlay.peers(vx) == {}, what="B drops a dead host's containers")
    held, _ = kv.range(r.addr_prefix("web"))
    assert r.addr_key("web", int(ipaddress.ip_address(ip))) not in held  # its address is free again


def test_a_resync_never_puts_older_names_back_over_newer_ones(hosts, kv):
    """The resync reads this host's names from its inventory; a report newer than that read (here,
    names the inventory of this test never had) must survive it. It used not to: a resync under
    a new lease wrote the names it had read, erasing those just published (the DNS test below
    failed under load for that)."""
    a = hosts[0]
    create_cluster_net(a, nid(1))
    c = ContainerInfo("c1" * 32, "web1", ("www",), "10.205.0.9", "")
    key = r.name_key("web", a.address, c.id)
    a.cluster.publish_names("web", [c])
    a.cluster.write_names()  # what the names thread does, here in step
    assert kv.get(key) is not None
    assert [n.names for n in a.cluster.local()] == [()]  # what the resync reads is older
    a.cluster.resync()
    a.cluster.write_names()
    assert kv.get(key) is not None, "the resync put back the names it read over newer ones"
    a.cluster.publish_names("web", [])  # a newer report still wins
    a.cluster.write_names()
    assert kv.get(key) is None
    a.cluster.leave_network("web")  # and nothing is written for a network left
    a.cluster.publish_names("web", [c])
    a.cluster.leave_network("web")
    a.cluster.write_names()
    assert kv.range(r.name_prefix("web", a.address))[0] == {}


def test_names_of_other_hosts_are_answered_by_the_local_dns(hosts):
    """B's DNS answers a query for a container of A, by its name and alias, from the snapshot
    it serves (it used to check only that a callback was called), and stops when A drops it."""
    import dns.message
    import dns.rcode

    from plugin.dns.answer import answer
    from plugin.dns.service import DnsService

    class Snapshots:  # DnsServer as the service drives it, without sockets
        def __init__(self):
            self.snapshots, self.specs = {}, {}

        def configure(self, specs):
            self.specs = dict(specs)

        def set_snapshot(self, nid, snapshot):
            self.snapshots[nid] = snapshot

        def spec_name(self, nid):
            return self.specs[nid].name if nid in self.specs else None

    a, b, _ = hosts
    create_cluster_net(a, nid(1))
    create_cluster_net(b, nid(2))
    server = Snapshots()
    dns_b = DnsService(b.store, server, default_upstream="")
    dns_b.reconcile()
    b.cluster.on_names = dns_b.set_remote
    b.cluster.start()
    a.cluster.start()

    def asked(name):
        snap = server.snapshots.get(nid(2))
        reply = answer(snap, dns.message.make_query(name, "A").to_wire(), ttl=10, forward=False)
        msg = dns.message.from_wire(reply.reply)
        return msg.rcode(), sorted(r.to_text() for rr in msg.answer for r in rr)

    c = ContainerInfo("c1" * 32, "web1", ("www",), "10.205.0.9", "")
    # A's first resync drops claims its state does not have, as this test's by hand: after it
    wait_until(lambda: a.cluster.resyncs >= 1, what="A's first resync")
    assert a.cluster.claim("web", int(ipaddress.ip_address("10.205.0.9")), "static")  # A holds it
    a.cluster.publish_names("web", [c])
    wait_until(lambda: asked("web1") == (dns.rcode.NOERROR, ["10.205.0.9"]), what="B's DNS answers A's name")
    assert asked("www") == (dns.rcode.NOERROR, ["10.205.0.9"])
    a.cluster.publish_names("web", [])
    wait_until(lambda: asked("web1")[0] == dns.rcode.REFUSED, what="B's DNS forgets it")


def test_without_etcd_cluster_starts_fail_clearly_and_local_networks_go_on(hosts, kv):
    a = hosts[0]
    pool = create_cluster_net(a, nid(1))
    local = a.ipam.request_pool(LOCAL_SPACE, "10.204.0.0/24", "", False)["PoolID"]
    kv.down = True
    with pytest.raises(ClusterUnavailable, match="cluster store is unreachable.*local networks are not affected"):
        a.ipam.request_address(pool, "", {})
    assert a.ipam.request_address(local, "", {}) == "10.204.0.1/24"
    with a.store.reading() as tx:
        assert [l for l in tx.leases.all(pool) if l[2] != "gateway"] == []  # nothing half-made


def test_what_etcd_lost_is_written_again_and_releases_made_meanwhile_land(hosts, kv):
    a = hosts[0]
    pool = create_cluster_net(a, nid(1))
    one, two = a.ipam.request_address(pool, "", {}), a.ipam.request_address(pool, "", {})
    a.endpoints.create(nid(1), "e1" * 32, address=one, address6="", mac="")
    kv.down = True
    a.ipam.release_address(pool, two)  # etcd away: released here, there later
    kv.down = False
    kv.data.clear()  # etcd lost everything (a member restored empty)
    kv.leases.clear()
    stop = threading.Event()
    t = threading.Thread(target=a.cluster.run_session, args=(stop,), daemon=True)
    t.start()
    try:
        wait_until(lambda: a.cluster.resyncs >= 1, what="a resync")
        keys = set(kv.data)
        assert {
            r.net_key("web"),
            r.member_key("web", a.address),
            r.addr_key("web", int(ipaddress.ip_interface(one).ip)),
            r.ep_key("web", a.address, "e1" * 32),
        } <= keys
        assert r.addr_key("web", int(ipaddress.ip_interface(two).ip)) not in keys
    finally:
        stop.set()
        t.join(5)


def test_the_record_goes_with_the_last_host(hosts, kv):
    a, b, _ = hosts
    create_cluster_net(a, nid(1))
    create_cluster_net(b, nid(2))
    a.networks.delete(nid(1))
    assert kv.get(r.net_key("web")) is not None and a.netlink.devices == {}
    b.networks.delete(nid(2))
    assert kv.data == {}
    a.networks.delete(nid(1))  # twice: nothing to do


def test_restore_keeps_the_vxlan_device_and_gc_removes_a_stray_one(hosts):
    a = hosts[0]
    create_cluster_net(a, nid(1))
    with a.store.reading() as tx:
        vx = f"ptx{tx.networks.get(nid(1)).vni}"
    a.netlink.devices.clear()  # a reboot
    a.reconciler.restore()
    assert a.netlink.devices[vx].kind == "vxlan"
    a.overlay.ensure_vxlan("ptx9999", 9999, a.address, 4789, 1450, a.netlink.links()[0].name)
    report = a.reconciler.restore()
    assert "ptx9999" in report.removed_links and vx not in report.removed_links


def test_the_cluster_view_and_metrics_show_remote_containers_and_etcd_reachability(hosts, kv, tmp_path):
    from prometheus_client import generate_latest

    a, b, _ = hosts
    pa = create_cluster_net(a, nid(1))
    create_cluster_net(b, nid(2))
    b.cluster.start()
    addr = a.ipam.request_address(pa, "", {})
    a.endpoints.create(nid(1), "e1" * 32, address=addr, address6="", mac="")
    wait_until(lambda: b.views.cluster()["networks"][0]["remote_endpoints"] == 1, what="B's view")
    view = b.views.cluster()
    assert view["host"] == b.address and view["networks"][0]["remote_hosts"] == {a.address: 1}
    assert view["networks"][0]["vni"] >= r.VNI_FIRST and view["networks"][0]["mtu"] == 1450
    wait_until(lambda: b.cluster.reachable, what="B's session")
    text = generate_latest(b.enable_metrics().registry).decode()
    assert "pybridge_cluster_etcd_reachable 1.0" in text
    assert 'pybridge_cluster_remote_endpoints{cluster="web"} 1.0' in text
    alone = make_host(tmp_path, kv, 7, clustered=False)
    assert alone.views.cluster() == {"enabled": False}
    assert "pybridge_cluster" not in generate_latest(alone.enable_metrics().registry).decode()


def test_a_call_that_finds_the_lease_expired_takes_a_new_one_and_the_rest_is_written_again(hosts, kv):
    """Seen on three hosts: etcd stalled longer than the grace, the lease expired, and the next
    start failed with etcd's "lease not found". Now the call goes on under a new lease."""
    a = hosts[0]
    pool = create_cluster_net(a, nid(1))
    first = a.ipam.request_address(pool, "", {})
    old = a.cluster._lease
    kv.expire(old)
    second = a.ipam.request_address(pool, "", {})
    assert a.cluster._lease not in (0, old) and second != first
    held, _ = kv.range(r.addr_prefix("web"))
    assert r.addr_key("web", int(ipaddress.ip_interface(second).ip)) in held
    assert r.addr_key("web", int(ipaddress.ip_interface(first).ip)) not in held  # until the resync
    a.cluster.resync()
    held, _ = kv.range(r.addr_prefix("web"))
    assert r.addr_key("web", int(ipaddress.ip_interface(first).ip)) in held


def test_an_allocation_is_one_transaction_and_hosts_start_apart(hosts, kv):
    """What keeps the p99 low under concurrent starts: no read before the claim (the book knows
    what is taken), no two threads of a host on one candidate, and each host's first walk starts
    at a place of its own, so hosts starting at once do not collide."""
    a, b, _ = hosts
    pa, pb = create_cluster_net(a, nid(1)), create_cluster_net(b, nid(2))
    a.ipam.request_address(pa, "", {})  # the first one reads the network's keys
    before = kv.txns
    firsts = {a.ipam.request_address(pa, "", {}) for _ in range(10)}
    assert kv.txns - before == 10  # then: one transaction each
    theirs = {b.ipam.request_address(pb, "", {}) for _ in range(10)}
    assert not firsts & theirs
    assert abs(int(ipaddress.ip_interface(min(firsts)).ip) - int(ipaddress.ip_interface(min(theirs)).ip)) > 10


def test_the_address_book_never_hands_one_candidate_to_two_threads():
    from plugin.cluster.addresses import AddressBook, home

    book = AddressBook()
    book.load("web", {11, 12})
    got = [book.reserve("web", 10, 15, 9) for _ in range(4)]
    assert got == [10, 13, 14, 15] and book.reserve("web", 10, 15, 9) is None
    book.settle("web", 13, taken=False)  # etcd did not answer: free again
    assert book.reserve("web", 10, 15, 9) == 13
    book.freed("web", 11)
    assert book.reserve("web", 10, 15, 10) == 11
    assert 9 <= home("10.206.255.1", 10, 15) <= 14 and home("10.206.255.1", 10, 15) == home("10.206.255.1", 10, 15)


@pytest.mark.parametrize("step", ["ensure_bridge", "ensure_vxlan"])
def test_a_failure_after_the_cluster_record_leaves_nothing_here_or_in_etcd(hosts, kv, step):
    a = hosts[0]
    a.netlink.fail_on.add(step)
    with pytest.raises(Exception, match="injected failure"):
        create_cluster_net(a, nid(1))
    assert step in a.netlink.calls  # the fault really fired
    assert a.netlink.devices == {} and kv.data == {}
    with a.store.reading() as tx:
        assert tx.networks.all() == [] and tx.leases.pools() == []
    a.netlink.fail_on.clear()
    create_cluster_net(a, nid(1))  # and it can be made afterwards


def test_publishing_names_never_waits_for_etcd(hosts, kv, monkeypatch):
    """The DNS watcher of local networks calls it: with etcd hanging it must not hang too, and
    the names land when etcd answers again."""
    a = hosts[0]
    create_cluster_net(a, nid(1))
    a.cluster.start()
    answering = threading.Event()
    real_range = kv.range

    def hanging_range(prefix):
        assert answering.wait(30), "etcd never came back"
        return real_range(prefix)

    monkeypatch.setattr(kv, "range", hanging_range)
    caller = threading.Thread(
        target=a.cluster.publish_names, args=("web", [ContainerInfo("c1" * 32, "web1", (), "10.205.0.9", "")])
    )
    caller.start()
    caller.join(10)
    assert not caller.is_alive(), "publish_names waited for etcd"
    answering.set()
    wait_until(lambda: real_range(r.name_prefix("web", a.address))[0], what="the names written once etcd answers")


def test_deleting_a_cluster_network_while_etcd_hangs_holds_up_no_local_network(hosts, kv, monkeypatch):
    a = hosts[0]
    create_cluster_net(a, nid(1))
    answering = threading.Event()
    real_txn = kv.txn

    def hanging_txn(*args):
        assert answering.wait(30), "etcd never came back"
        return real_txn(*args)

    monkeypatch.setattr(kv, "txn", hanging_txn)
    deleting = threading.Thread(target=a.networks.delete, args=(nid(1),))
    deleting.start()
    wait_until(lambda: a.netlink.devices == {}, what="the kernel side torn down")
    local = threading.Thread(target=a.ipam.request_pool, args=(LOCAL_SPACE, "10.204.7.0/24", "", False))
    local.start()
    local.join(10)
    assert not local.is_alive(), "a local network waited for etcd"
    answering.set()
    deleting.join(10)
    assert kv.data == {}


def test_a_restart_keeps_the_remote_entries_until_etcd_is_read_and_then_drops_the_stale_ones(hosts, kv):
    """A plugin that restarts while etcd is away must not wipe the data plane (running
    containers keep talking); once it reads etcd, entries of hosts gone meanwhile go."""
    a, b, _ = hosts
    create_cluster_net(a, nid(1))
    with a.store.reading() as tx:
        vx = f"ptx{tx.networks.get(nid(1)).vni}"
    stale = {"02:42:0a:cd:00:63": ("10.206.255.9", frozenset({"10.205.0.99"}))}
    a.overlay.set_peers(vx, f"pt-{nid(1)[:12]}", stale)
    kv.down = True
    a.reconciler.restore()  # the plugin starting again, etcd away
    assert a.overlay.peers(vx) == stale
    kv.down = False
    a.cluster.start()
    wait_until(lambda: a.overlay.peers(vx) == {}, what="the stale entry dropped after the first read")


def test_the_firewall_takes_a_networks_vxlan_only_from_hosts_with_containers_on_it(hosts, kv):
    """Issue 19, item 1: per VNI, not per host: a host with containers on one cluster network is
    let in for that network's VNI only."""
    a, b, _ = hosts
    pa = create_cluster_net(a, nid(1))
    create_cluster_net(b, nid(2))
    create_cluster_net(b, nid(3), subnet="10.205.64.0/24", gateway="10.205.64.1/24", name="db")
    with b.store.reading() as tx:
        web, db = tx.networks.get(nid(2)).vni, tx.networks.get(nid(3)).vni
    assert web != db
    fw = b.firewall
    assert fw.elements("vxlan_ports") == {4789: None} and fw.elements("vxlan_members4") == {}  # alone: nobody
    b.cluster.start()
    addr = a.ipam.request_address(pa, "", {})
    a.endpoints.create(nid(1), "e1" * 32, address=addr, address6="", mac="")
    wait_until(lambda: fw.elements("vxlan_members4") == {(a.address, web << 8): None}, what="A let in for web")
    assert fw.drift(*_state(b)) == []
    assert b.doctor.examine(lease_grace=0)["problems"] == []  # the VXLAN device is claimed, too
    kv.expire(a.cluster._lease)
    wait_until(lambda: fw.elements("vxlan_members4") == {}, what="A shut out once gone")
    b.networks.delete(nid(2))
    b.networks.delete(nid(3))
    assert fw.elements("vxlan_ports") == {}  # no cluster network: no filter


def _state(h):
    with h.store.reading() as tx:
        return tx.networks.all(), tx.networks.endpoints()


def test_asking_twice_for_a_static_address_this_host_holds_keeps_it_claimed(hosts, kv):
    """The second --ip for an address a local container has is refused, and the refusal must not
    release the first container's claim in etcd."""
    a = hosts[0]
    pool = create_cluster_net(a, nid(1))
    assert a.ipam.request_address(pool, "10.205.0.50", {}) == "10.205.0.50/24"
    with pytest.raises(Conflict, match="10.205.0.50 is already in use"):
        a.ipam.request_address(pool, "10.205.0.50", {})
    assert kv.get(r.addr_key("web", int(ipaddress.ip_address("10.205.0.50")))) is not None


def test_an_address_leased_here_but_lost_from_etcd_is_not_handed_out_twice(hosts, kv, monkeypatch):
    monkeypatch.setattr("plugin.cluster.addresses.QUARANTINE", 0.0)  # (the walk must land on it)
    a = hosts[0]
    pool = create_cluster_net(a, nid(1))
    first = a.ipam.request_address(pool, "", {})
    key = r.addr_key("web", int(ipaddress.ip_interface(first).ip))
    kv.txn([], [Delete(key)])  # etcd lost it
    a.cluster._book.freed("web", int(ipaddress.ip_interface(first).ip))
    with a.store.transaction() as tx:
        tx.leases.set_cursor(pool, int(ipaddress.ip_interface(first).ip) - 1)  # walk onto it again
    second = a.ipam.request_address(pool, "", {})
    assert second != first and kv.get(key) is not None  # and it is claimed back


def test_a_hostile_key_reaches_an_error_message_only_quoted():
    bad = r.PREFIX + "net/x\nFAKE LOG LINE"
    with pytest.raises(r.InvalidRecord) as e:
        r.parse_net(bad, b"{}")
    assert "\n" not in str(e.value)


def test_a_mac_is_claimed_on_the_network_like_an_address(hosts, kv):
    """Issue 19, item 2: a container on one host created with the MAC of a container on another
    is refused (and leaves nothing); the MAC is free again once its holder is gone."""
    a, b, _ = hosts
    pa, pb = create_cluster_net(a, nid(1)), create_cluster_net(b, nid(2))
    mac = "02:00:00:00:19:02"
    a.endpoints.create(nid(1), "e1" * 32, address=a.ipam.request_address(pa, "", {}), address6="", mac=mac)
    assert kv.get(r.mac_key("web", mac)) is not None
    addr_b = b.ipam.request_address(pb, "", {})
    devices_before = set(b.netlink.devices)
    with pytest.raises(
        Conflict, match=f"MAC {mac} is in use on cluster network web by a container on host {a.address}"
    ):
        b.endpoints.create(nid(2), "e2" * 32, address=addr_b, address6="", mac=mac)
    held, _ = kv.range(r.ep_prefix("web", b.address))
    assert held == {}  # nothing half-made: no record,
    assert set(b.netlink.devices) == devices_before  # and no veth
    assert r.parse_mac_claim(r.mac_key("web", mac), kv.get(r.mac_key("web", mac))).host == a.address
    a.endpoints.delete(nid(1), "e1" * 32)
    assert kv.get(r.mac_key("web", mac)) is None
    b.endpoints.create(nid(2), "e2" * 32, address=addr_b, address6="", mac=mac)  # free now
    # what etcd lost is claimed again by the resync, and a host's leaving releases its MACs
    kv.txn([], [Delete(r.mac_key("web", mac))])
    b.cluster.resync()
    assert r.parse_mac_claim(r.mac_key("web", mac), kv.get(r.mac_key("web", mac))).endpoint == "e2" * 32
    b.endpoints.delete(nid(2), "e2" * 32)
    b.networks.delete(nid(2))
    held, _ = kv.range(r.mac_prefix("web"))
    assert held == {}


def test_the_gateways_mac_is_refused_for_a_container(hosts):
    a, _, _ = hosts
    pa = create_cluster_net(a, nid(1))
    with a.store.reading() as tx:
        gateway_mac = tx.networks.get(nid(1)).mac
    with pytest.raises(InvalidRequest, match="it is the network's gateway's MAC"):
        a.endpoints.create(
            nid(1), "e1" * 32, address=a.ipam.request_address(pa, "", {}), address6="", mac=gateway_mac.upper()
        )


def test_a_remote_record_never_takes_over_the_gateway_or_a_local_container(hosts, kv):
    """A record written by hand (or by an older pybridge) with the gateway's MAC or with a local
    container's is not programmed; the other hosts' containers are."""
    a, b, _ = hosts
    create_cluster_net(a, nid(1))
    pb = create_cluster_net(b, nid(2))
    with b.store.reading() as tx:
        net_b = tx.networks.get(nid(2))
    vx = f"ptx{net_b.vni}"
    b.endpoints.create(
        nid(2), "e2" * 32, address=b.ipam.request_address(pb, "", {}), address6="", mac="02:00:00:00:19:03"
    )
    b.cluster.start()
    lease = a.cluster._session()
    records = {
        "e7" * 32: (net_b.mac, "10.205.0.77"),
        "e8" * 32: ("02:00:00:00:19:03", "10.205.0.78"),
        "e9" * 32: ("02:00:00:00:19:09", "10.205.0.79"),
    }
    for _, ip in records.values():  # A holds the addresses
        assert a.cluster.claim("web", int(ipaddress.ip_address(ip)), "static")
    kv.txn(
        [],
        [
            Put(r.ep_key("web", a.address, eid), r.EndpointRecord(m, ip, "").to_json().encode(), lease)
            for eid, (m, ip) in records.items()
        ],
    )
    wait_until(lambda: "02:00:00:00:19:09" in b.overlay.peers(vx), what="B programs A's real container")
    assert set(b.overlay.peers(vx)) == {"02:00:00:00:19:09"}  # not the gateway's, not its own


def test_values_from_etcd_go_through_the_strict_parsers(hosts, kv):
    """Issue 19, item 3 (parsers): a scope ID, a host that is not one unicast address, a VNI key
    spelled with a Unicode digit: refused or left out, counted, and no create fails for them."""
    assert r.split_key("/pybridge/v2/host/fd00::0001/ep/web/abcd") is None  # a key: only as pybridge writes it
    for host in (
        "fe80::1%x",
        "127.0.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "0.0.0.0",
        "::",
        "fe80::1",
        "10.0.0.1 ",
        "１0.0.0.1",
    ):
        assert r.split_key(f"/pybridge/v2/host/{host}/ep/web/abcd") is None, host
        with pytest.raises(r.InvalidRecord):
            r.parse_addr(r.addr_key("web", 5), json.dumps({"host": host, "kind": "dynamic"}).encode())
    with pytest.raises(r.InvalidRecord):
        r.parse_endpoint(r.ep_key("web", "10.206.255.1", "ab"), b'{"mac": "02:42:0a:00:00:02", "ipv6": "fd00::2%eth0"}')
    with pytest.raises(r.InvalidRecord):
        r.parse_net(
            r.net_key("web"),
            b'{"subnets": [["10.0.0.5/24", ""]], "vni": 4096, "mac": "02:42:0a:00:00:01", "mtu": 1450}',
        )
    assert r.parse_vni_key("/pybridge/v2/vni/\u00b2") is None and r.parse_vni_key("/pybridge/v2/vni/4096") == 4096
    a, b, _ = hosts
    kv.txn(
        [],
        [
            Put(r.PREFIX + "vni/\u00b2", b"x"),  # a Unicode digit
            Put(
                r.ep_key("web", "10.206.255.1", "ab").replace("10.206.255.1", "fe80::1%x"),
                b'{"mac": "02:42:0a:00:00:09", "ipv4": "10.205.0.9"}',
            ),
            Put(r.ep_key("web", "10.206.255.9", "cd"), b'{"mac": "02:42:0a:00:00:09", "ipv4": "10.205.0.9%x"}'),
        ],
    )
    create_cluster_net(a, nid(1))  # no ValueError
    b.cluster.start()
    create_cluster_net(b, nid(2))
    wait_until(lambda: b.cluster.watch.refused >= 2, what="the hostile records counted")
    with b.store.reading() as tx:
        vx = f"ptx{tx.networks.get(nid(2)).vni}"
    assert b.overlay.peers(vx) == {}
    assert any(
        "record(s) in etcd are not what pybridge writes" in p for p in b.doctor.examine(lease_grace=0)["problems"]
    )
    assert b.views.cluster()["refused_records"] >= 2


def test_a_container_that_restarts_gets_its_cluster_address_back(hosts, kv):
    """Issue 19, item 5: on a cluster network a --restart always container came back from an
    engine restart with the next address (.177 -> .178). Now as on a local network: its own
    address again, unless another host took it meanwhile."""
    a, b, _ = hosts
    pa, pb = create_cluster_net(a, nid(1)), create_cluster_net(b, nid(2))
    first = a.ipam.request_address(pa, "", {ENDPOINT_NAME: "web1"})
    a.ipam.request_address(pa, "", {ENDPOINT_NAME: "other"})  # the cursor moves past it
    a.ipam.remember([("c1" * 32, "web1", first.split("/")[0])])
    a.ipam.release_address(pa, first.split("/")[0])  # dockerd stops it
    assert a.ipam.request_address(pa, "", {ENDPOINT_NAME: "web1"}) == first
    # taken by another host meanwhile: a free one then, and no error
    a.ipam.release_address(pa, first.split("/")[0])
    assert b.ipam.request_address(pb, first.split("/")[0], {}) == first
    again = a.ipam.request_address(pa, "", {ENDPOINT_NAME: "web1"})
    assert again != first


def test_a_new_container_on_a_cluster_network_steps_over_remembered_addresses(hosts, kv):
    """The cluster's claims step over the addresses remembered for restarting containers, as a
    local network's do (issue 21: the etcd path forgot them), and take them only when nothing
    else is free."""
    a, _, _ = hosts
    pa = create_cluster_net(a, nid(1))
    first = a.ipam.request_address(pa, "", {ENDPOINT_NAME: "web1"}).split("/")[0]
    a.ipam.remember([("c1" * 32, "web1", first)])
    a.ipam.release_address(pa, first)  # dockerd stops it
    with a.store.transaction() as tx:  # the walk starts just before it
        pool = tx.leases.get_pool(pa)
        tx.leases.set_cursor(pa, int(ipaddress.ip_address(first)) - 1)
        assert pool is not None and pool.cluster
    other = a.ipam.request_address(pa, "", {ENDPOINT_NAME: "db"}).split("/")[0]
    assert other != first and int(ipaddress.ip_address(other)) == int(ipaddress.ip_address(first)) + 1
    assert a.ipam.request_address(pa, "", {ENDPOINT_NAME: "web1"}).split("/")[0] == first


def create_cluster_net_with_aux(h, network_id, aux: tuple[tuple[str, str], ...], name="web"):
    """dockerd's order: the pool, the gateway, each --aux-address (a plain RequestAddress), then
    CreateNetwork with them in IPv4Data."""
    pool = h.ipam.request_pool(LOCAL_SPACE, SUBNET, "", False)
    gw = h.ipam.request_address(
        pool["PoolID"], GATEWAY.split("/")[0], {"RequestAddressType": "com.docker.network.gateway"}
    )
    held = [h.ipam.request_address(pool["PoolID"], ip, {}) for _, ip in aux]
    try:
        h.networks.create(
            network_id,
            {"pybridge.cluster": name},
            ipv6=False,
            internal=False,
            ipv4_data=[IpamDataSpec(pool=SUBNET, gateway=gw, space=LOCAL_SPACE, aux=tuple((k, ip) for k, ip in aux))],
            ipv6_data=[],
        )
    except Exception:
        for a in held:
            h.ipam.release_address(pool["PoolID"], a.split("/")[0])
        h.ipam.release_address(pool["PoolID"], gw)
        h.ipam.release_pool(pool["PoolID"])
        raise
    return pool["PoolID"]


def test_aux_addresses_are_reserved_cluster_wide_and_compared_like_subnets(hosts, kv):
    """Issue 19, item 4: host B handed host A's --aux-address to `docker run --ip`."""
    a, b, c = hosts
    create_cluster_net_with_aux(a, nid(1), (("router", "10.205.0.250"),))
    held = kv.get(r.addr_key("web", int(ipaddress.ip_address("10.205.0.250"))))
    assert held is not None and r.parse_addr("k", held) == r.AddrRecord("", "aux")
    pb = create_cluster_net_with_aux(b, nid(2), (("router", "10.205.0.250"),))
    with pytest.raises(Conflict, match="already in use"):
        b.ipam.request_address(pb, "10.205.0.250", {})  # docker run --ip on host B
    with pytest.raises(Conflict, match="has aux addresses 10.205.0.250: create it here with the same --aux-address"):
        create_cluster_net(c, nid(3))  # without it: refused, like another subnet
    # a resync does not take the aux address for this host, and etcd losing it gets it back
    kv.txn([], [Delete(r.addr_key("web", int(ipaddress.ip_address("10.205.0.250"))))])
    kv.txn([], [Delete(r.net_key("web"))])
    a.cluster.resync()
    assert r.parse_addr("k", kv.get(r.addr_key("web", int(ipaddress.ip_address("10.205.0.250"))))).host == ""


def test_a_record_counts_only_from_a_live_member_holding_its_addresses(hosts, kv):
    """Issue 19, item 3: one `etcdctl put` of an endpoint record under an address that is not a
    cluster host made every host program it, let that address through the VXLAN filter and,
    with a real container's MAC, divert that container's traffic."""
    a, b, _ = hosts
    pa, pb = create_cluster_net(a, nid(1)), create_cluster_net(b, nid(2))
    with b.store.reading() as tx:
        vx = f"ptx{tx.networks.get(nid(2)).vni}"
    b.cluster.start()
    addr = a.ipam.request_address(pa, "", {})
    a.endpoints.create(nid(1), "e1" * 32, address=addr, address6="", mac="02:00:00:00:19:01")
    wait_until(lambda: "02:00:00:00:19:01" in b.overlay.peers(vx), what="B programs A's container")
    forged = {
        # a stranger: no member key, no lease; with A's container's MAC and with a new one
        r.ep_key("web", "10.206.255.9", "f1" * 32): b'{"mac": "02:00:00:00:19:01", "ipv4": "10.205.0.91"}',
        r.ep_key("web", "10.206.255.9", "f2" * 32): b'{"mac": "02:00:00:00:19:92", "ipv4": "10.205.0.92"}',
        # a live member (A) naming an address it does not hold
        r.ep_key("web", a.address, "f3" * 32): b'{"mac": "02:00:00:00:19:93", "ipv4": "10.205.0.93"}',
    }
    kv.txn([], [Put(k, v) for k, v in forged.items()])
    kv.txn([], [Put(r.name_key("web", "10.206.255.9", "f1"), b'{"name": "db", "ipv4": "10.205.0.91"}')])
    addr_b = b.ipam.request_address(pb, "", {})
    b.endpoints.create(nid(2), "e2" * 32, address=addr_b, address6="", mac="")  # B's view moves on
    wait_until(lambda: b.firewall.elements("vxlan_members4") != {}, what="B's filter written")
    wait_until(
        lambda: ("10.206.255.9", "f2" * 32) in b.cluster.watch._view.endpoints.get("web", {}),
        what="B's watch read the forged records",
    )
    assert b.overlay.peers(vx) == {"02:00:00:00:19:01": (a.address, frozenset({addr.split("/")[0]}))}
    assert all(host == a.address for host, _ in b.firewall.elements("vxlan_members4"))
    assert b.cluster.remote_names("web") == []
    # a member key alone is not enough: the stranger holds none of those addresses
    kv.txn([], [Put(r.member_key("web", "10.206.255.9"), b"{}")])
    wait_until(lambda: "10.206.255.9" in b.cluster.watch._members.get("web", ()), what="the member seen")
    assert b.cluster.remote_peers("web").keys() == {"02:00:00:00:19:01"}


def test_the_vxlan_filter_fails_closed_across_a_restart_while_etcd_is_away(hosts, kv, tmp_path):
    """Issue 19, item 3: a plugin that started while etcd was away took VXLAN from everyone
    until it had read etcd. Now the last members known come back from the state, at once."""
    a, b, _ = hosts
    pa = create_cluster_net(a, nid(1))
    create_cluster_net(b, nid(2))
    with b.store.reading() as tx:
        vni = tx.networks.get(nid(2)).vni
    b.cluster.start()
    a.endpoints.create(nid(1), "e1" * 32, address=a.ipam.request_address(pa, "", {}), address6="", mac="")
    wait_until(lambda: b.firewall.elements("vxlan_members4") == {(a.address, vni << 8): None}, what="A let in")
    b.cluster.stop()  # (its threads end before the store closes)
    b.store.close()
    kv.down = True
    # B's plugin starts again, on the same state, with a firewall that has nothing of ours yet
    settings = load_settings(
        {
            "PYBRIDGE_NAME": "pbtest",
            "PYBRIDGE_IFPREFIX": "pt",
            "PYBRIDGE_DEFAULT_POOLS": "10.207.0.0/16:24",
            "PYBRIDGE_CLUSTER_ETCD": "http://10.206.255.254:2379",
            "PYBRIDGE_CLUSTER_ADDRESS": b.address,
            "PYBRIDGE_CLUSTER_GRACE": "5",
        },
        state_dir=str(tmp_path / "h2"),
        dns=False,
    )
    firewall, nl = FakeFirewall(), FakeNetlink()
    again = build_services(
        settings,
        netlink=nl,
        firewall=firewall,
        sysctl=FakeSysctl(),
        store=Store(tmp_path / "h2" / "state.db").open(),
        synchronous_teardown=True,
        kv=kv,
        overlay=FakeOverlay(nl, {b.address: ("eth1", 1500)}),
    )
    try:
        again.reconciler.restore()
        assert firewall.elements("vxlan_ports") == {4789: None}
        assert firewall.elements("vxlan_members4") == {(a.address, vni << 8): None}
    finally:
        again.store.close()


def test_a_local_address_another_host_took_meanwhile_takes_the_container_off_the_wire(hosts, kv):
    """Issue 19, item 7: a host cut off past the grace comes back; its container's address went
    to another host meanwhile. The resync used only to log it: two containers shared it."""
    a, b, _ = hosts
    pa, pb = create_cluster_net(a, nid(1)), create_cluster_net(b, nid(2))
    addr = a.ipam.request_address(pa, "", {})
    a.endpoints.create(nid(1), "e1" * 32, address=addr, address6="", mac="")
    with a.store.reading() as tx:
        veth = tx.networks.get_endpoint("e1" * 32).host_ifname
    assert a.netlink.devices[veth].up
    kv.expire(a.cluster._lease)  # A cut off past the grace
    ip = addr.split("/")[0]
    assert b.ipam.request_address(pb, ip, {}) == addr  # B takes the address meanwhile
    a.cluster._lease_gone(a.cluster._lease)  # A is back: its session sees the
    a.cluster.resync()  # lease gone and writes its keys again
    assert not a.netlink.devices[veth].up  # off the wire
    assert a.views.cluster()["clashes"] == {"web": [ip]}
    held = r.parse_addr("k", kv.get(r.addr_key("web", int(ipaddress.ip_address(ip)))))
    assert held.host == b.address  # and B keeps it


@pytest.mark.parametrize("what", ["start", "stop"])
def test_a_container_started_or_stopped_while_a_resync_runs_leaves_etcd_as_the_host_holds_it(hosts, kv, what):
    """CI found it: a container started just as etcd came back lost its endpoint record (and its
    address claim): the resync read the state store, the start claimed and published in etcd
    and wrote the store, and the resync then took the new keys for stale ones and deleted them.
    A stop in that window left keys the resync wrote back. Changes and the resync now take
    turns (the injected start or stop runs between the resync's read and its writes)."""
    a = hosts[0]
    pool = create_cluster_net(a, nid(1))
    cluster = a.cluster
    eid = "e2" * 32
    if what == "stop":
        address = a.ipam.request_address(pool, "", {})
        a.endpoints.create(nid(1), eid, address=address, address6="", mac="")
    snapshot, state = cluster.local, {}

    def change():
        if what == "start":
            state["address"] = a.ipam.request_address(pool, "", {})
            a.endpoints.create(nid(1), eid, address=state["address"], address6="", mac="")
        else:
            a.endpoints.delete(nid(1), eid)
            a.ipam.release_address(pool, address)
            state["address"] = address
        state["done"] = True

    def read_then_change():
        held = snapshot()
        worker = threading.Thread(target=change, daemon=True)
        worker.start()
        worker.join(1.0)  # before the fix it ran to its end here, inside the resync
        state["worker"] = worker
        return held

    cluster.local = read_then_change
    cluster.resync()
    state["worker"].join(10)
    assert state.get("done"), "the injected change did not run"
    ip = int(ipaddress.ip_interface(state["address"]).ip)
    keys = {k for k in kv.data if "/web/" in k}
    with a.store.reading() as tx:
        mac = tx.networks.get_endpoint(eid).mac if what == "start" else None
    expected = {r.addr_key("web", ip), r.ep_key("web", a.address, eid), r.mac_key("web", mac)} if mac else set()
    if what == "start":
        assert expected <= keys, sorted(keys)
    else:
        assert not [k for k in keys if k == r.addr_key("web", ip) or eid in k], sorted(keys)


def test_while_our_table_is_gone_the_vxlan_device_is_down_and_comes_back_up_with_it(hosts):
    """Issue 20, item 4: the raw chain keeps VXLAN of a network to the hosts that have it (and
    off containers); while it cannot be rewritten, the network's VXLAN device is down instead."""
    from plugin.domain.errors import KernelError
    from plugin.domain.naming import vxlan_name

    a = hosts[0]
    create_cluster_net(a, nid(1))
    with a.store.reading() as tx:
        vni = tx.networks.get(nid(1)).vni
    dev = a.netlink.devices[vxlan_name("pt", vni)]
    assert dev.up
    fw = a.firewall
    fw.kernel, fw.fail = None, True
    with pytest.raises(KernelError):
        a.doctor.heal_firewall()
    assert not dev.up
    fw.fail = False
    a.doctor.heal_firewall()
    assert dev.up and not a.lifecycle.exposed


def test_etcd_tls_settings_are_checked_before_anything_starts(tmp_path):
    """Issue 22, item 2: the CA, client certificate and key are files (of the etcd-tls mount, or
    absolute paths); the key is its owner's alone; TLS needs https endpoints; a certificate
    comes with its key. Each refusal names the setting."""
    from plugin.config import EtcdTls
    from plugin.domain.errors import ConfigError

    ca, cert, key = (tmp_path / n for n in ("ca.pem", "host.pem", "host-key.pem"))
    for f in (ca, cert, key):
        f.write_text("not read here\n")
    key.chmod(0o600)
    base = {"PYBRIDGE_CLUSTER_ETCD": "https://10.206.255.254:2379", "PYBRIDGE_CLUSTER_ADDRESS": "10.206.255.1"}
    tls = {
        "PYBRIDGE_CLUSTER_ETCD_CA": str(ca),
        "PYBRIDGE_CLUSTER_ETCD_CERT": str(cert),
        "PYBRIDGE_CLUSTER_ETCD_KEY": str(key),
    }
    assert load_settings(base | tls, state_dir=str(tmp_path)).cluster_tls == EtcdTls(str(ca), str(cert), str(key))
    assert load_settings(base, state_dir=str(tmp_path)).cluster_tls is None
    refused = {
        "mode 0644 lets others read": ({}, lambda: key.chmod(0o644)),
        "need https:// endpoints": ({"PYBRIDGE_CLUSTER_ETCD": "http://10.206.255.254:2379"}, None),
        "go together": ({"PYBRIDGE_CLUSTER_ETCD_KEY": ""}, None),
        "PYBRIDGE_CLUSTER_ETCD_CA: /nonexistent/ca.pem is not a file": (
            {"PYBRIDGE_CLUSTER_ETCD_CA": "/nonexistent/ca.pem"},
            None,
        ),
        "invalid PYBRIDGE_CLUSTER_ETCD_CERT '../host.pem'": ({"PYBRIDGE_CLUSTER_ETCD_CERT": "../host.pem"}, None),
    }
    for message, (change, before) in refused.items():
        key.chmod(0o600)
        if before is not None:
            before()
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_settings(base | tls | change, state_dir=str(tmp_path))


def test_etcd_login_settings(tmp_path):
    """Issue 22, item 1: the password is a file (0600) in the etcd-tls mount or at an absolute
    path; the user defaults to pybridge-ADDRESS, as --etcd-access names it."""
    from plugin.config import EtcdLogin
    from plugin.domain.errors import ConfigError

    password = tmp_path / "etcd.password"
    password.write_text("secret\n")
    password.chmod(0o600)
    base = {"PYBRIDGE_CLUSTER_ETCD": "http://10.206.255.254:2379", "PYBRIDGE_CLUSTER_ADDRESS": "10.206.255.1"}
    login = load_settings(base | {"PYBRIDGE_CLUSTER_ETCD_PASSWORD": str(password)}, state_dir=str(tmp_path))
    assert login.cluster_login == EtcdLogin("pybridge-10.206.255.1", str(password))
    named = base | {"PYBRIDGE_CLUSTER_ETCD_PASSWORD": str(password), "PYBRIDGE_CLUSTER_ETCD_USER": "web-host-1"}
    assert load_settings(named, state_dir=str(tmp_path)).cluster_login == EtcdLogin("web-host-1", str(password))
    assert load_settings(base, state_dir=str(tmp_path)).cluster_login is None
    with pytest.raises(ConfigError, match="PYBRIDGE_CLUSTER_ETCD_USER needs PYBRIDGE_CLUSTER_ETCD_PASSWORD"):
        load_settings(base | {"PYBRIDGE_CLUSTER_ETCD_USER": "web-host-1"}, state_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="invalid PYBRIDGE_CLUSTER_ETCD_USER"):
        load_settings(named | {"PYBRIDGE_CLUSTER_ETCD_USER": "a b"}, state_dir=str(tmp_path))
    password.chmod(0o640)
    with pytest.raises(ConfigError, match="mode 0640 lets others read the password"):
        load_settings(base | {"PYBRIDGE_CLUSTER_ETCD_PASSWORD": str(password)}, state_dir=str(tmp_path))


def test_what_etcd_answers_cannot_forge_a_log_line():
    """etcd's answers (or a proxy's on the way) reach errors and the log: bounded, and without a
    control character (a line break would start a log line of its own)."""
    from plugin.cluster.etcd import _said

    said = _said("permission denied\n2026-12-04 ERROR forged\x1b[31m" + "x" * 500, 160)
    assert len(said) == 160 and "\n" not in said and "\x1b" not in said and said.startswith("permission denied?")


def test_a_host_that_deletes_anothers_claim_and_makes_its_own_gains_nothing(hosts, kv):
    """Issue 22: every host may write addr/ (etcd's roles cannot say "create only"), so host C,
    with its own credentials, deletes A's claim of A's container's address and makes its own,
    with a listing and an endpoint record under its own prefix. A listed the address first, and
    only C can list under C's prefix, only A under A's: B still counts A's container and not
    C's; A's resync keeps its container on the network; B cannot claim the address either."""
    a, b, c = hosts
    pa = create_cluster_net(a, nid(1))
    create_cluster_net(b, nid(2))
    create_cluster_net(c, nid(3))
    with b.store.reading() as tx:
        vx = f"ptx{tx.networks.get(nid(2)).vni}"
    cidr = a.ipam.request_address(pa, "", {})
    ip = cidr.split("/")[0]
    n = int(ipaddress.ip_address(ip))
    a.endpoints.create(nid(1), "e1" * 32, address=cidr, address6="", mac="02:00:00:00:22:01")
    for h in (a, b):  # (C runs code of its own, not pybridge's resync, which would undo its keys)
        h.cluster.start()
    wait_until(lambda: set(b.overlay.peers(vx)) == {"02:00:00:00:22:01"}, what="B programs A's container")
    assert b.cluster.watch.holder("web", n) == a.address

    key = r.addr_key("web", n)
    lease = c.cluster._session()
    assert c.cluster.kv.txn([], [Delete(key)])  # what C's etcd user may do
    assert c.cluster.kv.txn(
        [],
        [
            Put(key, r.AddrRecord(c.address, "static").to_json().encode(), lease),
            Put(r.listing_key("web", c.address, n), b"{}", lease),
            Put(
                r.ep_key("web", c.address, "e3" * 32),
                r.EndpointRecord("02:00:00:00:22:03", ip, "").to_json().encode(),
                lease,
            ),
        ],
    )
    assert r.parse_addr(key, kv.get(key)).host == c.address  # the attack landed in etcd
    wait_until(
        lambda: (c.address, "e3" * 32) in b.cluster.watch._view.endpoints.get("web", {}), what="B reads C's record"
    )
    wait_until(  # (the hosts' reserves are listed too: issue 23, item 6)
        lambda: c.address in b.cluster.watch._listings.get("web", {}).get(n, {}), what="B reads C's listing"
    )
    assert b.cluster.watch.holder("web", n) == a.address
    assert set(b.overlay.peers(vx)) == {"02:00:00:00:22:01"}, "C's record took over A's container's address"
    assert not b.cluster.claim("web", n, "static")

    a.cluster.resync()
    assert a.cluster.clashes == {}, "A took its own container off the network"
    assert kv.get(r.listing_key("web", a.address, n)) is not None
    assert set(b.overlay.peers(vx)) == {"02:00:00:00:22:01"}

    # A's container goes: its listing with it, and C's claim is C's (B counts C's record then)
    a.endpoints.delete(nid(1), "e1" * 32)
    a.ipam.release_address(pa, ip)
    assert kv.get(r.listing_key("web", a.address, n)) is None
    wait_until(lambda: set(b.overlay.peers(vx)) == {"02:00:00:00:22:03"}, what="B counts the address as C's then")


def test_changes_that_come_together_are_told_to_the_data_plane_together(kv):
    """Issue 23, item 8 (the simulator found it): each key of another host's container told the
    data plane at once, and telling it costs the whole network's peers, so a host's work grew
    with the cluster's churn squared. The watch now tells what came within a short window once."""
    from plugin.cluster.addresses import AddressBook
    from plugin.cluster.watch import ClusterWatch

    watch = ClusterWatch(kv, "10.206.255.1", AddressBook())
    told: list[str] = []
    watch.on_endpoints = lambda network, peers: told.append(network)
    stop = threading.Event()
    notifier = threading.Thread(target=watch.run_notifier, args=(stop, 0.2), daemon=True)
    notifier.start()
    try:
        for _ in range(100):  # a hundred changes of one network, as fast as they come
            watch._notify({("ep", "web")})
        watch._notify({("ep", "db")})
        wait_until(lambda: "db" in told, what="the changes told")
        assert 2 <= len(told) <= 4, told  # each network once (a second window at most)
        assert set(told) == {"web", "db"}
        watch._notify({("ep", "web")})  # a change after: told again
        wait_until(lambda: len([t for t in told if t == "web"]) >= 2, what="a later change told")
    finally:
        stop.set()
        notifier.join(5)


_HOSTS = ("10.206.255.1", "10.206.255.2", "10.206.255.3")  # the first is the watching host
_ADDRS = tuple(int(ipaddress.ip_address(f"10.205.0.{i}")) for i in range(2, 6))


def _watch_op():
    from hypothesis import strategies as st

    host, addr = st.sampled_from(_HOSTS), st.sampled_from(_ADDRS)
    ep = st.tuples(
        st.just("ep"),
        host,
        st.sampled_from(("e1", "e2", "e3")),
        st.sampled_from(("02:00:00:00:00:01", "02:00:00:00:00:02", "03:00:00:00:00:01", None)),
        st.one_of(addr, st.none()),
    )
    return st.one_of(
        ep,
        ep,
        ep,
        st.tuples(st.just("listing"), host, addr, st.booleans()),
        st.tuples(st.just("member"), host, st.booleans()),
    )


def _reference_peers(watch, name):
    """The peers as the watch computed them before it kept them (every record checked again)."""
    entries = {
        k: rec
        for k, rec in watch._view.endpoints.get(name, {}).items()
        if watch._counts(name, k[0], (rec.ipv4, rec.ipv6))
    }
    out = {}
    for (host, _eid), rec in sorted(entries.items()):
        out[rec.mac] = (host, frozenset(a for a in (rec.ipv4, rec.ipv6) if a))
    return out


def test_the_peers_kept_as_keys_change_are_the_peers_computed_from_scratch():
    """Issue 23, item 8: the watch keeps the records that count as each key changes, rather
    than check the whole network's records on every change. After any sequence of members
    coming and going, listings (who holds an address: first listed), endpoint records (MACs two
    records share, hostile values, deletes), it answers what checking everything answers."""
    from hypothesis import given, settings, strategies as st

    from plugin.cluster.addresses import AddressBook
    from plugin.cluster.interfaces import Event
    from plugin.cluster.watch import ClusterWatch

    # each example starts with the three hosts members and each address listed by one of them
    # (so that records count and clash often), then changes anything
    setup = st.lists(st.sampled_from(_HOSTS), min_size=len(_ADDRS), max_size=len(_ADDRS))
    seen = {"counted": 0, "shared": 0}  # (the cases were exercised: records counted, MACs shared)

    from hypothesis import example

    # (two other hosts' records with one MAC, each counting: the later host's is the peer)
    shared_mac = [
        ("ep", _HOSTS[1], "e1", "02:00:00:00:00:01", _ADDRS[1]),
        ("ep", _HOSTS[2], "e2", "02:00:00:00:00:01", _ADDRS[2]),
    ]

    @settings(max_examples=300, deadline=None)
    @given(setup, st.lists(_watch_op(), min_size=10, max_size=60))
    @example(
        list(_HOSTS[:1] + _HOSTS[1:] + _HOSTS[:1]), shared_mac + shared_mac[:1] + [("ep", _HOSTS[2], "e2", None, None)]
    )
    def run(holders, ops):
        watch = ClusterWatch(FakeKV(), _HOSTS[0], AddressBook())
        revision = 0
        first = [("member", h, True) for h in _HOSTS] + [("listing", h, a, True) for h, a in zip(holders, _ADDRS)]
        for op in first + ops:
            revision += 1
            if op[0] == "member":
                _, host, present = op
                key, value = r.member_key("web", host), b"{}" if present else None
            elif op[0] == "listing":
                _, host, address, present = op
                key, value = r.listing_key("web", host, address), b"{}" if present else None
            else:
                _, host, eid, mac, address = op
                key = r.ep_key("web", host, eid * 32)
                if mac is None:
                    value = None
                else:  # (a multicast MAC, or no address: refused as hostile)
                    ip = str(ipaddress.ip_address(address)) if address else ""
                    value = json.dumps({"mac": mac, "ipv4": ip, "ipv6": ""}).encode()
            watch._events([Event(key, value, revision, revision if value is not None else 0)])
            assert watch.peers("web") == _reference_peers(watch, "web")
            seen["counted"] += len(watch.peers("web"))
            seen["shared"] += sum(len(k) > 1 for k in watch._by_mac.get("web", {}).values())
        assert not any(h == _HOSTS[0] for h, _ in watch.peers("web").values()), "never the watching host's own"

    run()
    assert seen["counted"] > 100 and seen["shared"] > 0, seen


def test_a_host_with_more_containers_than_one_etcd_transaction_holds_keeps_them_all_in_etcd(hosts, kv):
    """etcd refuses a transaction of more than 128 operations (the fake as etcd does): a host
    with 150 containers on one network wrote its names, and its keys after a lost lease, in one
    transaction each, and etcd took none of them. A returning host also claimed its lost
    addresses and MACs one transaction each (two round trips per container before its endpoints
    reached the others); now they go in batches."""
    a = hosts[0]
    pool = create_cluster_net(a, nid(1))
    ids = [f"{i:064x}" for i in range(1, 151)]
    infos = []
    for i, eid in enumerate(ids):
        addr = a.ipam.request_address(pool, "", {})
        a.endpoints.create(nid(1), eid, address=addr, address6="", mac=f"02:42:0a:cd:01:{i:02x}")
        infos.append(ContainerInfo(eid, f"c{i}", (), addr.split("/")[0], ""))
    a.cluster.publish_names("web", infos)
    a.cluster.write_names()
    assert len(kv.range(r.name_prefix("web", a.address))[0]) == 150, "the names never reached etcd"

    kv.expire(a.cluster._lease)  # cut off past the grace: every key of the host is gone
    assert kv.range(r.ep_prefix("web", a.address))[0] == {}
    a.cluster._lease_gone(a.cluster._lease)
    before = kv.txns
    a.cluster.resync()
    a.cluster.write_names()
    assert len(kv.range(r.ep_prefix("web", a.address))[0]) == 150
    assert len(kv.range(r.name_prefix("web", a.address))[0]) == 150
    mine = [k for k, v in kv.range(r.addr_prefix("web"))[0].items() if r.parse_addr(k, v).host == a.address]
    assert len(mine) == 150
    assert len(a.cluster._my_macs("web")) == 150
    assert a.views.cluster()["clashes"] == {}
    assert kv.txns - before <= 20, f"the resync took {kv.txns - before} transactions for 150 containers"

    old = a.cluster._lease  # a restarted plugin: a new lease, its keys still under the old one
    a.cluster._lease = 0
    before = kv.txns
    a.cluster.resync()
    a.cluster.write_names()
    assert a.cluster._lease != old
    left = sorted(k for k, (_, lease, _) in kv.data.items() if lease == old)
    assert left == [], f"{len(left)} keys left under the old lease: {left[:3]}"
    assert kv.txns - before <= 20, f"the resync took {kv.txns - before} transactions for 150 containers"


def test_a_returning_host_claims_its_lost_addresses_together_and_clashes_only_on_the_one_taken(hosts, kv):
    a, b, _ = hosts
    pa, pb = create_cluster_net(a, nid(1)), create_cluster_net(b, nid(2))
    held = [a.ipam.request_address(pa, "", {}) for _ in range(5)]
    for i, addr in enumerate(held):
        a.endpoints.create(nid(1), f"e{i}" * 32, address=addr, address6="", mac="")
    kv.expire(a.cluster._lease)
    taken = held[2].split("/")[0]
    assert b.ipam.request_address(pb, taken, {}) == held[2]  # B takes one of them meanwhile
    a.cluster._lease_gone(a.cluster._lease)
    a.cluster.resync()
    assert a.views.cluster()["clashes"] == {"web": [taken]}
    for addr in held:
        ip = addr.split("/")[0]
        owner = r.parse_addr("k", kv.get(r.addr_key("web", int(ipaddress.ip_address(ip))))).host
        assert owner == (b.address if ip == taken else a.address), ip
