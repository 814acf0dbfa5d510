"""pybridge across hosts: three dockerds, each in a network namespace of its own with its own
pybridge in cluster mode, sharing one etcd over an underlay bridge (scripts/multihost.sh)."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import time

import pytest

from tests.waiting import wait_for


def resolves(host, container, name, gateway) -> str:
    """The address `container` on `host` gets for `name` from the network's DNS, or ''."""
    out = host.exec(container, "nslookup", name, gateway, timeout=10).stdout
    answers = out.split("Name:", 1)[1] if "Name:" in out else ""
    return next((line.split()[-1] for line in answers.splitlines() if line.startswith("Address")), "")


def test_containers_on_three_hosts_reach_each_other_by_address_port_and_name(cluster, net):
    h1, h2, h3 = cluster.hosts
    name = net()
    client = h1.run(f"{name}-client", name, "sleep", "600")
    ip2 = h2.run(f"{name}-web2", name, "httpd", "-f", "-p", "8080")
    ip3 = h3.run(f"{name}-web3", name, "httpd", "-f", "-p", "8080")
    assert len({client, ip2, ip3}) == 3
    gateway = str(ipaddress.ip_network(f"{client}/24", strict=False).network_address + 1)
    for ip in (ip2, ip3):
        ping = h1.exec(f"{name}-client", "ping", "-c", "2", "-W", "3", ip)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        http = h1.exec(f"{name}-client", "sh", "-c", f"echo 'GET / HTTP/1.0' | nc -w 3 {ip} 8080")
        assert http.stdout.startswith("HTTP/1."), http.stdout + http.stderr
    # names of every host, from the local DNS, short and qualified
    for container, ip in ((f"{name}-web2", ip2), (f"{name}-web3", ip3)):
        assert wait_for(lambda: resolves(h1, f"{name}-client", container, gateway) == ip, timeout=10)
        assert resolves(h1, f"{name}-client", f"{container}.{name}", gateway) == ip
    # the gateway is the same address and MAC on every host, answered locally
    macs = {h.ns("ip", "-br", "link", "show", "type", "bridge").split()[2] for h in cluster.hosts}
    assert len(macs) == 1
    # MTU: the underlay's 1500 less VXLAN's 50 (and WireGuard's 60), inside the container too
    mtu = 1390 if cluster.encrypted else 1450
    assert f"mtu {mtu} " in h1.exec(f"{name}-client", "ip", "link", "show", "eth0").stdout
    # what the operator sees on host 1: both other hosts, one container each
    view = h1.cli("cluster", "--format", "json")
    assert view.returncode == 0, view.stderr
    mine = next(n for n in json.loads(view.stdout)["networks"] if n["cluster"] == name)
    assert mine["remote_hosts"] == {h2.address: 1, h3.address: 1} and mine["local_endpoints"] == 1


def test_a_name_is_answered_on_the_other_hosts_right_after_docker_run(cluster, net):
    """Issue 12: within 1 s of `docker run` returning on the other host (measured, and reported;
    the bench has the figure)."""
    h1, h2, _ = cluster.hosts
    name = net()
    h1.run(f"{name}-client", name, "sleep", "600")
    gateway = str(ipaddress.ip_network(f"{h1.ip(f'{name}-client', name)}/24", strict=False).network_address + 1)
    ip = h2.run(f"{name}-late", name, "sleep", "600")
    started = time.monotonic()
    assert wait_for(lambda: resolves(h1, f"{name}-client", f"{name}-late", gateway) == ip, timeout=10, interval=0.05)
    print(f"name answered on host 1 {time.monotonic() - started:.3f} s after docker run returned on host 2")


