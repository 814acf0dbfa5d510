"""Cluster mode over WireGuard (PYBRIDGE_CLUSTER_ENCRYPT=wireguard), over contract-enforcing
fakes: three "hosts" sharing one fake etcd, each an etcd user that may write only its own prefix
and the claims. The real thing (wireguard on the three-host rig, captures, forged frames) is
tests/multihost/test_wireguard.py."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from plugin.cluster import records as r
from plugin.cluster.interfaces import Put
from plugin.cluster.tunnel import tunnel_address
from plugin.config import load_settings
from plugin.domain.errors import ConfigError, InvalidRequest
from plugin.kernel import nftrules
from tests.fakes import FakeKV, host_over_fakes
from tests.unit.test_cluster import create_cluster_net, nid, wait_until

DEVICE = "ptwg0"


def make_host(tmp_path, kv, n: int, **extra):
    address = f"10.206.255.{n}"
    env = {
        "PYBRIDGE_NAME": "pbtest",
        "PYBRIDGE_IFPREFIX": "pt",
        "PYBRIDGE_DEFAULT_POOLS": "10.207.0.0/16:24",
        "PYBRIDGE_CLUSTER_ETCD": "http://10.206.255.254:2379",
        "PYBRIDGE_CLUSTER_ADDRESS": address,
        "PYBRIDGE_CLUSTER_GRACE": "5",
        "PYBRIDGE_CLUSTER_ENCRYPT": "wireguard",
        **extra,
    }
    d = tmp_path / f"h{n}"
    d.mkdir(exist_ok=True)
    services = host_over_fakes(env, d, kv.as_user(r.writable(address)), address, wireguard=True)
    services.address = address
    services.dir = d
    return services


def stop(h) -> None:
    h.cluster.stop()
    h.store.close()


@pytest.fixture
def kv():
    return FakeKV()


@pytest.fixture
def hosts(tmp_path, kv):
    made = [make_host(tmp_path, kv, n) for n in (1, 2, 3)]
    for h in made:
        h.underlay_up()
        h.reconciler.restore()
    yield made
    for h in made:
        stop(h)
    assert [h.cluster.kv.refused for h in made] == [0] * len(made)


def peers_of(h) -> dict[str, tuple[str, int, str]]:
    """endpoint -> (key, port, allowed) of the host's WireGuard device."""
    return {p.endpoint: (p.key, p.port, p.allowed) for p in h.tunnel.wireguard.peers(DEVICE).values()}


def public(h) -> str:
    return h.tunnel.wireguard.public_key(str(h.dir / "wireguard.key"))


def test_tunnel_addresses_keep_the_underlays_host_bits():
    import ipaddress

    net = ipaddress.ip_network("10.254.0.0/16")
    assert tunnel_address(net, "10.206.255.7") == "10.254.255.7"
    assert tunnel_address(net, "192.168.3.200") == "10.254.3.200"


def test_a_host_makes_its_key_pair_at_first_start_and_publishes_only_the_public_key(hosts, kv):
    a = hosts[0]
    key_file = a.dir / "wireguard.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    private = key_file.read_text().strip()
    assert len(base64.b64decode(private)) == 32
    assert a.netlink.devices[DEVICE].mtu == 1500 - 60
    assert a.tunnel.wireguard.devices[DEVICE]["address"] == "10.254.255.1/16"
    published = kv.data[r.tunnel_key(a.address)][0]
    assert json.loads(published) == {"key": public(a), "port": 51820}
    assert private.encode() not in b"".join(v for v, *_ in kv.data.values())
    # the key survives a restart: the same pair, not a new one
    a.tunnel.up(1500)
    assert key_file.read_text().strip() == private


def test_every_host_peers_with_exactly_the_live_members_and_vxlan_runs_over_the_tunnel(hosts, kv):
    a, b, c = hosts
    for h in hosts:
        h.cluster.start()
    wait_until(
        lambda: (
            peers_of(a)
            == {
                b.address: (public(b), 51820, "10.254.255.2"),
                c.address: (public(c), 51820, "10.254.255.3"),
            }
        ),
        what="A peers with B and C",
    )
    pa = create_cluster_net(a, nid(1))
    pb = create_cluster_net(b, nid(1))
    addr = b.ipam.request_address(pb, "", {})
    b.endpoints.create(nid(1), "e1" * 32, address=addr, address6="", mac="")
    with a.store.reading() as tx:
        net = tx.networks.get(nid(1))
    vx = f"ptx{net.vni}"
    assert net.mtu == 1500 - 60 - 50  # WireGuard's and VXLAN's overheads
    wait_until(lambda: len(a.overlay.peers(vx)) == 1, what="B's container programmed on A")
    ((host, _ips),) = a.overlay.peers(vx).values()
    assert host == "10.254.255.2"  # the tunnel address, never the underlay's
    fw = a.firewall
    wait_until(lambda: fw.elements("vxlan_members4") == {("10.254.255.2", net.vni << 8): None}, what="filter")
    assert fw.elements("vxlan_tunnel_src4") == {"10.254.255.2": None}
    assert fw.elements("vxlan_tunnel_links") == {DEVICE: None}
    # a host that goes (its lease expires) stops being a peer at once
    kv.expire(c.cluster._lease)
    c.cluster.stop()
    wait_until(lambda: c.address not in peers_of(a), what="C no longer a peer of A")
    assert b.address in peers_of(a)
    del pa


