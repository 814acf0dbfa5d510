"""The cluster's real adapters: EtcdKV against a real etcd member on loopback (Debian's
etcd-server), Vxlan against a throwaway network namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import uuid

import pytest

from plugin.cluster import records as r
from plugin.cluster.etcd import AuthOff, EtcdKV
from plugin.cluster.records import etcd_access
from plugin.config import EtcdTls, etcd_user
from plugin.cluster.interfaces import (
    Absent,
    ClusterUnavailable,
    Delete,
    DeleteUnder,
    LeaseExpired,
    NoneUnder,
    Put,
    TXN_OPS,
    ValueIs,
)
from plugin.kernel.vxlan import Vxlan
from tests.certificates import Certificates
from tests.etcdserver import EtcdServer
from tests.waiting import wait_for

from .conftest import run


@pytest.fixture
def etcd():
    if shutil.which("etcd") is None:
        pytest.fail("etcd is missing: apt-get install etcd-server (scripts/test.sh does)")
    server = EtcdServer(client_port=23790, peer_port=23800).start()
    yield server
    server.remove()


def test_transactions_leases_and_watch_behave_as_etcd_says(etcd):
    kv = EtcdKV([("http", "127.0.0.1", 1), ("http", "127.0.0.1", etcd.client_port)])  # the first is dead
    lease = kv.grant(5)
    assert kv.keepalive(lease)
    assert kv.txn([Absent("/t/a")], [Put("/t/a", b"1", lease)])
    assert not kv.txn([Absent("/t/a")], [Put("/t/a", b"2")])
    assert kv.get("/t/a") == b"1"
    assert kv.txn([NoneUnder("/m/")], [Put("/t/b", b"3")]) and not kv.txn([NoneUnder("/t/")], [Put("/t/c", b"4")])
    assert not kv.txn([ValueIs("/t/a", b"9")], [Delete("/t/a")]) and kv.get("/t/a") == b"1"
    events = []
    stop = threading.Event()
    _, revision = kv.range("/w/")
    t = threading.Thread(target=kv.watch, args=("/w/", revision + 1, events.extend, stop), daemon=True)
    t.start()
    kv.txn([], [Put("/w/x", b"1"), Put("/w/y", b"2")])
    kv.txn([], [DeleteUnder("/w/")])
    assert wait_for(lambda: len(events) == 4, timeout=10), events
    assert [(e.key, e.value) for e in events] == [("/w/x", b"1"), ("/w/y", b"2"), ("/w/x", None), ("/w/y", None)]
    # etcd takes TXN_OPS operations (and conditions) in a transaction, no more, and applies
    # nothing of a longer one (the fake refuses it the same way)
    assert kv.txn([], [Put(f"/n/{i}", b"1") for i in range(TXN_OPS)])
    with pytest.raises(ClusterUnavailable, match="too many operations"):
        kv.txn([], [Put(f"/o/{i}", b"1") for i in range(TXN_OPS + 1)])
    with pytest.raises(ClusterUnavailable, match="too many operations"):
        kv.txn([Absent(f"/o/{i}") for i in range(TXN_OPS + 1)], [Put("/o/x", b"1")])
    assert kv.range("/o/")[0] == {} and len(kv.range("/n/")[0]) == TXN_OPS
    kv.revoke(lease)  # keys of a revoked (or expired) lease go
    assert kv.get("/t/a") is None and not kv.keepalive(lease)
    with pytest.raises(LeaseExpired):  # and a put under it is refused, whole
        kv.txn([], [Put("/t/z", b"1"), Put("/t/y", b"2", lease)])
    assert kv.get("/t/z") is None
    stop.set()
    etcd.stop()
    with pytest.raises(ClusterUnavailable, match="etcd unreachable"):
        kv.get("/t/b")


def test_a_watch_resumes_across_a_restart_of_etcd_without_losing_events(etcd):
    kv = EtcdKV([("http", "127.0.0.1", etcd.client_port)])
    events, stop = [], threading.Event()
    _, revision = kv.range("/w/")

    def follow():
        while not stop.is_set():
            try:  # a watcher resumes after the last event it got
                kv.watch("/w/", events[-1].revision + 1 if events else revision + 1, events.extend, stop)
            except ClusterUnavailable:
                stop.wait(0.2)

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    kv.txn([], [Put("/w/1", b"a")])
    assert wait_for(lambda: len(events) == 1, timeout=10)
    etcd.stop()
    etcd.start()  # same data directory
    kv.txn([], [Put("/w/2", b"b")])
    assert wait_for(lambda: [e.key for e in events] == ["/w/1", "/w/2"], timeout=20), events
    stop.set()


def test_vxlan_device_and_entries(netns):
    run(netns, "ip", "link", "add", "pbul0", "type", "veth", "peer", "name", "pbul1")
    run(netns, "ip", "addr", "add", "10.206.1.1/24", "dev", "pbul0")
    run(netns, "ip", "link", "set", "pbul0", "up")
    run(netns, "ip", "link", "add", "pt-br", "type", "bridge")
    vx = Vxlan(netns)
    assert vx.underlay("10.206.1.1") == ("pbul0", 1500) and vx.underlay("10.206.1.9") is None
    assert vx.ensure_vxlan("ptx4096", 4096, "10.206.1.1", 4789, 1450, "pt-br")
    assert not vx.ensure_vxlan("ptx4096", 4096, "10.206.1.1", 4789, 1450, "pt-br")  # ensure: once
    detail = run(netns, "ip", "-d", "link", "show", "ptx4096")
    assert "vxlan id 4096" in detail and "nolearning" in detail and "proxy" in detail and "mtu 1450" in detail
    assert "master pt-br" in detail
    peers = {"02:42:0a:cd:00:05": ("10.206.1.2", frozenset({"10.205.0.5"}))}
    vx.set_peers("ptx4096", "pt-br", peers)
    assert vx.peers("ptx4096") == peers
    fdb = run(netns, "bridge", "fdb", "show", "dev", "ptx4096")
    assert "02:42:0a:cd:00:05 dst 10.206.1.2 self permanent" in fdb
    # on the bridge: static, forwarded to the port ("permanent" there would mean a local address)
    assert "02:42:0a:cd:00:05 master pt-br static" in fdb
    assert "10.205.0.5 lladdr 02:42:0a:cd:00:05 PERMANENT" in run(netns, "ip", "neigh", "show", "dev", "ptx4096")
    moved = {"02:42:0a:cd:00:05": ("10.206.1.3", frozenset({"10.205.0.5"}))}  # the host changed
    vx.set_peers("ptx4096", "pt-br", moved)
    assert vx.peers("ptx4096") == moved
    vx.set_peers("ptx4096", "pt-br", {})
    assert vx.peers("ptx4096") == {}
    assert "10.205.0.5" not in run(netns, "ip", "neigh", "show", "dev", "ptx4096")
    run(netns, "ip", "link", "add", "ptx5000", "type", "bridge")
    with pytest.raises(Exception, match="not VXLAN 5000"):
        vx.ensure_vxlan("ptx5000", 5000, "10.206.1.1", 4789, 1450, "pt-br")


def test_vxlan_entries_updated_by_what_changed(netns):
    """Issue 23, item 8: update_peers programs only some MACs, from what the caller says is
    there, reading nothing back; the device ends as set_peers would have left it."""
    run(netns, "ip", "link", "add", "pbul0", "type", "veth", "peer", "name", "pbul1")
    run(netns, "ip", "addr", "add", "10.206.1.1/24", "dev", "pbul0")
    run(netns, "ip", "link", "set", "pbul0", "up")
    run(netns, "ip", "link", "add", "pt-br", "type", "bridge")
    vx = Vxlan(netns)
    vx.ensure_vxlan("ptx4096", 4096, "10.206.1.1", 4789, 1450, "pt-br")
    a, b, c = "02:42:0a:cd:00:05", "02:42:0a:cd:00:06", "02:42:0a:cd:00:07"
    first = {
        a: ("10.206.1.2", frozenset({"10.205.0.5"})),
        b: ("10.206.1.2", frozenset({"10.205.0.6", "fd70::6"})),
        c: ("10.206.1.3", frozenset({"10.205.0.7"})),
    }
    vx.set_peers("ptx4096", "pt-br", first)
    # a moves to another host, b loses an address, c goes, d comes
    d = "02:42:0a:cd:00:08"
    changed = {
        a: ("10.206.1.3", frozenset({"10.205.0.5"})),
        b: ("10.206.1.2", frozenset({"10.205.0.6"})),
        d: ("10.206.1.2", frozenset({"10.205.0.8"})),
    }
    vx.update_peers("ptx4096", "pt-br", changed, {m: first[m] for m in (a, b, c)})
    assert vx.peers("ptx4096") == changed
    fdb = run(netns, "bridge", "fdb", "show", "dev", "ptx4096")
    assert f"{a} dst 10.206.1.3 self permanent" in fdb and f"{a} dst 10.206.1.2" not in fdb
    assert c not in fdb and f"{d} master pt-br static" in fdb
    neigh = run(netns, "ip", "neigh", "show", "dev", "ptx4096")
    assert "10.205.0.7" not in neigh and "fd70::6" not in run(netns, "ip", "-6", "neigh", "show", "dev", "ptx4096")


def test_remote_entries_never_replace_the_bridges_own_or_a_local_containers(netns):
    """Issue 19, item 2: `fdb replace ... master` took the gateway's own entry (and a local
    container's) for a remote MAC; entries are added now, and a MAC the bridge has on a port of
    its own is refused, by name, while the others are programmed."""
    run(netns, "ip", "link", "add", "pbul0", "type", "veth", "peer", "name", "pbul1")
    run(netns, "ip", "addr", "add", "10.206.1.1/24", "dev", "pbul0")
    run(netns, "ip", "link", "set", "pbul0", "up")
    run(netns, "ip", "link", "add", "pt-br", "type", "bridge")
    run(netns, "ip", "link", "set", "pt-br", "address", "02:42:0a:cd:00:01", "up")
    run(netns, "ip", "link", "add", "pt-c1", "type", "veth", "peer", "name", "pt-c1p")
    run(netns, "ip", "link", "set", "pt-c1", "master", "pt-br", "up")
    run(netns, "bridge", "fdb", "add", "02:00:00:00:19:03", "dev", "pt-c1", "master", "static")  # a local container
    vx = Vxlan(netns)
    vx.ensure_vxlan("ptx4096", 4096, "10.206.1.1", 4789, 1450, "pt-br")
    peers = {
        "02:42:0a:cd:00:01": ("10.206.1.2", frozenset({"10.205.0.1"})),  # the gateway's
        "02:00:00:00:19:03": ("10.206.1.2", frozenset({"10.205.0.3"})),  # the local container's
        "02:00:00:00:19:09": ("10.206.1.2", frozenset({"10.205.0.9"})),
    }
    with pytest.raises(Exception, match="02:42:0a:cd:00:01, 02:00:00:00:19:03 not taken from other hosts"):
        vx.set_peers("ptx4096", "pt-br", peers)
    assert vx.peers("ptx4096") == {"02:00:00:00:19:09": peers["02:00:00:00:19:09"]}
    fdb = run(netns, "bridge", "fdb", "show", "br", "pt-br")
    assert "02:42:0a:cd:00:01 dev pt-br" in fdb and "02:42:0a:cd:00:01 dev ptx4096" not in fdb, fdb
    assert "02:00:00:00:19:03 dev pt-c1 master pt-br static" in fdb, fdb
    assert "02:00:00:00:19:09 dev ptx4096 master pt-br static" in fdb, fdb
    vx.set_peers("ptx4096", "pt-br", {"02:00:00:00:19:09": peers["02:00:00:00:19:09"]})  # again: nothing to do


# Issue 22, item 2: etcd over TLS with client certificates, against a real etcd serving TLS with
# --client-cert-auth. The server is checked against the CA given (never the public bundle), and
# only a client with a certificate that CA signed gets in.


@pytest.fixture
def tls_etcd(tmp_path):
    if shutil.which("etcd") is None or shutil.which("openssl") is None:
        pytest.fail("etcd and openssl are needed: apt-get install etcd-server openssl (scripts/test.sh does)")
    certs = Certificates.make(str(tmp_path / "tls"))
    server = EtcdServer(client_port=23791, peer_port=23801, tls=certs).start()
    yield server, certs
    server.remove()


def test_etcd_over_tls_admits_only_a_client_with_a_certificate_of_its_ca(tls_etcd):
    server, c = tls_etcd
    endpoint = [("https", "127.0.0.1", server.client_port)]
    kv = EtcdKV(endpoint, tls=EtcdTls(ca=c.ca, cert=c.client_cert, key=c.client_key))
    assert kv.txn([Absent("/pybridge/tls")], [Put("/pybridge/tls", b"yes")])
    assert kv.get("/pybridge/tls") == b"yes"
    refused = {
        "no client certificate": EtcdTls(ca=c.ca),
        "a stranger's certificate": EtcdTls(ca=c.ca, cert=c.stranger_cert, key=c.stranger_key),
        "etcd checked against another CA": EtcdTls(ca=c.stranger_ca, cert=c.client_cert, key=c.client_key),
        "etcd checked against the public bundle": EtcdTls(cert=c.client_cert, key=c.client_key),
    }
    for what, tls in refused.items():
        with pytest.raises(ClusterUnavailable, match="etcd unreachable.*SSLError") as e:
            EtcdKV(endpoint, tls=tls).get("/pybridge/tls")
        assert "BEGIN" not in str(e.value) and c.directory not in str(e.value), what  # no key, no path
    with pytest.raises(ClusterUnavailable, match="etcd unreachable"):  # and plain HTTP is not served
        EtcdKV([("http", "127.0.0.1", server.client_port)]).get("/pybridge/tls")


# Issue 22, item 1: etcd's access control, a user and role per host as `pybridge cluster
# --etcd-access HOST` prints them, against a real etcd with authentication on.

A_HOST, B_HOST = "10.206.255.1", "10.206.255.2"


def _etcdctl(url: str, *args: str, user: str = "") -> str:
    argv = ["etcdctl", "--endpoints", url, *([f"--user={user}"] if user else []), *args]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30, env={**os.environ, "ETCDCTL_API": "3"})
    assert p.returncode == 0, f"etcdctl {' '.join(args)}: {p.stderr}"
    return p.stdout


@pytest.fixture
def auth_etcd():
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        pytest.fail("etcd and etcdctl are needed: apt-get install etcd-server etcd-client (scripts/test.sh does)")
    server = EtcdServer(client_port=23793, peer_port=23803).start()
    passwords = {A_HOST: "a-" + uuid.uuid4().hex, B_HOST: "b-" + uuid.uuid4().hex}
    _etcdctl(server.url, "user", "add", "root", "--interactive=false", "--new-user-password=rootpw")
    for host, password in passwords.items():
        for command in etcd_access(host, etcd_user(host)):
            _etcdctl(server.url, *(c.replace("$PASSWORD", password) for c in command))
    _etcdctl(server.url, "auth", "enable")
    yield server, passwords
    server.remove()


def test_with_etcd_auth_a_host_writes_only_its_own_prefix_and_the_claims(auth_etcd):
    server, passwords = auth_etcd
    endpoint = [("http", "127.0.0.1", server.client_port)]
    a = EtcdKV(endpoint, login=(etcd_user(A_HOST), passwords[A_HOST]))
    lease = a.grant(30)
    assert a.txn([], [Put(r.member_key("web", A_HOST), b"{}", lease), Put(r.members_key("web", A_HOST), b"{}", lease)])
    assert a.txn(
        [Absent(r.addr_key("web", 5))],
        [Put(r.addr_key("web", 5), r.AddrRecord(A_HOST, "dynamic").to_json().encode(), lease)],
    )
    # B's own prefix: A may read it, never write it (so A cannot say anything in B's name)
    _etcdctl(server.url, "put", r.member_key("web", B_HOST), "{}", user=f"{etcd_user(B_HOST)}:{passwords[B_HOST]}")
    assert a.get(r.member_key("web", B_HOST)) == b"{}"
    for key in (r.member_key("web", B_HOST), r.ep_key("web", B_HOST, "ab" * 32), "/elsewhere/key"):
        with pytest.raises(ClusterUnavailable, match="permission denied"):
            a.txn([], [Put(key, b"{}")])
    with pytest.raises(ClusterUnavailable, match="permission denied"):
        a.txn([], [DeleteUnder(r.host_prefix(B_HOST))])
    assert a.get(r.member_key("web", B_HOST)) == b"{}"
    # a token etcd no longer takes is replaced (a restarted member forgets its tokens)
    a._clients[0].session.headers["Authorization"] = "stale.token"
    assert a.get(r.member_key("web", A_HOST)) == b"{}"
    # no user, or a wrong password: nothing
    with pytest.raises(ClusterUnavailable, match="user name is empty"):
        EtcdKV(endpoint).get(r.member_key("web", A_HOST))
    with pytest.raises(ClusterUnavailable, match=f"refused user {etcd_user(A_HOST)}"):
        EtcdKV(endpoint, login=(etcd_user(A_HOST), "wrong")).get(r.member_key("web", A_HOST))


def test_a_host_with_an_etcd_user_refuses_an_etcd_with_authentication_off(etcd):
    kv = EtcdKV([("http", "127.0.0.1", etcd.client_port)], login=(etcd_user(A_HOST), "secret"))
    with pytest.raises(AuthOff, match="has authentication off.*cluster mode does not start"):
        kv.get(r.member_key("web", A_HOST))
    assert EtcdKV([("http", "127.0.0.1", etcd.client_port)]).get(r.member_key("web", A_HOST)) is None  # (it answers)


def test_tls_and_authentication_together_need_client_certificates_without_a_common_name(tmp_path):
    """etcd's HTTP gateway, with authentication on, refuses a client certificate that has a
    common name (it would not use it as the user): the host's certificate carries none, and one
    that does is refused with a message that says so."""
    certs = Certificates.make(str(tmp_path / "tls"))
    server = EtcdServer(client_port=23794, peer_port=23804, tls=certs).start()
    try:
        tls_flags = [f"--cacert={certs.ca}", f"--cert={certs.client_cert}", f"--key={certs.client_key}"]
        _etcdctl(server.url, *tls_flags, "user", "add", "root", "--interactive=false", "--new-user-password=rootpw")
        for command in etcd_access(A_HOST, etcd_user(A_HOST)):
            _etcdctl(server.url, *tls_flags, *(c.replace("$PASSWORD", "pw-a") for c in command))
        _etcdctl(server.url, *tls_flags, "auth", "enable")
        endpoint = [("https", "127.0.0.1", server.client_port)]
        login = (etcd_user(A_HOST), "pw-a")
        a = EtcdKV(endpoint, tls=EtcdTls(ca=certs.ca, cert=certs.client_cert, key=certs.client_key), login=login)
        assert a.txn([], [Put(r.member_key("web", A_HOST), b"{}")])
        named = EtcdKV(endpoint, tls=EtcdTls(ca=certs.ca, cert=certs.server_cert, key=certs.server_key), login=login)
        with pytest.raises(ClusterUnavailable, match="because it has a common name: issue it without one"):
            named.get(r.member_key("web", A_HOST))
    finally:
        server.remove()
