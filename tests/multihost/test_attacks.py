"""What a container or a user on one cluster host, or a neighbour on the underlay, can make
another host take for cluster traffic (issue 19), on the three-host rig (scripts/multihost.sh)."""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import subprocess
import sys
import time
import uuid

from tests.multihost.capture import Capture, from_the_underlay
from tests.vxlancraft import SCRIPT as CRAFT
from tests.waiting import wait_for


def icmp_in_echos(host, container: str) -> int:
    """The container's count of ICMP echo requests received (/proc/net/snmp)."""
    lines = [
        line.split()
        for line in host.exec(container, "cat", "/proc/net/snmp", check=True).stdout.splitlines()
        if line.startswith("Icmp:")
    ]
    return int(dict(zip(lines[0], lines[1]))["InEchos"])


def mac(host, container: str, network: str) -> str:
    template = '{{(index .NetworkSettings.Networks "' + network + '").MacAddress}}'
    return host.docker("inspect", "-f", template, container).stdout.strip()


def victim_and_client(victim, client, name: str) -> tuple[str, str]:
    """A container `NAME-victim` on one host and `NAME-client` on another, the client's host
    programmed with the victim: the victim's address and MAC."""
    ip = victim.run(f"{name}-victim", name, "sleep", "600")
    victim_mac = mac(victim, f"{name}-victim", name)
    client.run(f"{name}-client", name, "sleep", "600")
    assert wait_for(lambda: victim_mac in client.fdb_macs(), timeout=15)
    return ip, victim_mac


def credentials_of(cluster, n: int) -> list[str]:
    """etcdctl flags with host n's own etcd credentials, as its plugin has them."""
    password = cluster.base / f"h{n}" / "etcd-tls" / "etcd.password"
    assert password.exists(), "the rig runs etcd without authentication (PYBRIDGE_MULTIHOST_AUTH=0)"
    flags = [f"--user=pybridge-{cluster.hosts[n - 1].address}:{password.read_text().strip()}"]
    if cluster.tls is not None:
        t = cluster.tls
        flags += [f"--cacert={t}/pbtest-ca.pem", f"--cert={t}/h{n}.pem", f"--key={t}/h{n}-key.pem"]
    return flags


def in_container(host, container: str, *argv: str) -> str:
    """A command of the host's in the container's network namespace: the packets it sends leave
    from the container, as a process of the container's with CAP_NET_RAW would send them."""
    pid = host.docker("inspect", "-f", "{{.State.Pid}}", container).stdout.strip()
    return subprocess.run(
        ["nsenter", "-t", pid, "-n", *argv], capture_output=True, text=True, check=False, timeout=30
    ).stdout.strip()


def test_no_container_or_process_on_a_host_puts_frames_on_another_hosts_internal_network(cluster, net):
    """Item 1: a container on host 1 crafts VXLAN to host 2 with host 3's VXLAN address as its
    source, for an --internal cluster network's VNI, from a cluster network and from a local
    one; a process on host 1 sends it from a plain socket. None of it reaches the victim on host
    2. In clear, the same frame from a neighbour on the underlay (which no filter can tell from
    host 3) does: the crafted frame is good, and the test sees a delivery when there is one.
    Over WireGuard it reaches host 2 (a capture there sees it) and is not delivered either: no
    neighbour speaks for a member without its key."""
    h1, h2, h3 = cluster.hosts
    internal = net(internal=True)
    outer = net()
    victim = f"{internal}-victim"
    victim_ip = h2.run(victim, internal, "sleep", "600")
    victim_mac = mac(h2, victim, internal)
    h3.run(f"{internal}-c3", internal, "sleep", "600")  # host 3 has the network: a member
    assert wait_for(
        lambda: h3.vxlan_address in h2.ns("nft", "list", "set", "inet", "pybridge", "vxlan_members4"), timeout=15
    ), "host 2 never let host 3 in"
    vni = json.loads(cluster.etcdctl("get", f"/pybridge/v2/net/{internal}", "--print-value-only"))["vni"]
    local = f"pbmh-local-{uuid.uuid4().hex[:6]}"
    h1.docker("network", "create", "-d", "pybridge", "--ipam-driver", "pybridge", "--subnet", "10.204.77.0/24", local)
    try:
        h1.run(f"{outer}-a1", outer, "sleep", "600")
        h1.docker(
            "run",
            "-d",
            "--name",
            f"{outer}-a2",
            "--network",
            local,
            "--dns",
            "127.0.0.1",
            "--stop-timeout",
            "1",
            "pybridge-test-busybox:latest",
            "sleep",
            "600",
        )
        args = [str(vni), victim_mac, "02:00:00:00:00:09", victim_ip, "icmp"]
        before = icmp_in_echos(h2, victim)
        for attacker in (f"{outer}-a1", f"{outer}-a2"):
            sent = in_container(h1, attacker, sys.executable, "-c", CRAFT, "raw", h3.vxlan_address, h2.address, *args)
            assert sent == "sent", sent  # the fault really happened
        sent = h1.ns(sys.executable, "-c", CRAFT, "udp", h1.address, h2.address, *args, check=False).strip()
        assert sent.startswith("refused"), sent  # refused on host 1, as it is sent
        # control: the same frame from the underlay's own namespace, with host 3's address
        capture = Capture(h2.netns, "eth0", 2)
        sent = from_the_underlay(h3.vxlan_address, h2.address, *args)
        assert sent == "sent", sent
        seen = capture.result()
        assert seen["ports"].get(4789, 0) >= 3, seen  # the control reached host 2
        if cluster.encrypted:
            time.sleep(1)
            assert icmp_in_echos(h2, victim) == before  # not delivered: only WireGuard speaks for host 3
        else:
            assert wait_for(lambda: icmp_in_echos(h2, victim) >= before + 3, timeout=10), "the control did not arrive"
            assert icmp_in_echos(h2, victim) == before + 3  # the control's three, and nothing of host 1's
    finally:
        h1.remove_containers(f"{outer}-a")
        h1.docker("network", "rm", local, check=False)