def test_an_mtu_above_what_wireguard_leaves_is_refused(hosts):
    with pytest.raises(InvalidRequest, match="WireGuard 60, so at most 1390"):
        create_cluster_net(hosts[0], nid(1), **{"com.docker.network.driver.mtu": "1450"})


def test_hosts_whose_tunnel_addresses_clash_are_no_ones_peers(hosts, kv):
    """Tunnel addresses are the underlay address's host bits in the WireGuard subnet: two hosts
    that map to one (10.205.255.2 and B's 10.206.255.2) cannot be told apart, so neither is a
    peer; one that maps to this host's own is ignored. Written as etcd's root could."""
    a, b, c = hosts
    for h in (a, b):
        h.cluster.start()
    wait_until(lambda: b.address in peers_of(a), what="A peers with B")

    def record(n: int) -> bytes:
        return r.TunnelRecord(base64.b64encode(bytes([n]) * 32).decode(), 51820).to_json().encode()

    kv.txn([], [Put(r.tunnel_key("10.205.255.2"), record(7)), Put(r.tunnel_key("10.204.255.1"), record(8))])
    wait_until(lambda: len(a.tunnel.snapshot()["ignored"]) == 3, what="three hosts left out")
    ignored = a.tunnel.snapshot()["ignored"]
    assert ignored["10.204.255.1"] == "its tunnel address 10.254.255.1 is this host's"
    for host in (b.address, "10.205.255.2"):
        assert ignored[host] == "its tunnel address 10.254.255.2 is also that of 10.205.255.2, 10.206.255.2"
    assert set(peers_of(a)) == {c.address}  # the one that clashes with nobody


def test_records_that_would_mislead_the_peering_are_left_out(hosts, kv):
    """Another host's public key copied, this host's own key, a malformed key: none becomes a
    peer, and the host they would have hurt keeps its peering with the rest."""
    a, b, c = hosts
    for h in (a, b):
        h.cluster.start()
    wait_until(lambda: b.address in peers_of(a), what="A peers with B")
    # C (hostile) publishes B's public key as its own: neither can be told apart, so neither is
    # a peer (C cannot decrypt B's traffic either way: it has no private key of B's)
    c.cluster.kv.txn([], [Put(r.tunnel_key(c.address), r.TunnelRecord(public(b), 51820).to_json().encode())])
    wait_until(lambda: peers_of(a) == {}, what="B and C both left out")
    assert "also that of" in a.tunnel.snapshot()["ignored"][b.address]
    # C publishes A's own key: ignored; B is a peer again
    c.cluster.kv.txn([], [Put(r.tunnel_key(c.address), r.TunnelRecord(public(a), 51820).to_json().encode())])
    wait_until(lambda: set(peers_of(a)) == {b.address}, what="B back, C out")
    assert a.tunnel.snapshot()["ignored"] == {c.address: "it published this host's public key"}
    refused = a.cluster.refused
    c.cluster.kv.txn([], [Put(r.tunnel_key(c.address), b'{"key": "x; rm -rf /", "port": 51820}')])
    wait_until(lambda: a.cluster.refused > refused, what="a malformed record refused")
    # C cannot write B's record (etcd's access control: its user writes its own prefix only)
    from plugin.cluster.interfaces import ClusterUnavailable

    with pytest.raises(ClusterUnavailable, match="permission denied"):
        c.cluster.kv.txn([], [Put(r.tunnel_key(b.address), r.TunnelRecord(public(c), 1).to_json().encode())])
    c.cluster.kv.refused = 0  # (that refusal was the test's own)


