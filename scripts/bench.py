#!/usr/bin/env python3
"""pybridge benchmark: figures and ratios against Docker's built-in bridge, in one run.

    scripts/bench.py [--runs 20] [--driver pybridge]

Prints the median (and p90) wall time of `docker run --rm` on a pybridge network and on a
built-in bridge network, interleaved so both see the same machine state, their ratio, and the
plugin's own latency per method (p50/p99) as the plugin measured it while serving those runs.
Traffic stays on this machine: the containers run `true` with --dns 127.0.0.1 on subnets of
10.200.0.0/13 that the script creates and removes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import ipaddress
import json
import re
import statistics
import signal
import subprocess
import sys
import time
import uuid

IMAGE = "pybridge-test-busybox:latest"
ROOT = __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__)))


def sh(*argv, check=True):
    res = subprocess.run(argv, capture_output=True, text=True)
    if check and res.returncode:
        raise SystemExit(f"{' '.join(argv)}: {res.stderr.strip()}")
    return res.stdout.strip()


def free_subnets(count: int) -> list[str]:
    routes = json.loads(sh("ip", "-j", "route", "show", "table", "all"))
    taken = [
        ipaddress.ip_network(r["dst"], strict=False)
        for r in routes
        if r.get("dst") and r["dst"] != "default" and ":" not in r["dst"]
    ]
    out = []
    for third in range(250, 0, -1):
        net = ipaddress.ip_network(f"10.205.{third}.0/24")
        if not any(net.overlaps(t) for t in taken):
            out.append(str(net))
            if len(out) == count:
                return out
    raise SystemExit("no free benchmark subnet in 10.205.0.0/16")


def plugin_call(driver: str, method: str, path: str):
    import requests_unixsocket

    sock = f"/run/docker/plugins/{driver}.sock".replace("/", "%2F")
    session = requests_unixsocket.Session()
    resp = getattr(session, method)(f"http+unix://{sock}{path}", timeout=10)
    resp.raise_for_status()
    return resp.json()


FIVE_PORTS = ("-p", "80", "-p", "81", "-p", "82", "-p", "83", "-p", "84")


def timed_run(network: str, extra: tuple = ()) -> float:
    start = time.perf_counter()
    sh("docker", "run", "--rm", "--network", network, "--dns", "127.0.0.1", *extra, IMAGE, "true")
    return time.perf_counter() - start


def compare(builtin: str, ours: str, runs: int, extra: tuple = ()) -> dict:
    times = {builtin: [], ours: []}
    for i in range(runs):
        for net in (builtin, ours) if i % 2 == 0 else (ours, builtin):
            times[net].append(timed_run(net, extra))
    return times


def report(title: str, times: dict, builtin: str, ours: str) -> None:
    b, p = statistics.median(times[builtin]), statistics.median(times[ours])
    print(title)
    print(f"  built-in bridge : median {b * 1000:7.1f} ms   p90 {pct(times[builtin], 90) * 1000:7.1f} ms")
    print(f"  pybridge        : median {p * 1000:7.1f} ms   p90 {pct(times[ours], 90) * 1000:7.1f} ms")
    print(f"  ratio pybridge/built-in (median): {p / b:.3f}")


def pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1)]


def bench_ipam() -> None:
    """Address allocation cost at 10 leases and at 16,000 leases in one pool (in-process,
    SQLite state as the plugin keeps it)."""
    import tempfile

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    from plugin.ipam.pools import parse_pool_specs
    from plugin.ipam.service import IpamService
    from plugin.store.db import Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"{tmp}/state.db").open()
        ipam = IpamService(store, lambda: [], parse_pool_specs("10.207.0.0/16:24", 4), ())
        pid = ipam.request_pool("", "10.200.0.0/16", "", False)["PoolID"]

        def cost(n=500):
            start = time.perf_counter()
            for _ in range(n):
                addr = ipam.request_address(pid, "", {})
                ipam.release_address(pid, addr.split("/")[0])
            return (time.perf_counter() - start) / n * 1e6

        for _ in range(10):
            ipam.request_address(pid, "", {})
        small = cost()
        leased = [ipam.request_address(pid, "", {}).split("/")[0] for _ in range(16000 - 10)]
        large = cost()
        # every one of them a container that restarts by itself, whose address is remembered
        ipam.remember([(f"{i:064x}", f"c{i}", a) for i, a in enumerate(leased)])
        remembered = cost()
        store.close()
    print("IPAM: allocate + release one address")
    print(f"  with 10 leases     : {small:7.1f} us")
    print(f"  with 16,000 leases : {large:7.1f} us   ratio {large / small:.2f}")
    print(f"  ... all remembered : {remembered:7.1f} us   ratio {remembered / small:.2f}")


DNS_CLIENT = r"""
import json, socket, sys, time
import dns.message
server, name, seconds, window = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
wire = bytearray(dns.message.make_query(name, "A").to_wire())
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((server, 53))
s.settimeout(0.5)
sent, lat, qid, lost = {}, [], 0, 0
def send():
    global qid
    qid = (qid + 1) & 0xFFFF
    wire[0:2] = qid.to_bytes(2, "big")
    sent[qid] = time.perf_counter()
    s.send(wire)