def started_with_mac(host, container: str, network: str, mac_address: str) -> tuple[int, str]:
    """`docker run` with a MAC of our choosing through the Engine API (20.10's CLI refuses
    --mac-address with --network): the start's HTTP status and answer."""

    def call(method: str, path: str, body: dict | None = None) -> tuple[int, str]:
        conn = http.client.HTTPConnection("localhost", timeout=60)
        conn.sock = socket.socket(socket.AF_UNIX)
        conn.sock.connect(str(host.sock))
        conn.request(
            method,
            f"/v1.41{path}",
            json.dumps(body) if body is not None else None,
            {"Content-Type": "application/json"},
        )
        r = conn.getresponse()
        answer = r.read().decode(errors="replace")
        conn.close()
        return r.status, answer

    status, answer = call(
        "POST",
        f"/containers/create?name={container}",
        {
            "Image": "pybridge-test-busybox:latest",
            "Cmd": ["sleep", "600"],
            "MacAddress": mac_address,
            "HostConfig": {"NetworkMode": network, "Dns": ["127.0.0.1"]},
        },
    )
    assert status == 201, answer
    return call("POST", f"/containers/{container}/start")


def test_a_chosen_mac_cannot_take_over_a_container_or_the_gateway_of_another_host(cluster, net):
    """Item 2: `docker run --mac-address` with the MAC of a container on another host, or with the
    gateway's, is refused, and the victim and the gateway stay reachable from the third host."""
    h1, h2, h3 = cluster.hosts
    name = net()
    victim_ip = h2.run(f"{name}-victim", name, "sleep", "600")
    victim_mac = mac(h2, f"{name}-victim", name)
    h3.run(f"{name}-client", name, "sleep", "600")
    gateway = ".".join(victim_ip.split(".")[:3]) + ".1"
    gateway_mac = "02:42:" + ":".join(f"{int(o):02x}" for o in gateway.split("."))
    for stolen, why in ((victim_mac, "is in use on cluster network"), (gateway_mac, "gateway's MAC")):
        status, answer = started_with_mac(h1, f"{name}-thief", name, stolen)
        h1.docker("rm", "-f", f"{name}-thief", check=False)
        assert status >= 400 and why in answer, (status, answer)
    # nothing moved: host 3 still reaches the victim on host 2, and its own gateway
    for target in (victim_ip, gateway):
        ping = h3.exec(f"{name}-client", "ping", "-c", "2", "-W", "3", target)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    assert victim_mac in h3.fdb_macs()