def test_a_restart_with_etcd_away_peers_as_before(tmp_path, kv, hosts):
    a = hosts[0]
    for h in hosts:
        h.cluster.start()
    wait_until(lambda: len(peers_of(a)) == 2, what="A peers with B and C")
    before = peers_of(a)
    stop(a)
    kv.down = True
    again = make_host(tmp_path, kv, 1)
    try:
        again.underlay_up()
        again.reconciler.restore()
        assert peers_of(again) == before  # from the state: traffic goes on while etcd is away
    finally:
        kv.down = False
        stop(again)


def test_rotating_the_key_reaches_the_other_hosts(hosts, kv):
    a, b, _ = hosts
    for h in hosts:
        h.cluster.start()
    wait_until(lambda: a.address in peers_of(b), what="B peers with A")
    old = public(a)
    new = a.tunnel.rotate()
    assert new != old and new == public(a)
    assert stat.S_IMODE(os.stat(a.dir / "wireguard.key").st_mode) == 0o600
    assert not os.path.exists(a.dir / "wireguard.key.old")
    wait_until(lambda: peers_of(b)[a.address][0] == new, what="B peers with A's new key")


def test_settings_of_the_encrypted_underlay_are_checked(tmp_path):
    base = {"PYBRIDGE_CLUSTER_ETCD": "http://10.0.0.9:2379", "PYBRIDGE_CLUSTER_ADDRESS": "10.0.0.1"}
    for bad in (
        {"PYBRIDGE_CLUSTER_ENCRYPT": "ipsec"},
        {"PYBRIDGE_CLUSTER_ENCRYPT": "wireguard", "PYBRIDGE_CLUSTER_WG_SUBNET": "10.254.0.1/16"},
        {"PYBRIDGE_CLUSTER_ENCRYPT": "wireguard", "PYBRIDGE_CLUSTER_WG_SUBNET": "224.0.0.0/8"},
        {"PYBRIDGE_CLUSTER_ENCRYPT": "wireguard", "PYBRIDGE_CLUSTER_WG_PORT": "0"},
    ):
        with pytest.raises(ConfigError):
            load_settings(base | bad, state_dir=str(tmp_path))
    assert load_settings(base, state_dir=str(tmp_path)).cluster_encrypt == "none"


def test_the_firewall_elements_of_a_tunnel_are_checked():
    got = nftrules.vxlan_elements(4789, [(4096, "10.254.0.2")], "pbwg0")
    assert got["vxlan_tunnel_links"] == {"pbwg0": None}
    assert got["vxlan_tunnel_src4"] == {"10.254.0.2": None}
    assert nftrules.vxlan_elements(4789, [(4096, "10.206.255.2")])["vxlan_tunnel_links"] == {}
    from plugin.domain.errors import KernelError

    with pytest.raises(KernelError):
        nftrules.vxlan_elements(4789, [(4096, "10.254.0.2")], "wg0; drop")


def test_a_restarted_host_writes_all_it_holds_though_its_first_write_was_the_key(tmp_path, kv, hosts):
    """The WireGuard record is written at start, before the session's first round: the lease it
    takes is new, so the resync still writes the host's memberships and endpoints under it (a
    host killed and started again was otherwise left without its member keys)."""
    a = hosts[0]
    create_cluster_net(a, nid(1))
    stop(a)
    kv.expire(a.cluster._lease)  # it was gone longer than the grace
    assert r.member_key("web", a.address) not in kv.data
    again = make_host(tmp_path, kv, 1)
    try:
        again.underlay_up()  # takes the new lease
        again.reconciler.restore()
        again.cluster.start()
        wait_until(lambda: r.member_key("web", a.address) in kv.data, what="membership written again")
    finally:
        stop(again)


def test_rotate_key_over_the_plugins_socket(hosts, tmp_path, kv):
    from plugin.app import create_app
    from tests.unit.test_cluster import make_host as make_clear_host

    a = hosts[0]
    client = create_app(a).test_client()
    old = public(a)
    got = client.post("/pybridge/cluster/rotate-key")
    assert got.status_code == 200 and got.get_json()["public_key"] == public(a) != old
    view = client.get("/pybridge/cluster").get_json()["underlay"]
    assert view["encrypt"] == "wireguard" and view["address"] == "10.254.255.1"
    assert set(view["peers"]) <= {"10.206.255.2", "10.206.255.3"}
    (tmp_path / "clear").mkdir()
    clear = make_clear_host(tmp_path / "clear", kv, 9)  # cluster mode in clear: nothing to rotate
    try:
        refused = create_app(clear).test_client().post("/pybridge/cluster/rotate-key")
        assert refused.status_code == 400 and "PYBRIDGE_CLUSTER_ENCRYPT" in refused.get_json()["Err"]
    finally:
        clear.store.close()