for _ in range(window):
    send()
end = time.perf_counter() + seconds
while time.perf_counter() < end:
    try:
        data = s.recv(4096)
    except socket.timeout:
        lost += len(sent); sent.clear()
        for _ in range(window):
            send()
        continue
    t = sent.pop(int.from_bytes(data[:2], "big"), None)
    if t is not None:
        lat.append(time.perf_counter() - t)
    send()
lat.sort()
print(json.dumps({"qps": len(lat) / seconds, "p50": lat[len(lat) // 2] * 1000,
                  "p99": lat[int(len(lat) * 0.99)] * 1000, "lost": lost}))
"""


def dns_load(pid: str, server: str, name: str, seconds: float, window: int, clients: int) -> dict:
    """clients load generators in parallel in the container's network namespace; summed q/s."""
    argv = ["nsenter", "-t", pid, "-n", sys.executable, "-c", DNS_CLIENT, server, name, str(seconds), str(window)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(clients)]
    outs = [json.loads(p.communicate(timeout=seconds + 30)[0]) for p in procs]
    return {
        "qps": sum(o["qps"] for o in outs),
        "p50": statistics.median(o["p50"] for o in outs),
        "p99": max(o["p99"] for o in outs),
        "lost": sum(o["lost"] for o in outs),
    }


def dnsperf_load(pid: str, server: str, name: str, seconds: float, clients: int, window: int) -> dict:
    """dnsperf (a C load generator: the client's own cost hardly counts) in the container's
    network namespace: q/s, and its average and largest latency (2.10 prints no percentiles)."""
    import re
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".queries", delete=False) as f:
        f.write(f"{name} A\n" * 100)
    try:
        out = subprocess.run(
            [
                "nsenter",
                "-t",
                pid,
                "-n",
                "dnsperf",
                "-s",
                server,
                "-d",
                f.name,
                "-l",
                str(seconds),
                "-c",
                str(clients),
                "-T",
                str(clients),
                "-q",
                str(window),
                "-t",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        ).stdout
    finally:
        os.unlink(f.name)
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))
    m = re.search(r"Average Latency \(s\):\s+([\d.]+)\s+\(min ([\d.]+), max ([\d.]+)\)", out)
    avg, p99 = float(m.group(1)) * 1000, float(m.group(3)) * 1000
    return {"qps": qps, "p50": avg, "p99": p99, "lost": lost}  # p99 here: the largest


def bench_dns(driver: str, subnet: str, seconds: float = 3.0, window: int = 16, clients: int = 2) -> None:
    """Queries per second and latency of pybridge's DNS against Docker's embedded resolver,
    both asked from inside the same container (its network namespace) for a container name."""
    tag = uuid.uuid4().hex[:6]
    net, target, client = f"pbbench-{tag}-dns", f"pbbench-{tag}-target", f"pbbench-{tag}-client"
    try:
        sh("docker", "network", "create", "-d", driver, "--ipam-driver", driver, "--subnet", subnet, net)
        for name in (target, client):
            sh("docker", "run", "-d", "--name", name, "--network", net, "--dns", "127.0.0.1", IMAGE, "sleep", "300")
        pid = sh("docker", "inspect", "-f", "{{.State.Pid}}", client)
        gateway = str(ipaddress.ip_network(subnet).network_address + 1)
        time.sleep(1)
        results = {"docker embedded (127.0.0.11)": [], f"pybridge ({gateway})": []}
        perf = {label: [] for label in results} if shutil.which("dnsperf") else {}
        for _ in range(2):
            for label, server in zip(results, ("127.0.0.11", gateway)):
                results[label].append(dns_load(pid, server, target, seconds, window, clients))
                if perf:
                    perf[label].append(dnsperf_load(pid, server, target, seconds, clients, window * 2))
    finally:
        sh("docker", "rm", "-f", target, client, check=False)
        sh("docker", "network", "rm", net, check=False)
    print(
        f"DNS: A queries for a container name from inside a container, {clients} clients x {window} "
        f"in flight, {seconds:.0f} s x 2 each, interleaved"
    )
    best = {}
    for label, runs in results.items():
        qps = statistics.median(r["qps"] for r in runs)
        best[label] = qps
        print(
            f"  {label:32s}: {qps:8.0f} q/s   p50 {statistics.median(r['p50'] for r in runs):6.3f} ms"
            f"   p99 {statistics.median(r['p99'] for r in runs):6.3f} ms   lost {sum(r['lost'] for r in runs)}"
        )
    docker_qps, ours = list(best.values())
    print(f"  ratio pybridge/embedded (q/s): {ours / docker_qps:.2f}")
    if not perf:
        print("  (install dnsperf for the same with a C load generator, whose own cost hardly counts)")
        return
    print(
        f"DNS with dnsperf: {clients} clients x {window * 2} in flight, {seconds:.0f} s x 2 each, interleaved "
        "(latency: average and largest)"
    )
    best = {}
    for label, runs in perf.items():
        best[label] = statistics.median(r["qps"] for r in runs)
        print(
            f"  {label:32s}: {best[label]:8.0f} q/s   avg {statistics.median(r['p50'] for r in runs):6.3f} ms"
            f"   max {statistics.median(r['p99'] for r in runs):6.3f} ms   lost {sum(r['lost'] for r in runs)}"
        )
    docker_qps, ours = list(best.values())
    print(f"  ratio pybridge/embedded (q/s): {ours / docker_qps:.2f}")


