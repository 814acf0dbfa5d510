#!/usr/bin/env python3
"""Multi-host figures of issue 12, on the hosts of scripts/multihost.sh (run `scripts/multihost.sh
bench`, which makes them, runs this and removes them):

- TCP throughput and round-trip time between containers on two hosts (through VXLAN, and
  WireGuard when the rig runs it), against the same between the two hosts themselves over the
  same underlay (no VXLAN), and between two containers on one host; all measured with the same
  small Python programs, interleaved. `scripts/multihost.sh bench` runs it on a cluster in clear
  and then on one over WireGuard, and prints the two side by side (--save, --compare).
- Address allocation in cluster mode: the plugin's own latency of IpamDriver.RequestAddress during
  3 x 20 concurrent starts on one cluster network (etcd local), against a local network.
- How long after `docker run` returns on one host its name is answered on another.

Traffic stays on the test's own namespaces and containers.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

BASE = Path(os.environ.get("PYBRIDGE_MULTIHOST", "/var/lib/pybridge-multihost"))
IMAGE = "pybridge-test-busybox:latest"
PORT = 5201

RECEIVER = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
mode = sys.argv[2]
if mode == "stream":
    total, first = 0, None
    buf = bytearray(1 << 18)
    while True:
        n = c.recv_into(buf)
        if not n: break
        if first is None: first = time.monotonic()
        total += n
    print(total, time.monotonic() - first, flush=True)
else:
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        b = c.recv(64)
        if not b: break
        c.sendall(b)
"""

SENDER = r"""
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
mode, seconds = sys.argv[3], float(sys.argv[4])
if mode == "stream":
    data = b"\0" * (1 << 18)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        c.sendall(data)
    c.close()
else:
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rtts = []
    for _ in range(int(seconds)):
        t = time.perf_counter(); c.sendall(b"x"); c.recv(64); rtts.append(time.perf_counter() - t)
    c.close()
    rtts.sort()
    print(rtts[len(rtts) // 2] * 1e6, rtts[int(len(rtts) * 0.99)] * 1e6)
"""