def test_twenty_concurrent_starts_on_each_of_three_hosts_get_sixty_addresses(cluster, net):
    name = net()

    def start(host, i):
        return host.run(f"{name}-c{host.n}-{i}", name, "sleep", "600")

    with concurrent.futures.ThreadPoolExecutor(max_workers=60) as pool:
        futures = [pool.submit(start, h, i) for h in cluster.hosts for i in range(20)]
        addresses = [f.result() for f in futures]
    assert len(addresses) == 60 and len(set(addresses)) == 60, sorted(addresses)
    # in etcd: the sixty and the gateway, and what each host claimed ahead in its reserve
    # (issue 23, item 6), whose records become "dynamic" once handed out
    assert wait_for(lambda: sum(kind != "reserve" for kind in claims(cluster, name).values()) == 61, timeout=10), (
        claims(cluster, name)
    )
    ahead = [a for a, kind in claims(cluster, name).items() if kind == "reserve"]
    assert not set(ahead) & set(addresses)


def claims(cluster, name: str, host: str | None = None) -> dict[str, str]:
    """address -> kind of every claim in etcd on cluster network `name` (of one host's)."""
    lines = cluster.etcdctl("get", "--prefix", f"/pybridge/v2/addr/{name}/").splitlines()
    out = {}
    for key, value in zip(lines[::2], lines[1::2]):
        record = json.loads(value)
        if host is None or record["host"] == host:
            out[str(ipaddress.ip_address(int(key.rsplit("/", 1)[-1], 16)))] = record["kind"]
    return out


def test_an_address_in_another_hosts_reserve_is_given_up_to_docker_run_ip(cluster, net):
    """Issue 23, item 6: host 1 holds addresses claimed ahead; `docker run --ip` of one of them
    on host 2 gets it (host 1 gives it up), and a container of host 1 reaches it there. One
    host 1 has handed out is refused on host 3."""
    h1, h2, h3 = cluster.hosts
    name = net()
    mine = h1.run(f"{name}-one", name, "sleep", "600")
    # (every host has a reserve from the network's creation: one of host 1's)
    assert wait_for(lambda: "reserve" in claims(cluster, name, h1.address).values(), timeout=10), claims(cluster, name)
    wanted = next(a for a, kind in sorted(claims(cluster, name, h1.address).items()) if kind == "reserve")
    assert h2.run(f"{name}-two", name, "httpd", "-f", "-p", "8080", extra=("--ip", wanted)) == wanted
    assert claims(cluster, name)[wanted] == "static"
    http = h1.exec(f"{name}-one", "sh", "-c", f"echo 'GET / HTTP/1.0' | nc -w 3 {wanted} 8080")
    assert http.stdout.startswith("HTTP/1."), http.stdout + http.stderr
    with pytest.raises(AssertionError, match=f"address {mine} is already in use in cluster network"):
        h3.run(f"{name}-three", name, "sleep", "600", extra=("--ip", mine))


def test_without_etcd_running_containers_talk_new_cluster_starts_fail_clearly_local_ones_work(cluster, net):
    h1, h2, _ = cluster.hosts
    name = net()
    h1.run(f"{name}-a", name, "sleep", "600")
    ip_b = h2.run(f"{name}-b", name, "sleep", "600")
    cluster.tool("etcd", "stop")
    try:
        ping = h1.exec(f"{name}-a", "ping", "-c", "2", "-W", "3", ip_b)
        assert ping.returncode == 0, ping.stdout
        failed = h1.docker(
            "run",
            "-d",
            "--name",
            f"{name}-new",
            "--network",
            name,
            "--dns",
            "127.0.0.1",
            "pybridge-test-busybox:latest",
            "sleep",
            "600",
            check=False,
        )
        assert failed.returncode != 0 and "cluster store is unreachable" in failed.stderr, failed.stderr
        h1.docker("rm", "-f", f"{name}-new", check=False)
        local = f"{name}-local"
        h1.docker(
            "network", "create", "-d", "pybridge", "--ipam-driver", "pybridge", "--subnet", "10.204.9.0/24", local
        )
        try:
            h1.run(f"{name}-l", local, "sleep", "600")
        finally:
            h1.docker("rm", "-f", f"{name}-l", check=False)
            h1.docker("network", "rm", local, check=False)
    finally:
        cluster.tool("etcd", "start")
    # etcd back: starts work again, and the new container is known on the other host
    ip_new = wait_for(lambda: _try_run(h1, f"{name}-new2", name), timeout=30)
    assert ip_new
    assert wait_for(lambda: h2.exec(f"{name}-b", "ping", "-c", "1", "-W", "2", ip_new).returncode == 0, timeout=15), (
        f"host 2 cannot reach {ip_new} on host 1; host 1: {h1.cli('cluster', '--format', 'json').stdout}; "
        f"host 2: {h2.cli('cluster', '--format', 'json').stdout}; host 2's entries: {sorted(h2.fdb_macs())}; "
        f"etcd: {cluster.etcdctl('get', '--prefix', '--keys-only', '/pybridge/v2/host/')}"
    )