def _fw_state(networks: int, ports: int):
    """`networks` networks, and 100-port endpoints on the first of them up to `ports` ports."""
    sys.path.insert(0, ROOT)
    from plugin.domain.model import Endpoint, Network, Subnet
    from plugin.domain.ports import PortBinding

    nets = [
        Network(
            id=f"{i:064x}",
            bridge=f"pz-{i:012x}",
            subnets=(
                Subnet(
                    ipaddress.ip_network(f"10.{100 + i // 250}.{i % 250}.0/24"),
                    ipaddress.ip_interface(f"10.{100 + i // 250}.{i % 250}.1/24"),
                ),
            ),
        )
        for i in range(max(1, networks))
    ]
    eps = []
    for k in range(ports // 100):
        eps.append(
            Endpoint(
                id=f"e{k:063x}",
                network_id=nets[0].id,
                host_ifname=f"pzh{k}",
                container_ifname=f"pzc{k}",
                mac="02:00:00:00:00:01",
                address4=ipaddress.ip_interface(f"10.100.0.{2 + k % 250}/24"),
                ports=tuple(
                    PortBinding("tcp" if j % 2 else "udp", 80 + j, "", 20000 + k * 100 + j) for j in range(100)
                ),
            )
        )
    five = Endpoint(
        id="f" * 64,
        network_id=nets[0].id,
        host_ifname="pzhf",
        container_ifname="pzcf",
        mac="02:00:00:00:00:02",
        address4=ipaddress.ip_interface("10.100.0.254/24"),
        ports=tuple(PortBinding("tcp", 80 + j, "", 40000 + j) for j in range(5)),
    )
    return nets, eps, five


def _interleaved(cases: dict, op, reps: int) -> dict:
    """Median ms of op(case) per case, the cases taken in turn so that all see the same machine."""
    times = {k: [] for k in cases}
    for _ in range(reps):
        for k, case in cases.items():
            t = time.perf_counter()
            op(case)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def bench_firewall(reps: int = 40) -> None:
    """Publishing and withdrawing one container's five ports, and creating and removing a
    network, with more and more already there: the nftables adapter against the iptables one it
    replaced. Each case has a namespace of its own, and the cases are measured in turn."""
    sys.path.insert(0, ROOT)
    from dataclasses import replace
    from tests.legacy_iptables import IptablesFirewall
    from plugin.kernel.nft import NftFirewall

    tag = uuid.uuid4().hex[:6]
    made: list[tuple[str, object]] = []

    def namespace(i: int):
        ns = f"pzb{tag}-{i}"
        sh("ip", "netns", "add", ns)
        made.append((ns, None))
        return ns

    try:
        counts = (0, 1000, 5000, 10000)
        new, old = {}, {}
        for i, count in enumerate(counts):
            nets, eps, five = _fw_state(1, count)
            bare = replace(five, ports=())
            fw = NftFirewall("PZB", netns=namespace(i))
            made[-1] = (made[-1][0], fw)
            fw.sync(nets, eps + [bare])
            new[count] = (fw, nets[0], bare, five)
            old[count] = (IptablesFirewall("PZB", netns=namespace(10 + i)), nets, eps, bare, five)

        def publish_new(c):
            fw, net, bare, five = c
            fw.change_ports(net, bare, five)
            fw.change_ports(net, five, bare)

        def publish_old(c):
            fw, nets, eps, bare, five = c
            fw.sync(nets, eps + [five], check_jumps=False)
            fw.sync(nets, eps + [bare], check_jumps=False)

        t_new = _interleaved(new, publish_new, reps)
        t_old = _interleaved(old, publish_old, 3)
        print("firewall: publish + withdraw one container's 5 ports (ms, median, cases in turn)")
        print(f"  {'ports already published':>26s} {'nftables':>9s} {'iptables (old)':>15s}")
        for count in counts:
            print(f"  {count:26,d} {t_new[count]:9.2f} {t_old[count]:15.1f}")
        print(f"  ratio 10,000/0 ports: nftables {t_new[10000] / t_new[0]:.2f}, iptables {t_old[10000] / t_old[0]:.1f}")

        new, old = {}, {}
        for i, count in enumerate((0, 200)):
            nets, _, _ = _fw_state(count + 1, 0)
            fw = NftFirewall("PZB", netns=namespace(20 + i))
            made[-1] = (made[-1][0], fw)
            fw.sync(nets[:-1])
            new[count] = (fw, nets[-1])
            old[count] = (IptablesFirewall("PZB", netns=namespace(30 + i)), nets[:-1], nets[-1])

        def network_new(c):
            fw, extra = c
            fw.add_network(extra)
            fw.remove_network(extra)

        def network_old(c):
            fw, present, extra = c
            fw.sync(present + [extra])
            fw.sync(present)

        t_new = _interleaved(new, network_new, reps)
        t_old = _interleaved(old, network_old, 5)
        print("firewall: create + remove one network (ms, median, cases in turn)")
        print(f"  {'networks already there':>26s} {'nftables':>9s} {'iptables (old)':>15s}")
        for count in (0, 200):
            print(f"  {count:26,d} {t_new[count]:9.2f} {t_old[count]:15.1f}")
        print(f"  ratio 200/0 networks: nftables {t_new[200] / t_new[0]:.2f}, iptables {t_old[200] / t_old[0]:.1f}")
    finally:
        for ns, fw in made:
            if fw is not None:
                fw.close()
            sh("ip", "netns", "del", ns, check=False)


def remove_networks(*names: str, seconds: float = 60) -> None:
    """Remove the bench's networks, waiting while dockerd still finishes removing containers."""
    deadline = time.monotonic() + seconds
    left = list(names)
    while left:
        left = [
            n
            for n in left
            if subprocess.run(["docker", "network", "rm", n], capture_output=True).returncode
            and subprocess.run(["docker", "network", "inspect", n], capture_output=True).returncode == 0
        ]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(1)
    if left:
        print(f"could not remove the bench's networks {left}", file=sys.stderr)


def plugin_post(driver: str, path: str, body: dict) -> dict:
    import requests_unixsocket

    sock = f"/run/docker/plugins/{driver}.sock".replace("/", "%2F")
    resp = requests_unixsocket.Session().post(f"http+unix://{sock}{path}", json=body, timeout=30)
    out = resp.json()
    if resp.status_code != 200 or out.get("Err"):
        raise SystemExit(f"{path}: {out}")
    return out


def plugin_cpu_ticks(driver: str) -> int:
    """utime + stime of every process of the managed plugin (the server, the nftables helper,
    if any)."""
    total = 0
    for pid in plugin_pids(driver):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return total


def bench_idle(driver: str, subnet: str, ports: int = 10000, seconds: float = 30.0) -> None:
    """The plugin's CPU while nothing happens, with no port and then with `ports` ports published
    (100 endpoints of 100 ports, made through the plugin's own API on a network of its own)."""
    import os

    tick = os.sysconf("SC_CLK_TCK")

    def idle_cpu() -> float:
        time.sleep(2)
        start = plugin_cpu_ticks(driver)
        time.sleep(seconds)
        return (plugin_cpu_ticks(driver) - start) / tick / seconds * 100

    name = f"pbbench-{uuid.uuid4().hex[:6]}-idle"
    sh("docker", "network", "create", "-d", driver, "--ipam-driver", driver, "--subnet", subnet, name)
    nid = sh("docker", "network", "inspect", "-f", "{{.Id}}", name)
    base = ipaddress.ip_network(subnet)
    probe = uuid.uuid4().hex + uuid.uuid4().hex
    made = [probe]

    def five_ports() -> float:
        """Median ms of Program + Revoke of five ports through the plugin's API."""
        times = []
        for _ in range(30):
            t = time.perf_counter()
            plugin_post(
                driver,
                "/NetworkDriver.ProgramExternalConnectivity",
                {
                    "NetworkID": nid,
                    "EndpointID": probe,
                    "Options": {
                        "com.docker.network.portmap": [
                            {"Proto": 6, "Port": 80 + j, "HostIP": "", "HostPort": 0, "HostPortEnd": 0}
                            for j in range(5)
                        ]
                    },
                },
            )
            plugin_post(driver, "/NetworkDriver.RevokeExternalConnectivity", {"NetworkID": nid, "EndpointID": probe})
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1000

    try:
        plugin_post(
            driver,
            "/NetworkDriver.CreateEndpoint",
            {
                "NetworkID": nid,
                "EndpointID": probe,
                "Interface": {"Address": f"{base.network_address + 250}/{base.prefixlen}"},
            },
        )
        publish_none = five_ports()
        before = idle_cpu()
        t = time.perf_counter()
        for k in range(ports // 100):
            eid = uuid.uuid4().hex + uuid.uuid4().hex
            plugin_post(
                driver,
                "/NetworkDriver.CreateEndpoint",
                {
                    "NetworkID": nid,
                    "EndpointID": eid,
                    "Interface": {"Address": f"{base.network_address + 2 + k}/{base.prefixlen}"},
                },
            )
            made.append(eid)
            plugin_post(
                driver,
                "/NetworkDriver.ProgramExternalConnectivity",
                {
                    "NetworkID": nid,
                    "EndpointID": eid,
                    "Options": {
                        "com.docker.network.portmap": [
                            {
                                "Proto": 6,
                                "Port": 80 + j,
                                "HostIP": "",
                                "HostPort": 20000 + k * 100 + j,
                                "HostPortEnd": 20000 + k * 100 + j,
                            }
                            for j in range(100)
                        ]
                    },
                },
            )
        publish = time.perf_counter() - t
        publish_many = five_ports()
        after = idle_cpu()
        print(f"idle CPU of the plugin's processes over {seconds:.0f} s (% of one core)")
        print(f"  no port published          : {before:6.2f}")
        print(f"  {ports:,} ports published    : {after:6.2f}   (publishing them took {publish:.1f} s)")
        print("Program + Revoke of one container's 5 ports through the plugin's API (ms, median of 30)")
        print(f"  no port published          : {publish_none:6.2f}")
        print(f"  {ports:,} ports published    : {publish_many:6.2f}   ratio {publish_many / publish_none:.2f}")
    finally:
        for eid in made:
            plugin_post(driver, "/NetworkDriver.RevokeExternalConnectivity", {"NetworkID": nid, "EndpointID": eid})
            plugin_post(driver, "/NetworkDriver.DeleteEndpoint", {"NetworkID": nid, "EndpointID": eid})
        remove_networks(name)


def plugin_pids(driver: str) -> list[str]:
    """Every process of the managed plugin, by the instance name baked into its rootfs."""
    import os

    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/root/etc/pybridge-instance") as f:
                if f.read().strip() == f"{driver}-plugin":
                    out.append(pid)
        except OSError:
            continue
    return out


def plugin_pss_mb(driver: str) -> tuple[float, int]:
    """Proportional set size of all the plugin's processes (MB), and how many there are."""
    total = 0
    pids = plugin_pids(driver)
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except OSError:
            continue
    return total / 1024, len(pids)


def bench_footprint(driver: str, rounds: int = 3) -> None:
    """Rootfs size, idle memory (PSS of all the plugin's processes at rest: after whatever ran
    through it, once it has handed freed memory back), and `docker plugin enable` to the first
    answer on its socket."""
    import os
    import socket as socketlib

    plugin = f"{driver}-plugin:latest"
    pid = sh("docker", "plugin", "inspect", "-f", "{{.Id}}", plugin)
    rootfs = f"{os.environ.get('PYBRIDGE_ENGINE_TREE', '')}/var/lib/docker/plugins/{pid}/rootfs"
    size = int(sh("du", "-sxk", rootfs).split()[0]) / 1024
    time.sleep(12)  # at rest: the plugin hands freed memory back 5-10 s after its last work
    pss, procs = plugin_pss_mb(driver)
    sock = f"/run/docker/plugins/{driver}.sock"

    def answers() -> bool:
        try:
            with socketlib.socket(socketlib.AF_UNIX) as c:
                c.settimeout(2)
                c.connect(sock)
                c.sendall(b"POST /Plugin.Activate HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
                status = c.recv(64).split(b"\r\n", 1)[0].split()
                return len(status) > 1 and status[0].startswith(b"HTTP/1.") and status[1] == b"200"
        except OSError:
            return False

    ready = []
    for _ in range(rounds):
        sh("docker", "plugin", "disable", "-f", plugin)
        started = time.perf_counter()
        sh("docker", "plugin", "enable", plugin)
        while not answers():
            if time.perf_counter() - started > 30:
                raise SystemExit("the plugin did not answer within 30 s of enable")
            time.sleep(0.01)
        ready.append(time.perf_counter() - started)
    time.sleep(5)
    fresh, _ = plugin_pss_mb(driver)
    print("footprint")
    print(f"  rootfs                      : {size:7.1f} MB")
    print(f"  idle PSS, {procs} processes     : {pss:7.1f} MB at rest (after what ran before), {fresh:.1f} MB fresh")
    print(
        f"  enable to first answer      : {statistics.median(ready):7.2f} s  (median of {rounds}: "
        + ", ".join(f"{r:.2f}" for r in ready)
        + ")"
    )


def concurrent_runs(network: str, count: int) -> float:
    """Wall time of `count` `docker run --rm` started at once on one network."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["docker", "run", "--rm", "--network", network, "--dns", "127.0.0.1", IMAGE, "true"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(count)
    ]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"docker run: {err.decode().strip()}")
    return time.perf_counter() - start


def per_container_p99(stats: dict) -> str:
    """The bar's figure: the p99 over containers of the plugin's work for each, its endpoint's
    calls summed by the plugin (CreateEndpoint .. DeleteEndpoint), plus the p99 of each IPAM
    address call, which names no endpoint (so an upper bound)."""
    summed = stats.get("(per container) endpoint calls summed")
    if not summed:
        return "per container p99: not reported by this plugin"
    ipam = sum(stats.get(m, {}).get("p99_ms", 0.0) for m in ("IpamDriver.RequestAddress", "IpamDriver.ReleaseAddress"))
    total = summed["p99_ms"] + ipam
    return (
        f"per container p99: {total:.2f} ms (endpoint calls summed, p99 over {summed['count']} containers: "
        f"{summed['p99_ms']:.2f} ms, + address calls' p99s {ipam:.2f} ms; bar 10 ms)"
    )


def free_block(prefixlen: int, within: str = "10.204.0.0/16") -> str:
    """A subnet of that size in `within` that no route on this machine overlaps."""
    routes = json.loads(sh("ip", "-j", "route", "show", "table", "all"))
    taken = [
        ipaddress.ip_network(r["dst"], strict=False)
        for r in routes
        if r.get("dst") and r["dst"] != "default" and ":" not in r["dst"]
    ]
    for net in ipaddress.ip_network(within).subnets(new_prefix=prefixlen):
        if not any(net.overlaps(t) for t in taken):
            return str(net)
    raise SystemExit(f"no free /{prefixlen} in {within}")


def host_state(driver: str) -> dict:
    """What a test network can leave behind: links, firewall rules (counters stripped), and the
    plugin's own networks, endpoints and the doctor's problems."""
    rules = []
    for argv in (("nft", "list", "ruleset"), ("iptables-save",), ("ip6tables-save",)):
        if shutil.which(argv[0]):
            text = subprocess.run(argv, capture_output=True, text=True).stdout
            text = re.sub(r"counter packets \d+ bytes \d+", "counter", text)
            rules += [f"{argv[0]}: {line.strip()}" for line in text.splitlines() if not line.startswith("#")]
    doctor = plugin_call(driver, "get", "/pybridge/doctor")
    return {
        "links": sorted(link["ifname"] for link in json.loads(sh("ip", "-j", "link", "show"))),
        "rules": sorted(rules),
        "networks": len(plugin_call(driver, "get", "/pybridge/networks")["networks"]),
        "endpoints": len(plugin_call(driver, "get", "/pybridge/endpoints")["endpoints"]),
        "problems": doctor.get("problems", []),
    }


def state_left(before: dict, after: dict) -> list[str]:
    out = []
    for key in ("links", "rules"):
        extra = sorted(set(after[key]) - set(before[key]))
        if extra:
            out.append(f"{len(extra)} {key} more than before, e.g. {extra[:3]}")
    for key in ("networks", "endpoints"):
        if after[key] != before[key]:
            out.append(f"plugin {key}: {before[key]} before, {after[key]} after")
    if after["problems"]:
        out.append(f"doctor: {after['problems'][:3]}")
    return out


def settled(driver: str, before: dict, seconds: float = 60.0) -> tuple[list[str], float]:
    """What is left compared with `before`, once the plugin's deferred veth deletions ran (or
    `seconds` passed), and how long that took."""
    started = time.monotonic()
    while True:
        left = state_left(before, host_state(driver))
        if not left or time.monotonic() - started > seconds:
            return left, time.monotonic() - started
        time.sleep(0.5)


def start_detached(names_networks: list[tuple[str, str]], parallel: int = 6) -> None:
    """`docker run -d` of a sleeping container per (name, network), `parallel` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    def one(item):
        name, net = item
        sh("docker", "run", "-d", "--name", name, "--network", net, "--dns", "127.0.0.1", IMAGE, "sleep", "36000")

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, names_networks))