def docker(host: int, *args: str, check: bool = True) -> str:
    p = subprocess.run(
        ["docker", "-H", f"unix://{BASE}/h{host}/run/docker.sock", *args], capture_output=True, text=True, timeout=180
    )
    if check and p.returncode != 0:
        raise SystemExit(f"host {host}: docker {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout.strip()


def netns_of(host: int, container: str | None) -> list[str]:
    """The command prefix that runs in a host's namespace, or in one of its containers'."""
    if container is None:
        return ["ip", "netns", "exec", f"pbmh-h{host}"]
    pid = docker(host, "inspect", "-f", "{{.State.Pid}}", container)
    return ["nsenter", f"--net=/proc/{pid}/ns/net", "--"]


def measure(server: list[str], server_ip: str, client: list[str], mode: str, amount: float) -> list[float]:
    rx = subprocess.Popen([*server, sys.executable, "-c", RECEIVER, str(PORT), mode], stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout.readline().strip() == "ready"
        out = subprocess.run(
            [*client, sys.executable, "-c", SENDER, server_ip, str(PORT), mode, str(amount)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        rx_out = rx.communicate(timeout=30)[0]
    finally:
        rx.kill()
    if mode == "stream":
        total, seconds = rx_out.split()
        return [int(total) * 8 / float(seconds) / 1e9]
    return [float(x) for x in out.split()]


def paths(name: str) -> dict:
    ip = {
        c: docker(h, "inspect", "-f", '{{(index .NetworkSettings.Networks "%s").IPAddress}}' % name, c)
        for h, c in ((1, f"{name}-a"), (1, f"{name}-b"), (2, f"{name}-c"))
    }
    return {
        "underlay (host 1 -> host 2, no VXLAN)": (netns_of(2, None), "10.206.255.2", netns_of(1, None)),
        "containers on two hosts (VXLAN)": (netns_of(2, f"{name}-c"), ip[f"{name}-c"], netns_of(1, f"{name}-a")),
        "containers on one host": (netns_of(1, f"{name}-b"), ip[f"{name}-b"], netns_of(1, f"{name}-a")),
    }


def bench_traffic(name: str, rounds: int, seconds: float, trips: int) -> dict:
    ways = paths(name)
    gbit: dict[str, list[float]] = {k: [] for k in ways}
    rtt: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(rounds):  # interleaved, so that drift hits every path alike
        for k, (srv, ip, cli) in ways.items():
            gbit[k] += measure(srv, ip, cli, "stream", seconds)
            rtt[k].append(measure(srv, ip, cli, "rr", trips)[0])
    base = "underlay (host 1 -> host 2, no VXLAN)"
    print(f"TCP, median of {rounds} interleaved rounds ({seconds:.0f} s streams, {trips} round trips):")
    for k in ways:
        g, r = statistics.median(gbit[k]), statistics.median(rtt[k])
        print(
            f"  {k:40s} {g:6.2f} Gbit/s ({g / statistics.median(gbit[base]):.2f}x)   "
            f"RTT {r:6.1f} us ({r / statistics.median(rtt[base]):.2f}x)"
        )
    print("  bar: containers on two hosts >= 0.80x the underlay's throughput, <= 1.5x its round trip")
    print("       (over WireGuard: >= 0.60x, <= 2x)")
    cross = "containers on two hosts (VXLAN)"
    return {
        "gbit": statistics.median(gbit[cross]),
        "rtt_us": statistics.median(rtt[cross]),
        "underlay_gbit": statistics.median(gbit[base]),
        "underlay_rtt_us": statistics.median(rtt[base]),
    }


def compare(files: list[str]) -> None:
    """The figures of several runs (--save), side by side: each against the underlay measured in
    the same run, and each against the first."""
    runs = [json.loads(Path(f).read_text()) for f in files]
    first = runs[0]
    print("cross-host TCP between containers, side by side:")
    for r in runs:
        print(
            f"  {r['label']:10s} {r['gbit']:6.2f} Gbit/s ({r['gbit'] / r['underlay_gbit']:.2f}x the underlay, "
            f"{r['gbit'] / first['gbit']:.2f}x {first['label']})   RTT {r['rtt_us']:6.1f} us "
            f"({r['rtt_us'] / r['underlay_rtt_us']:.2f}x the underlay, {r['rtt_us'] / first['rtt_us']:.2f}x "
            f"{first['label']})   name on another host after {r.get('name_ms', float('nan')):.0f} ms (median)"
        )
    print("  bar over WireGuard: >= 0.60x the underlay's throughput, <= 2x its round trip; a name < 1 s")


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.path)


def plugin(host: int, method: str, path: str) -> dict:
    conn = _Unix(str(BASE / f"h{host}" / "run" / "docker" / "plugins" / "pybridge.sock"))
    conn.request(method, path, body=b"{}" if method == "POST" else None)
    body = conn.getresponse().read()
    conn.close()
    return json.loads(body or b"{}")


def start_many(name: str, per_host: int) -> float:
    def one(h: int, i: int) -> None:
        docker(
            h,
            "run",
            "-d",
            "--name",
            f"{name}-s{h}-{i}",
            "--network",
            name,
            "--dns",
            "127.0.0.1",
            "--stop-timeout",
            "1",
            IMAGE,
            "sleep",
            "600",
        )

    t = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=3 * per_host) as pool:
        list(pool.map(lambda a: one(*a), [(h, i) for h in (1, 2, 3) for i in range(per_host)]))
    return time.monotonic() - t


def bench_allocation(name: str, local: str, per_host: int) -> None:
    print(f"Address allocation: IpamDriver.RequestAddress inside the plugin, {per_host} x 3 concurrent starts")
    for net, hosts in ((name, (1, 2, 3)), (local, (1,))):
        for h in hosts:
            plugin(h, "POST", "/pybridge/stats/reset")
        if net == name:
            start_many(net, per_host)
        else:
            with concurrent.futures.ThreadPoolExecutor(max_workers=per_host) as pool:
                list(
                    pool.map(
                        lambda i: docker(
                            1,
                            "run",
                            "-d",
                            "--name",
                            f"{local}-s{i}",
                            "--network",
                            local,
                            "--dns",
                            "127.0.0.1",
                            "--stop-timeout",
                            "1",
                            IMAGE,
                            "sleep",
                            "600",
                        ),
                        range(per_host),
                    )
                )
        for h in hosts:
            s = plugin(h, "GET", "/pybridge/stats").get("IpamDriver.RequestAddress", {})
            kind = "cluster network" if net == name else "local network  "
            print(
                f"  {kind} host {h}: {s.get('count', 0):3d} calls, p50 {s.get('p50_ms', 0):6.2f} ms, "
                f"p99 {s.get('p99_ms', 0):6.2f} ms, max {s.get('max_ms', 0):6.2f} ms "
                f"(its thread: CPU p99 {s.get('cpu_p99_ms', 0):5.2f} ms, in a run queue p99 "
                f"{s.get('queued_p99_ms', 0):5.2f} ms; wall less run queue p99 {s.get('unqueued_p99_ms', 0):5.2f} ms)"
            )
    print("  bar: cluster p99 < 20 ms with etcd local; wall far above CPU + run queue = waiting (lock, etcd)")


def plugin_call(host: int, method: str, body: dict) -> dict:
    conn = _Unix(str(BASE / f"h{host}" / "run" / "docker" / "plugins" / "pybridge.sock"))
    conn.request("POST", f"/{method}", body=json.dumps(body).encode())
    reply = json.loads(conn.getresponse().read() or b"{}")
    conn.close()
    if reply.get("Err"):
        raise SystemExit(f"host {host}: {method}: {reply['Err']}")
    return reply


def bench_ipam_calls(calls: int, threads: int) -> None:
    """The IPAM path alone, through the plugin's socket on host 1: a cluster network made with
    the calls dockerd makes (unknown to dockerd, removed afterwards), then RequestAddress and
    ReleaseAddress, `threads` at a time; against a local network the same way."""
    print(f"Address allocation alone: {calls} RequestAddress through host 1's plugin, {threads} at a time")
    for kind, subnet in (("cluster", "10.205.201.0/24"), ("local", "10.204.201.0/24")):
        nid = uuid.uuid4().hex * 2
        pool = plugin_call(
            1, "IpamDriver.RequestPool", {"AddressSpace": "pybridge-local", "Pool": subnet, "Options": {}, "V6": False}
        )["PoolID"]
        gw = plugin_call(
            1,
            "IpamDriver.RequestAddress",
            {"PoolID": pool, "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}},
        )["Address"]
        opts = {"pybridge.cluster": f"pbmhi-{nid[:6]}"} if kind == "cluster" else {}
        plugin_call(
            1,
            "NetworkDriver.CreateNetwork",
            {
                "NetworkID": nid,
                "Options": {"com.docker.network.generic": opts},
                "IPv4Data": [{"AddressSpace": "pybridge-local", "Pool": subnet, "Gateway": gw}],
                "IPv6Data": [],
            },
        )
        times: list[float] = []
        plugin(1, "POST", "/pybridge/stats/reset")
        try:

            def one(_, pool=pool, times=times):
                t = time.perf_counter()
                a = plugin_call(1, "IpamDriver.RequestAddress", {"PoolID": pool, "Address": "", "Options": {}})[
                    "Address"
                ]
                times.append(time.perf_counter() - t)
                return a

            with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool_:
                got = list(pool_.map(one, range(calls)))
            assert len(set(got)) == calls
            inside = plugin(1, "GET", "/pybridge/stats").get("IpamDriver.RequestAddress", {})
            for a in got:
                plugin_call(1, "IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": a})
        finally:
            plugin_call(1, "NetworkDriver.DeleteNetwork", {"NetworkID": nid})
            plugin_call(1, "IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": gw})
            plugin_call(1, "IpamDriver.ReleasePool", {"PoolID": pool})
        times.sort()
        print(
            f"  {kind:8s} in the plugin p50 {inside.get('p50_ms', 0):6.2f} ms, p99 {inside.get('p99_ms', 0):6.2f} ms; "
            f"at the client p50 {times[len(times) // 2] * 1e3:6.2f} ms, p99 {times[int(len(times) * 0.99)] * 1e3:6.2f} ms"
        )


def bench_names(name: str, rounds: int) -> float:
    gateway = (
        ".".join(
            docker(
                1, "inspect", "-f", '{{(index .NetworkSettings.Networks "%s").IPAddress}}' % name, f"{name}-a"
            ).split(".")[:3]
        )
        + ".1"
    )
    delays = []
    for i in range(rounds):
        docker(
            2,
            "run",
            "-d",
            "--name",
            f"{name}-n{i}",
            "--network",
            name,
            "--dns",
            "127.0.0.1",
            "--stop-timeout",
            "1",
            IMAGE,
            "sleep",
            "600",
        )
        t = time.monotonic()
        while time.monotonic() - t < 10:
            out = subprocess.run(
                [
                    "docker",
                    "-H",
                    f"unix://{BASE}/h1/run/docker.sock",
                    "exec",
                    f"{name}-a",
                    "nslookup",
                    f"{name}-n{i}",
                    gateway,
                ],
                capture_output=True,
                text=True,
            ).stdout
            if "Name:" in out and "Address" in out.split("Name:", 1)[1]:
                break
        delays.append(time.monotonic() - t)
    print(
        f"Names: answered on host 1 after docker run returned on host 2: median {statistics.median(delays):.3f} s, "
        f"max {max(delays):.3f} s over {rounds} (includes one docker exec, ~50 ms); bar: within 1 s"
    )
    return statistics.median(delays) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--trips", type=int, default=2000)
    ap.add_argument("--per-host", type=int, default=20)
    ap.add_argument("--ipam-only", action="store_true", help="only the allocation through the plugin's socket")
    ap.add_argument("--save", metavar="FILE", help="write the cross-host figures to FILE (JSON)")
    ap.add_argument("--label", default="", help="what this run is, in --save's figures")
    ap.add_argument("--traffic-only", action="store_true", help="only throughput, round trip and names")
    ap.add_argument("--compare", nargs="+", metavar="FILE", help="instead: print saved runs side by side")
    args = ap.parse_args()
    if args.compare:
        compare(args.compare)
        return 0
    if not (BASE / "hosts").exists():
        raise SystemExit("no hosts: run scripts/multihost.sh bench (or up first)")
    tag = uuid.uuid4().hex[:6]
    name, local = f"pbmhb-{tag}", f"pbmhl-{tag}"
    for h in (1, 2, 3):
        docker(
            h,
            "network",
            "create",
            "-d",
            "pybridge",
            "--ipam-driver",
            "pybridge",
            "--subnet",
            "10.205.200.0/24",
            "-o",
            f"pybridge.cluster={name}",
            name,
        )
    docker(1, "network", "create", "-d", "pybridge", "--ipam-driver", "pybridge", "--subnet", "10.204.200.0/24", local)
    try:
        for h, c in ((1, "a"), (1, "b"), (2, "c")):
            docker(
                h,
                "run",
                "-d",
                "--name",
                f"{name}-{c}",
                "--network",
                name,
                "--dns",
                "127.0.0.1",
                "--stop-timeout",
                "1",
                IMAGE,
                "sleep",
                "3600",
            )
        if not args.ipam_only:
            figures = bench_traffic(name, args.rounds, args.seconds, args.trips)
            figures["name_ms"] = bench_names(name, 10)
            if args.save:
                Path(args.save).write_text(json.dumps({"label": args.label, **figures}))
        if not args.traffic_only:
            bench_ipam_calls(200, 1)
            bench_ipam_calls(200, 8)
            if not args.ipam_only:
                bench_allocation(name, local, args.per_host)
    finally:

        def clear(h: int) -> None:
            # one at a time: concurrent removals can deadlock dockerd 20.10.24 (moby#46661)
            for cid in docker(h, "ps", "-aq", "--filter", "name=pbmh", check=False).split():
                docker(h, "rm", "-f", cid, check=False)
            docker(h, "network", "rm", name, check=False)

        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            list(pool.map(clear, (1, 2, 3)))
        docker(1, "network", "rm", local, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
