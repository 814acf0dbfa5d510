"""The encrypted underlay (issue 22, item 3) on the three-host rig, when it runs with
PYBRIDGE_MULTIHOST_ENCRYPT=wireguard (the default): what crosses the underlay is WireGuard only,
hand-made VXLAN from a neighbour is not delivered (with a member's underlay or tunnel address as
its source: it has no member's key), a host whose etcd user is taken away loses its peering
within the grace, and a key rotation keeps an established connection."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

from tests.multihost.capture import Capture, from_the_underlay
from tests.multihost.test_attacks import icmp_in_echos, mac
from tests.waiting import wait_for


@pytest.fixture(autouse=True)
def wireguard(cluster):
    if (cluster.base / "encrypt").read_text().strip() != "wireguard":
        pytest.skip("the rig runs VXLAN in clear (PYBRIDGE_MULTIHOST_ENCRYPT=none)")


def tunnel_of(host) -> dict:
    return json.loads(host.cli("cluster", "--format", "json").stdout)["underlay"]


def test_every_host_peers_over_wireguard_and_vxlan_uses_the_tunnel(cluster, net):
    h1, h2, h3 = cluster.hosts
    for h in cluster.hosts:
        t = wait_for(lambda h=h: len(tunnel_of(h)["peers"]) == 2 and tunnel_of(h), timeout=30)
        assert t, f"host {h.n} does not peer with both others: {tunnel_of(h)}"
        assert t["address"] == f"10.254.255.{h.n}" and t["carrier"] in ("kernel", "userspace")
    name = net()
    h2.run(f"{name}-b", name, "sleep", "600")
    h1.run(f"{name}-a", name, "sleep", "600")
    vni = json.loads(cluster.etcdctl("get", f"/pybridge/v2/net/{name}", "--print-value-only"))["vni"]
    # host 1's VXLAN entries for host 2's container point at host 2's tunnel address
    assert wait_for(lambda: " dst 10.254.255.2 " in h1.ns("bridge", "fdb", "show", "dev", f"pbx{vni}"), timeout=15)
    assert " dst 10.206.255." not in h1.ns("bridge", "fdb", "show", "dev", f"pbx{vni}")
    details = h1.ns("ip", "-d", "link", "show", f"pbx{vni}")
    assert "local 10.254.255.1 " in details and "mtu 1390 " in details, details  # 1500 - 60 (WireGuard) - 50


def test_nothing_of_the_payload_crosses_the_underlay_in_clear(cluster, net):
    h1, h2, _ = cluster.hosts
    name = net()
    marker = f"pybridge-secret-{uuid.uuid4().hex}"
    ip = h2.run(f"{name}-web", name, "sh", "-c", f"mkdir -p /www && echo {marker} > /www/m && httpd -f -p 8080 -h /www")
    h1.run(f"{name}-client", name, "sleep", "600")
    assert wait_for(lambda: h1.exec(f"{name}-client", "ping", "-c", "1", "-W", "2", ip).returncode == 0, timeout=20)
    capture = Capture("pbmh-ul", "pbmh2", 6, marker)  # host 2's port on the underlay's bridge
    got = ""
    for _ in range(5):  # the marker crosses both ways: in the request's path and in the answer
        got += h1.exec(f"{name}-client", "sh", "-c", f"echo 'GET /m HTTP/1.0' | nc -w 3 {ip} 8080").stdout
        h1.exec(f"{name}-client", "sh", "-c", f"echo {marker} | nc -w 1 {ip} 8080")
    seen = capture.result()
    assert marker in got  # the payload did go from host to host
    assert seen["ports"].get(51820, 0) >= 10, seen  # as WireGuard: the capture saw the traffic
    assert seen["marked"] == 0, seen  # and nowhere in clear
    assert 4789 not in seen["ports"], seen  # no VXLAN on the underlay at all


def test_hand_made_vxlan_from_the_underlay_is_not_delivered(cluster, net):
    """A neighbour on the underlay crafts VXLAN for the network's VNI to host 2, from a
    non-member address, from host 3's underlay address, and from host 3's tunnel address: it
    reaches host 2 (the capture there sees it) and never the victim; a ping over the tunnel,
    sent after, is counted alone."""
    h1, h2, h3 = cluster.hosts
    name = net()
    victim = f"{name}-victim"
    victim_ip = h2.run(victim, name, "sleep", "600")
    h3.run(f"{name}-c3", name, "sleep", "600")  # host 3 is a member of the network
    h1.run(f"{name}-c1", name, "sleep", "600")
    assert wait_for(lambda: h1.exec(f"{name}-c1", "ping", "-c", "1", "-W", "2", victim_ip).returncode == 0, timeout=20)
    vni = json.loads(cluster.etcdctl("get", f"/pybridge/v2/net/{name}", "--print-value-only"))["vni"]
    args = [str(vni), mac(h2, victim, name), "02:00:00:00:00:09", victim_ip, "icmp"]
    before = icmp_in_echos(h2, victim)
    capture = Capture(h2.netns, "eth0", 3)
    for source in ("10.206.255.254", h3.address, "10.254.255.3"):
        sent = from_the_underlay(source, h2.address, *args)
        assert sent == "sent", sent
    seen = capture.result()
    assert seen["ports"].get(4789, 0) >= 9, seen  # all nine arrived at host 2
    ping = h1.exec(f"{name}-c1", "ping", "-c", "2", "-W", "3", victim_ip)
    assert ping.returncode == 0, ping.stdout
    assert wait_for(lambda: icmp_in_echos(h2, victim) >= before + 2, timeout=10)
    time.sleep(0.5)
    assert icmp_in_echos(h2, victim) == before + 2  # the tunnel's two, none of the crafted


STREAM_IN = r"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7001)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); data = b""
while True:
    b = c.recv(4096)
    if not b: break
    data += b
print(data.decode(), flush=True)
"""
STREAM_OUT = r"""
import socket, sys, time
c = socket.create_connection((sys.argv[1], 7001), timeout=60)
for i in range(60):
    c.sendall(b"line%d\n" % i); time.sleep(0.1)
c.close(); print("done")
"""