def _try_run(host, container, network) -> str:
    p = host.docker(
        "run",
        "-d",
        "--name",
        container,
        "--network",
        network,
        "--dns",
        "127.0.0.1",
        "pybridge-test-busybox:latest",
        "sleep",
        "600",
        check=False,
    )
    if p.returncode != 0:
        host.docker("rm", "-f", container, check=False)
        return ""
    return host.ip(container, network)


def test_one_member_of_etcd_down_changes_nothing_and_its_restart_loses_nothing(cluster, net):
    """The plugin names all three members: with the one it used stopped it goes on with another."""
    h1, h2, _ = cluster.hosts
    name = net()
    h1.run(f"{name}-a", name, "sleep", "600")
    cluster.tool("etcd", "stop", "1")
    try:
        ip_b = h2.run(f"{name}-b", name, "sleep", "600")
        assert wait_for(lambda: h1.exec(f"{name}-a", "ping", "-c", "1", "-W", "2", ip_b).returncode == 0, timeout=15)
    finally:
        cluster.tool("etcd", "start", "1")
    before = cluster.etcdctl("get", "--prefix", "/pybridge/v2/")
    cluster.tool("etcd", "stop", "2")
    cluster.tool("etcd", "start", "2")
    assert cluster.etcdctl("get", "--prefix", "/pybridge/v2/") == before


def test_a_plugin_restarted_while_etcd_is_away_keeps_its_containers_talking(cluster, net):
    h1, h2, _ = cluster.hosts
    name = net()
    h1.run(f"{name}-a", name, "sleep", "600")
    ip_b = h2.run(f"{name}-b", name, "sleep", "600")
    assert wait_for(lambda: h1.exec(f"{name}-a", "ping", "-c", "1", "-W", "2", ip_b).returncode == 0, timeout=15)
    cluster.tool("etcd", "stop")
    try:
        h1.docker("plugin", "disable", "-f", "pybridge-plugin:latest")
        h1.docker("plugin", "enable", "--timeout", "30", "pybridge-plugin:latest")
        assert wait_for(lambda: h1.cli("cluster").returncode == 1, timeout=20)  # up, and etcd unreachable
        ping = h1.exec(f"{name}-a", "ping", "-c", "3", "-W", "3", ip_b)
        assert ping.returncode == 0, ping.stdout
    finally:
        cluster.tool("etcd", "start")
    assert wait_for(lambda: h1.cli("cluster").returncode == 0, timeout=30)


def test_a_restart_of_etcd_loses_nothing(cluster, net):
    h1, h2, _ = cluster.hosts
    name = net()
    h1.run(f"{name}-a", name, "sleep", "600")
    h2.run(f"{name}-b", name, "sleep", "600")
    before = cluster.etcdctl("get", "--prefix", "/pybridge/v2/")
    cluster.tool("etcd", "stop")
    cluster.tool("etcd", "start")
    assert cluster.etcdctl("get", "--prefix", "/pybridge/v2/") == before
    ip_c = h2.run(f"{name}-c", name, "sleep", "600")
    assert wait_for(lambda: h1.exec(f"{name}-a", "ping", "-c", "1", "-W", "2", ip_c).returncode == 0, timeout=15)