def test_a_restart_always_container_keeps_its_cluster_address_across_an_engine_restart(cluster, net):
    """Item 5: local networks keep such a container's address (issue 10); on a cluster network it
    came back with the next one. Host 2 is killed and started again within the grace."""
    _, h2, _ = cluster.hosts
    name = net()
    ip = h2.run(f"{name}-keep", name, "sleep", "600", extra=("--restart", "always"))
    h2.run(f"{name}-after", name, "sleep", "600")  # the cursor moves past it
    remembered = f"/pybridge/v2/addr/{name}/{int(ipaddress.ip_address(ip)):032x}"
    assert cluster.etcdctl("get", remembered, "--print-value-only").strip()
    cluster.tool("kill", "2")
    cluster.tool("start", "2")
    assert wait_for(
        lambda: h2.docker("inspect", "-f", "{{.State.Running}}", f"{name}-keep", check=False).stdout.strip() == "true",
        timeout=90,
    ), "it did not come back"
    assert wait_for(lambda: h2.ip(f"{name}-keep", name) != "", timeout=30)
    assert h2.ip(f"{name}-keep", name) == ip


def test_a_record_written_by_hand_in_etcd_diverts_nothing(cluster, net):
    """Item 3: an endpoint record put with etcdctl under an underlay address that is no cluster
    host, with a real container's MAC, and one with a new MAC: no host programs either, the
    stranger is not let through the VXLAN filter, and the victim's traffic keeps flowing."""
    h1, h2, h3 = cluster.hosts
    name = net()
    victim_ip, victim_mac = victim_and_client(h2, h3, name)
    stranger = "10.206.255.99"
    base = ".".join(victim_ip.split(".")[:3])
    cluster.etcdctl(
        "put",
        f"/pybridge/v2/host/{stranger}/ep/{name}/{'f1' * 32}",
        json.dumps({"mac": victim_mac, "ipv4": f"{base}.201"}),
    )
    cluster.etcdctl(
        "put",
        f"/pybridge/v2/host/{stranger}/ep/{name}/{'f2' * 32}",
        json.dumps({"mac": "02:00:00:00:19:92", "ipv4": f"{base}.202"}),
    )
    # a later change makes every host act on what it read (a new container on host 1)
    h1.run(f"{name}-later", name, "sleep", "600")
    assert wait_for(lambda: len(h3.fdb_macs()) >= 2, timeout=15)
    for h in (h1, h3):
        fdb = h.ns("bridge", "fdb", "show")
        assert stranger not in fdb and "02:00:00:00:19:92" not in fdb, fdb
        assert stranger not in h.ns("nft", "list", "set", "inet", "pybridge", "vxlan_members4")
    ping = h3.exec(f"{name}-client", "ping", "-c", "2", "-W", "3", victim_ip)
    assert ping.returncode == 0, ping.stdout + ping.stderr


def test_a_cut_off_hosts_container_whose_address_was_taken_leaves_the_network(cluster, net):
    """Item 7: host 3 loses etcd past the grace; meanwhile host 1 gives its container's address
    to another container (`--ip`). Back, host 3 takes its own container off the network rather
    than run a duplicate, and says so in `pybridge cluster`."""
    h1, _, h3 = cluster.hosts
    name = net()
    ip3 = h3.run(f"{name}-c", name, "sleep", "600")
    key = f"/pybridge/v2/addr/{name}/{int(ipaddress.ip_address(ip3)):032x}"
    h3.ns("ip", "route", "add", "prohibit", "10.206.255.254/32")
    try:
        assert wait_for(lambda: cluster.etcdctl("get", key) == "", timeout=40), "the address never came free"
        assert h1.run(f"{name}-taker", name, "sleep", "600", extra=("--ip", ip3)) == ip3
    finally:
        h3.ns("ip", "route", "del", "prohibit", "10.206.255.254/32")
    assert wait_for(lambda: "OFF THE NETWORK" in h3.cli("cluster").stdout, timeout=40), h3.cli("cluster").stdout
    assert ip3 in h3.cli("cluster").stdout
    assert h3.exec(f"{name}-c", "cat", "/sys/class/net/eth0/operstate", check=True).stdout.strip() != "up"
    assert f'"host": "{h1.address}"' in cluster.etcdctl("get", key, "--print-value-only").replace('":"', '": "')