def in_netns_of(host, container: str) -> list[str]:
    pid = host.docker("inspect", "-f", "{{.State.Pid}}", container).stdout.strip()
    return ["nsenter", "-t", pid, "-n", sys.executable, "-c"]


def test_a_key_rotation_keeps_an_established_connection(cluster, net):
    """Both ends rotate their keys in the middle of a TCP stream (one line every 0.1 s for 6 s):
    every line arrives, in order, over the new keys."""
    h1, h2, _ = cluster.hosts
    name = net()
    ip = h2.run(f"{name}-sink", name, "sleep", "600")
    h1.run(f"{name}-src", name, "sleep", "600")
    assert wait_for(lambda: h1.exec(f"{name}-src", "ping", "-c", "1", "-W", "2", ip).returncode == 0, timeout=20)
    old = tunnel_of(h2)["peers"][h1.address]
    sink = subprocess.Popen([*in_netns_of(h2, f"{name}-sink"), STREAM_IN], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        source = subprocess.Popen(
            [*in_netns_of(h1, f"{name}-src"), STREAM_OUT, ip], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        time.sleep(2)
        for h in (h1, h2):
            rotated = h.cli("cluster", "rotate-key")
            assert rotated.returncode == 0, rotated.stderr
        assert wait_for(lambda: tunnel_of(h2)["peers"].get(h1.address) not in (None, old), timeout=10)
        out, err = source.communicate(timeout=90)
        assert out.strip() == "done", err
        lines = sink.communicate(timeout=30)[0].split()
    finally:
        sink.kill()
    assert lines == [f"line{i}" for i in range(60)]  # every line, in order, over the new keys


def test_a_host_removed_from_etcd_loses_its_peering(cluster, net):
    """The operator takes host 3 out of the cluster: its etcd user deleted, its lease revoked.
    Its records go with the lease, the others drop it as a peer at once (a container of host 1
    no longer reaches one of host 3's), and it cannot write them again. Its user back, it comes
    back (a new lease, everything written again)."""
    h1, _, h3 = cluster.hosts
    if not (cluster.base / "root.password").exists():
        pytest.skip("etcd's authentication is off on this rig")
    name = net()
    ip3 = h3.run(f"{name}-c3", name, "sleep", "600")
    h1.run(f"{name}-c1", name, "sleep", "600")
    assert wait_for(lambda: h1.exec(f"{name}-c1", "ping", "-c", "1", "-W", "2", ip3).returncode == 0, timeout=20)
    user = f"pybridge-{h3.address}"
    grace = 20
    # the README's removal: its user, and its lease (etcd renews a lease for anyone who asks)
    record = json.loads(cluster.etcdctl("get", f"/pybridge/v2/host/{h3.address}/tunnel", "--write-out=json"))["kvs"][0]
    cluster.etcdctl("user", "delete", user)
    cluster.etcdctl("lease", "revoke", format(record["lease"], "x"))
    try:
        assert wait_for(lambda: h3.address not in tunnel_of(h1)["peers"], timeout=grace + 10), tunnel_of(h1)
        assert h1.exec(f"{name}-c1", "ping", "-c", "2", "-W", "2", ip3).returncode != 0
    finally:
        password = (cluster.base / "h3" / "etcd-tls" / "etcd.password").read_text().strip()
        cluster.etcdctl("user", "add", user, "--interactive=false", f"--new-user-password={password}")
        cluster.etcdctl("user", "grant-role", user, user)
    assert wait_for(lambda: h3.address in tunnel_of(h1)["peers"], timeout=grace + 30), "host 3 never came back"
    assert wait_for(lambda: h1.exec(f"{name}-c1", "ping", "-c", "1", "-W", "2", ip3).returncode == 0, timeout=30)