def test_a_host_cut_off_longer_than_the_grace_is_forgotten_and_claims_its_containers_back(cluster, net):
    """Host 3 loses etcd for longer than the grace: the others drop its containers' entries and
    names and its addresses come free; when it is back it claims what its live containers hold,
    and they are reachable again at the same addresses."""
    h1, _, h3 = cluster.hosts
    name = net()
    h1.run(f"{name}-a", name, "sleep", "600")
    ip3 = h3.run(f"{name}-c", name, "sleep", "600")
    mac3 = h3.docker(
        "inspect", "-f", '{{(index .NetworkSettings.Networks "%s").MacAddress}}' % name, f"{name}-c"
    ).stdout.strip()
    assert wait_for(lambda: mac3 in h1.fdb_macs(), timeout=10)
    key = f"/pybridge/v2/addr/{name}/{int(ipaddress.ip_address(ip3)):032x}"
    h3.ns("ip", "route", "add", "prohibit", "10.206.255.254/32")
    try:
        assert wait_for(lambda: mac3 not in h1.fdb_macs(), timeout=40), "host 1 kept a dead host's entry"
        assert cluster.etcdctl("get", key) == ""  # its address is free again
    finally:
        h3.ns("ip", "route", "del", "prohibit", "10.206.255.254/32")
    assert wait_for(lambda: mac3 in h1.fdb_macs(), timeout=30), "host 3's container was not claimed back"
    assert ip3 in cluster.etcdctl("get", key) or f'"host": "{h3.address}"' in cluster.etcdctl("get", key)
    assert wait_for(lambda: h1.exec(f"{name}-a", "ping", "-c", "1", "-W", "2", ip3).returncode == 0, timeout=15)


def test_a_killed_host_is_forgotten_after_the_grace_and_takes_part_again_when_it_is_back(cluster, net):
    """Last: host 3 dies at once (every process of it killed). After the grace the others have
    dropped its containers' entries and names and its addresses are free; started again, it
    serves the network again."""
    h1, _, h3 = cluster.hosts
    name = net()
    h1.run(f"{name}-a", name, "sleep", "600")
    gateway = str(ipaddress.ip_network(f"{h1.ip(f'{name}-a', name)}/24", strict=False).network_address + 1)
    ip3 = h3.run(f"{name}-c", name, "sleep", "600")
    mac3 = h3.docker(
        "inspect", "-f", '{{(index .NetworkSettings.Networks "%s").MacAddress}}' % name, f"{name}-c"
    ).stdout.strip()
    assert wait_for(
        lambda: mac3 in h1.fdb_macs() and resolves(h1, f"{name}-a", f"{name}-c", gateway) == ip3, timeout=15
    )
    key = f"/pybridge/v2/addr/{name}/{int(ipaddress.ip_address(ip3)):032x}"
    cluster.tool("kill", "3")
    try:
        assert wait_for(lambda: mac3 not in h1.fdb_macs(), timeout=40), "host 1 kept a dead host's entry"
        assert wait_for(lambda: resolves(h1, f"{name}-a", f"{name}-c", gateway) == "", timeout=10)
        assert cluster.etcdctl("get", key) == ""
        assert h3.address not in cluster.etcdctl("get", "--prefix", "--keys-only", f"/pybridge/v2/members/{name}/")
        assert cluster.etcdctl("get", f"/pybridge/v2/host/{h3.address}/member/{name}") == ""
    finally:
        cluster.tool("start", "3")
    assert wait_for(
        lambda: (
            h3.docker("plugin", "inspect", "-f", "{{.Enabled}}", "pybridge-plugin:latest", check=False).stdout.strip()
            == "true"
        ),
        timeout=60,
    )
    h3.docker("rm", "-f", f"{name}-c", check=False)
    ip_new = wait_for(lambda: _try_run(h3, f"{name}-d", name), timeout=60)
    assert ip_new, "host 3 could not start a container on the cluster network again"
    assert wait_for(lambda: h1.exec(f"{name}-a", "ping", "-c", "1", "-W", "2", ip_new).returncode == 0, timeout=20)
    assert wait_for(lambda: resolves(h1, f"{name}-a", f"{name}-d", gateway) == ip_new, timeout=10)