def test_etcd_admits_no_client_without_a_certificate_of_the_clusters_ca(cluster):
    """Issue 22, item 2: the rig's etcd serves TLS with client-cert auth, and the hosts' plugins
    reach it with their own certificates (the other tests run on it). A neighbour on the
    underlay without one, or with a certificate of another CA, gets nothing; plain HTTP neither."""
    tls = cluster.tls
    assert tls is not None, "the rig runs etcd without TLS (PYBRIDGE_MULTIHOST_TLS=0)"
    url = "https://10.206.255.254:2379"

    def etcdctl(*auth: str) -> subprocess.CompletedProcess:
        return cluster.etcdctl_as(*auth, "get", "--prefix", "--keys-only", "/pybridge/", endpoint=url)

    own = etcdctl(
        f"--cacert={tls}/pbtest-ca.pem", f"--cert={tls}/admin.pem", f"--key={tls}/admin-key.pem", *cluster.root_user()
    )
    assert own.returncode == 0 and "/pybridge/v2/" in own.stdout, own.stderr  # the probe can succeed
    for auth in (
        [f"--cacert={tls}/pbtest-ca.pem"],
        [f"--cacert={tls}/pbtest-ca.pem", f"--cert={tls}/stranger.pem", f"--key={tls}/stranger-key.pem"],
    ):
        refused = etcdctl(*auth)
        assert refused.returncode != 0 and "/pybridge/" not in refused.stdout, auth
    plain = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            "pbmh-ul",
            "curl",
            "-s",
            "-m",
            "3",
            "http://10.206.255.254:2379/v3/kv/range",
            "-d",
            '{"key": "Lw=="}',
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert '"kvs"' not in plain.stdout and '"header"' not in plain.stdout, plain.stdout


def test_a_hosts_etcd_user_cannot_write_what_another_host_says(cluster):
    """Issue 22, item 1: with host 1's own etcd credentials (its certificate and its user, as its
    plugin has them), host 2's prefix is read-only: host 1 cannot say anything in host 2's name."""
    h1, h2 = cluster.hosts[0], cluster.hosts[1]
    flags = credentials_of(cluster, 1)

    def put(key: str) -> subprocess.CompletedProcess:
        return cluster.etcdctl_as(*flags, "put", key, "{}")

    own = f"/pybridge/v2/host/{h1.address}/member/pbprobe"  # (a network no host has)
    assert put(own).returncode == 0, "host 1 cannot write its own prefix"  # the probe can succeed
    cluster.etcdctl("del", own)
    for key in (f"/pybridge/v2/host/{h2.address}/member/web", f"/pybridge/v2/host/{h2.address}/ep/web/{'f1' * 32}"):
        refused = put(key)
        assert refused.returncode != 0 and "permission denied" in refused.stderr, (key, refused.stderr)
        assert cluster.etcdctl("get", key) == ""


def test_a_host_that_deletes_anothers_claim_and_makes_its_own_diverts_nothing(cluster, net):
    """Issue 22: with host 3's own etcd credentials, delete the claim of host 2's container's
    address (every host may write addr/) and make it host 3's, listed under host 3's prefix,
    with an endpoint record of a MAC of its own. Host 2 listed the address first: host 1 keeps
    reaching host 2's container and programs nothing of host 3's record. (Host 2's resync, which
    keeps its container on the network, is tests/unit/test_cluster.py's.)"""
    h1, h2, h3 = cluster.hosts
    name = net()
    victim_ip, victim_mac = victim_and_client(h2, h1, name)
    hexed = f"{int(ipaddress.ip_address(victim_ip)):032x}"
    claim = f"/pybridge/v2/addr/{name}/{hexed}"
    listing = f"/pybridge/v2/host/{h3.address}/addr/{name}/{hexed}"
    record = f"/pybridge/v2/host/{h3.address}/ep/{name}/{'f3' * 32}"
    flags = credentials_of(cluster, 3)
    try:
        assert cluster.etcdctl_as(*flags, "del", claim).returncode == 0
        for key, value in (
            (claim, {"host": h3.address, "kind": "static"}),
            (listing, {}),
            (record, {"mac": "02:00:00:00:22:03", "ipv4": victim_ip}),
        ):
            done = cluster.etcdctl_as(*flags, "put", key, json.dumps(value))
            assert done.returncode == 0, (key, done.stderr)
        assert h3.address in cluster.etcdctl("get", claim, "--print-value-only")  # the attack landed
        # a later change, after the attack in etcd's order: when host 1 has it, it has read all
        later = h3.run(f"{name}-later", name, "sleep", "600")
        later_mac = mac(h3, f"{name}-later", name)
        assert later and wait_for(lambda: later_mac in h1.fdb_macs(), timeout=15)
        fdb = h1.fdb_macs()
        assert victim_mac in fdb and "02:00:00:00:22:03" not in fdb, fdb
        ping = h1.exec(f"{name}-client", "ping", "-c", "2", "-W", "3", victim_ip)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        for key in (record, listing):
            cluster.etcdctl("del", key)