def remove_containers(names: list[str], chunk: int = 100) -> None:
    for i in range(0, len(names), chunk):
        subprocess.run(["docker", "rm", "-f", *names[i : i + chunk]], capture_output=True)


def probe_starts(driver: str, network: str, runs: int) -> tuple[float, dict]:
    """Median `docker run --rm` on `network` over `runs` runs, and the plugin's figures for them."""
    plugin_call(driver, "post", "/pybridge/stats/reset")
    times = [timed_run(network) for _ in range(runs)]
    return statistics.median(times), plugin_call(driver, "get", "/pybridge/stats")


def dns_names_qps(client: str, server: str, names: list[str], seconds: float = 3.0) -> float:
    """dnsperf q/s from inside `client` for A queries cycling over `names` (median of 2)."""
    import tempfile

    pid = sh("docker", "inspect", "-f", "{{.State.Pid}}", client)
    with tempfile.NamedTemporaryFile("w", suffix=".queries", delete=False) as f:
        f.write("".join(f"{n} A\n" for n in names) * max(1, 100 // len(names)))
    try:
        runs = []
        for _ in range(2):
            out = subprocess.run(
                ["nsenter", "-t", pid, "-n", "dnsperf", "-s", server, "-d", f.name, "-l", str(seconds)]
                + ["-c", "2", "-T", "2", "-q", "32", "-t", "2"],
                capture_output=True,
                text=True,
                timeout=seconds + 30,
            ).stdout
            runs.append(float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1)))
            lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))
            if lost:
                print(f"  (dnsperf lost {lost} queries)")
    finally:
        os.unlink(f.name)
    return statistics.median(runs)


