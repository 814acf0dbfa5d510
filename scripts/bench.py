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
import ipaddress
import json
import statistics
import subprocess
import sys
import time
import uuid

IMAGE = "pybridge-test-busybox:latest"


def sh(*argv, check=True):
    res = subprocess.run(argv, capture_output=True, text=True)
    if check and res.returncode:
        raise SystemExit(f"{' '.join(argv)}: {res.stderr.strip()}")
    return res.stdout.strip()


def free_subnets(count: int) -> list[str]:
    routes = json.loads(sh("ip", "-j", "route", "show", "table", "all"))
    taken = [ipaddress.ip_network(r["dst"], strict=False) for r in routes
             if r.get("dst") and r["dst"] != "default" and ":" not in r["dst"]]
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
        for net in ((builtin, ours) if i % 2 == 0 else (ours, builtin)):
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
        for _ in range(16000 - 10):
            ipam.request_address(pid, "", {})
        large = cost()
        store.close()
    print("IPAM: allocate + release one address")
    print(f"  with 10 leases     : {small:7.1f} us")
    print(f"  with 16,000 leases : {large:7.1f} us   ratio {large / small:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--driver", default="pybridge", help="driver name of the pybridge instance to measure")
    ap.add_argument("--ipam-only", action="store_true", help="only the IPAM figures (no Docker needed)")
    args = ap.parse_args()
    bench_ipam()
    if args.ipam_only:
        return 0
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
    finally:
        sh("docker", "network", "rm", builtin, ours, check=False)

    report(f"docker run --rm, {args.runs} runs each, interleaved", times, builtin, ours)
    report("docker run --rm with five published ports (-p 80 ... -p 84), interleaved", ported, builtin, ours)
    print("plugin's own latency per method while serving those runs")
    print(f"  {'method':44s} {'calls':>5s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
    per_container = 0.0
    for method, s in stats.items():
        print(f"  {method:44s} {s['count']:5d} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} {s['max_ms']:8.2f}")
        per_container += s["p50_ms"] * s["count"] / args.runs
    print(f"  plugin work per container (sum of p50 x calls per container): {per_container:.2f} ms")
    print("with five published ports:")
    for method in ("NetworkDriver.ProgramExternalConnectivity", "NetworkDriver.RevokeExternalConnectivity"):
        s = port_stats.get(method)
        if s:
            print(f"  {method:44s} {s['count']:5d} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} {s['max_ms']:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