def quiet(driver: str, seconds: float = 90.0) -> float:
    """Wait until the plugin's processes use under 5% of a core over a second (what a burst
    left them to do is done); how long that took."""
    started = time.monotonic()
    ticks = plugin_cpu_ticks(driver)
    while time.monotonic() - started < seconds:
        time.sleep(1.0)
        now = plugin_cpu_ticks(driver)
        if now - ticks <= 5:  # clock ticks of 10 ms
            break
        ticks = now
    return time.monotonic() - started


def network_rm(*names: str) -> None:
    """remove_networks, and why dockerd kept one."""
    remove_networks(*names, seconds=30)
    for n in names:
        res = subprocess.run(["docker", "network", "rm", n], capture_output=True, text=True)
        if res.returncode and "not found" not in res.stderr:
            print(f"  dockerd kept network {n}: {res.stderr.strip()[:200]}", flush=True)


def bench_scale(driver: str, count: int = 1000, probes: int = 15) -> None:
    """Item 5 of issue 23: `count` containers on one network (pybridge, then the built-in
    bridge for comparison), then `count` // 5 pybridge networks of five containers. At the 10th
    container and at the `count`th: the start of one more (median of `probes` `docker run
    --rm`, and the plugin's CreateEndpoint p50), and dnsperf's q/s from a container for the
    names of the network's containers. Measured once the plugin is quiet again after the fill.
    Then `docker rm -f` of all and `network rm`, and what is left on the host and in the
    plugin."""
    if not shutil.which("dnsperf"):
        raise SystemExit("--scale needs dnsperf (apt-get install dnsperf)")
    tag = uuid.uuid4().hex[:6]
    made_nets: list[str] = []
    made: list[str] = []
    figures: dict[str, tuple[float, float, float]] = {}

    def fill(batch: list[tuple[str, str]]) -> None:
        started = time.perf_counter()
        start_detached(batch)
        made.extend(n for n, _ in batch)
        if len(batch) > 50:
            waited = quiet(driver)
            print(
                f"  ({len(batch)} started in {time.perf_counter() - started - waited:.0f} s; "
                f"the plugin quiet {waited:.0f} s later)",
                flush=True,
            )

    def measure(label: str, probe_net: str, names: list[str], server: str, ours: bool) -> None:
        median, stats = probe_starts(driver, probe_net, probes)
        create = stats.get("NetworkDriver.CreateEndpoint", {}) if ours else {}
        summed = stats.get("(per container) endpoint calls summed", {}) if ours else {}
        qps = dns_names_qps(made[0], server, names)
        few = dns_names_qps(made[0], server, names[:9]) if len(names) > 9 else qps
        figures[label] = (median, summed.get("p50_ms", 0.0), qps)
        plugin = (
            f"plugin per container p50 {summed['p50_ms']:5.2f} ms (CreateEndpoint p50 {create['p50_ms']:5.2f} "
            f"p99 {create['p99_ms']:5.2f}), "
            if create and summed
            else ""
        )
        print(
            f"  {label:44s}: docker run --rm median {median * 1000:6.1f} ms, {plugin}"
            f"DNS ({server}) over {len(names)} names {qps:7.0f} q/s"
            + (f" (over 9 of them {few:7.0f} q/s: names cost {qps / few:.2f}x)" if len(names) > 9 else ""),
            flush=True,
        )

    def clear(before: dict) -> None:
        started = time.perf_counter()
        remove_containers(made)
        made.clear()
        network_rm(*made_nets)
        made_nets.clear()
        print(f"  docker rm -f of all and network rm: {time.perf_counter() - started:.0f} s", flush=True)
        left, waited = settled(driver, before)
        print(f"  left behind: {'; '.join(left) if left else 'nothing'} ({waited:.1f} s later)", flush=True)

    try:
        # one network of `count` containers (a /22: 1,021 addresses)
        print(f"scale: {count} containers on one network, then {count // 5} networks of 5", flush=True)
        for kind in ("pybridge", "built-in"):
            before = host_state(driver)
            subnet = free_block(22)
            net = f"pbscale-{tag}-{kind}"
            ours = kind == "pybridge"
            args = ("-d", driver, "--ipam-driver", driver) if ours else ("-d", "bridge")
            sh("docker", "network", "create", *args, "--subnet", subnet, net)
            made_nets.append(net)
            server = str(ipaddress.ip_network(subnet).network_address + 1) if ours else "127.0.0.11"
            for stage in (9, count - 1):
                fill([(f"pbscale-{tag}-{kind}-{i}", net) for i in range(len(made), stage)])
                measure(f"{kind}, one network, the {stage + 1}th container", net, made, server, ours)
            clear(before)

        # count // 5 networks of five (/29: five containers and the gateway)
        before = host_state(driver)
        blocks = list(ipaddress.ip_network(free_block(20)).subnets(new_prefix=29))
        nets = count // 5
        for i in range(nets):
            name = f"pbscale-{tag}-n{i}"
            sh("docker", "network", "create", "-d", driver, "--ipam-driver", driver, "--subnet", str(blocks[i]), name)
            made_nets.append(name)
        probe_net, probe_gw = made_nets[0], str(blocks[0].network_address + 1)
        for stage in (2, nets):
            batch = [(f"pbscale-{tag}-{n}-{k}", made_nets[n]) for n in range(stage) for k in range(5)]
            # the probe network keeps a slot free for the probe: the probe is the 10th / 1,000th
            fill([b for b in batch if b[0] not in made and b[0] != f"pbscale-{tag}-0-4"])
            measure(f"pybridge, {stage} networks, the {len(made) + 1}th container", probe_net, made[:4], probe_gw, True)
        clear(before)
    finally:
        remove_containers(made)
        remove_networks(*made_nets)
    labels = list(figures)
    for a, b in zip(labels[::2], labels[1::2]):
        (t10, c10, q10), (tn, cn, qn) = figures[a], figures[b]
        plugin = f", plugin per container p50 {cn / c10:.2f}" if c10 else ""
        print(f"  {b} / {a.rsplit(',', 1)[1].strip()}: docker run {tn / t10:.2f}{plugin}, DNS q/s {qn / q10:.2f}")
    print("  (bar, pybridge: the 1,000th start at most 1.2x the 10th; DNS with 1,000 names as fast as with 10)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--driver", default="pybridge", help="driver name of the pybridge instance to measure")
    ap.add_argument("--ipam-only", action="store_true", help="only the IPAM figures (no Docker needed)")
    ap.add_argument("--dns-only", action="store_true", help="only the DNS figures")
    ap.add_argument("--firewall-only", action="store_true", help="only the firewall curves (no Docker needed)")
    ap.add_argument("--concurrent-rounds", type=int, default=4, help="rounds of 30 concurrent runs per driver")
    ap.add_argument("--idle", action="store_true", help="also the plugin's idle CPU with 10,000 published ports")
    ap.add_argument("--idle-only", action="store_true", help="only that")
    ap.add_argument(
        "--scale",
        type=int,
        default=0,
        metavar="N",
        help="only the scale figures: N containers on one network, then N/5 networks of five",
    )
    ap.add_argument(
        "--footprint-only",
        action="store_true",
        help="only rootfs size, idle PSS and enable-to-ready (disables and enables the plugin)",
    )
    args = ap.parse_args()
    # a TERM (a session's end, a CI timeout) unwinds like an error: every `finally` removes what
    # the bench made, where the default action would leave hundreds of networks behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.footprint_only:
        bench_footprint(args.driver)
        return 0
    if args.scale:
        subprocess.run(["scripts/make-test-image.sh"], check=True)
        bench_scale(args.driver, args.scale)
        return 0
    if args.firewall_only:
        bench_firewall()
        return 0
    if args.idle_only:
        bench_idle(args.driver, free_subnets(1)[0])
        return 0
    if args.dns_only:
        subprocess.run(["scripts/make-test-image.sh"], check=True)
        bench_dns(args.driver, free_subnets(1)[0])
        return 0
    bench_ipam()
    if args.ipam_only:
        return 0
    bench_firewall()
    sh(sys.executable, "-c", "import requests_unixsocket")
    subprocess.run(["scripts/make-test-image.sh"], check=True)
    tag = uuid.uuid4().hex[:6]
    builtin, ours = f"pbbench-{tag}-builtin", f"pbbench-{tag}-pybridge"
    s1, s2 = free_subnets(2)
    try:
        sh("docker", "network", "create", "-d", "bridge", "--subnet", s1, builtin)
        sh("docker", "network", "create", "-d", args.driver, "--ipam-driver", args.driver, "--subnet", s2, ours)
        for net in (builtin, ours):
            timed_run(net)
        plugin_call(args.driver, "post", "/pybridge/stats/reset")
        times = compare(builtin, ours, args.runs)
        stats = plugin_call(args.driver, "get", "/pybridge/stats")
        plugin_call(args.driver, "post", "/pybridge/stats/reset")
        ported = compare(builtin, ours, max(4, args.runs // 2), FIVE_PORTS)
        port_stats = plugin_call(args.driver, "get", "/pybridge/stats")
        crowd = {builtin: [], ours: []}
        plugin_call(args.driver, "post", "/pybridge/stats/reset")
        for i in range(args.concurrent_rounds):
            for net in (builtin, ours) if i % 2 == 0 else (ours, builtin):
                crowd[net].append(concurrent_runs(net, 30))
        crowd_stats = plugin_call(args.driver, "get", "/pybridge/stats")
    finally:
        remove_networks(builtin, ours)

    bench_dns(args.driver, free_subnets(3)[2])
    report(f"docker run --rm, {args.runs} runs each, interleaved", times, builtin, ours)
    report("docker run --rm with five published ports (-p 80 ... -p 84), interleaved", ported, builtin, ours)
    print("plugin's own latency per method while serving those runs")
    print(f"  {'method':44s} {'calls':>5s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
    per_container = 0.0
    for method, s in stats.items():
        print(f"  {method:44s} {s['count']:5d} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} {s['max_ms']:8.2f}")
        if not method.startswith("("):
            per_container += s["p50_ms"] * s["count"] / args.runs
    print(f"  plugin work per container (sum of p50 x calls per container): {per_container:.2f} ms")
    print(f"  {per_container_p99(stats)}")
    print("with five published ports:")
    runs = max(4, args.runs // 2)
    p50 = p99 = 0.0
    for method, s in port_stats.items():
        print(f"  {method:44s} {s['count']:5d} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} {s['max_ms']:8.2f}")
        if not method.startswith("("):
            p50 += s["p50_ms"] * s["count"] / runs
            p99 += s["p99_ms"] * s["count"] / runs
    print(f"  plugin work per container with 5 ports: sum of p50 x calls {p50:.2f} ms, sum of p99 x calls {p99:.2f} ms")
    print(f"  {per_container_p99(port_stats)}")
    report(
        f"30 concurrent docker run --rm on one network, {args.concurrent_rounds} rounds each, interleaved",
        crowd,
        builtin,
        ours,
    )
    print("  the plugin's latency per method while serving them")
    for method, s in crowd_stats.items():
        print(f"  {method:44s} {s['count']:5d} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} {s['max_ms']:8.2f}")
    if args.idle:
        bench_idle(args.driver, free_subnets(4)[3])
    bench_footprint(args.driver)
    return 0


if __name__ == "__main__":
    sys.exit(main())
