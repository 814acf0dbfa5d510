#!/usr/bin/env python3
"""How far cluster mode scales: N simulated hosts running pybridge's real cluster code (records,
watch, allocation, resync, as build_services wires them) with fake kernel adapters, against a
real three-member etcd on loopback that this script starts and removes.

    scripts/simulate_cluster.py [--hosts 10 50 100] [--containers 50] [--grace 5] [--procs 4]

For each N it reports:
- at rest: etcd requests and bytes per second (leases kept alive, watches idle), once every
  host's address reserve is full;
- churn: every host starts its containers at once (RequestAddress + CreateEndpoint, as dockerd
  calls them): claim-to-programmed time on every other host (p50/p99), etcd requests and bytes
  per second meanwhile, CPU and memory per host;
- a host's death (its lease left to expire) and return: how long until every other host has
  dropped its containers, and has them again.

The hosts are spread over --procs worker processes (4 by default; each its own GIL), all on this
machine's two cores: CPU per host is what the watch and allocation cost a host (the sum over
processes, divided by N); times at large N include waiting for the other simulated hosts' CPU,
so they are upper bounds of what real hosts would see.
Only loopback is used: etcd listens on 127.0.0.1, the hosts' "underlay addresses" are names.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLIENT_PORTS = (23791, 23792, 23793)
PEER_PORTS = (23801, 23802, 23803)
SUBNET = "10.240.0.0/16"
GATEWAY = "10.240.0.1"


def start_etcd(base: Path) -> list[subprocess.Popen]:
    cluster = ",".join(f"sim{i}=http://127.0.0.1:{p}" for i, p in enumerate(PEER_PORTS))
    procs = []
    for i, (c, p) in enumerate(zip(CLIENT_PORTS, PEER_PORTS)):
        d = base / f"etcd{i}"
        log = open(base / f"etcd{i}.log", "w")
        procs.append(
            subprocess.Popen(
                [
                    "etcd",
                    "--name",
                    f"sim{i}",
                    "--data-dir",
                    str(d),
                    "--listen-client-urls",
                    f"http://127.0.0.1:{c}",
                    "--advertise-client-urls",
                    f"http://127.0.0.1:{c}",
                    "--listen-peer-urls",
                    f"http://127.0.0.1:{p}",
                    "--initial-advertise-peer-urls",
                    f"http://127.0.0.1:{p}",
                    "--initial-cluster",
                    cluster,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "pybridge-sim",
                    "--quota-backend-bytes",
                    str(4 << 30),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(_healthy(c) for c in CLIENT_PORTS):
            return procs
        time.sleep(0.2)
    stop_etcd(procs)
    raise SystemExit("simulate: etcd did not come up (see its logs in " + str(base) + ")")


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return b'"true"' in r.read()
    except OSError:
        return False


def stop_etcd(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def etcd_counters() -> tuple[float, float]:
    """(requests handled, bytes received + sent) over the three members, as etcd counts them."""
    requests = volume = 0.0
    for port in CLIENT_PORTS:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        for line in text.splitlines():
            if line.startswith("grpc_server_handled_total"):
                requests += float(line.rsplit(" ", 1)[1])
            elif re.match(r"etcd_network_client_grpc_(received|sent)_bytes_total", line):
                volume += float(line.rsplit(" ", 1)[1])
    return requests, volume


def wipe() -> None:
    subprocess.run(
        ["etcdctl", "--endpoints", f"127.0.0.1:{CLIENT_PORTS[0]}", "del", "--prefix", "/pybridge/"],
        check=True,
        capture_output=True,
        env={**os.environ, "ETCDCTL_API": "3"},
    )


class SimHost:
    """One host: pybridge's services over fakes, with a real etcd client."""

    def __init__(self, base: Path, n: int, grace: int):
        from plugin.cluster.etcd import EtcdKV
        from tests.fakes import host_over_fakes

        self.address = f"10.230.{n // 250}.{n % 250 + 1}"
        port = CLIENT_PORTS[n % len(CLIENT_PORTS)]
        env = {
            "PYBRIDGE_NAME": "pbsim",
            "PYBRIDGE_IFPREFIX": "ps",
            "PYBRIDGE_CLUSTER_ETCD": f"http://127.0.0.1:{port}",
            "PYBRIDGE_CLUSTER_ADDRESS": self.address,
            "PYBRIDGE_CLUSTER_GRACE": str(grace),
        }
        d = base / f"h{n}"
        d.mkdir()
        self.services = host_over_fakes(env, d, EtcdKV([("http", "127.0.0.1", port)]), self.address)
        self.seen: dict[str, float] = {}  # MAC of another host's container -> first programmed
        self.gone: dict[str, float] = {}
        self.flaps = 0
        cluster = self.services.cluster
        assert cluster is not None
        self.cluster = cluster
        programme = cluster.on_endpoints

        def recorded(name, peers) -> None:
            now = time.time()
            for mac in peers:
                self.seen.setdefault(mac, now)
                self.gone.pop(mac, None)
            for mac in set(self.seen) - set(peers):
                if mac not in self.gone:
                    self.gone[mac] = now
                    self.flaps += 1
            programme(name, peers)

        cluster.on_endpoints = recorded
        self.pool = ""
        self.network_id = f"{n + 1:064x}"

    def reserve_full(self) -> bool:
        """Whether this host's address reserve holds its target (nothing waits on it)."""
        reserve = self.cluster._reserve
        ranges = reserve.ranges()
        return bool(ranges) and all((q := reserve.quiet(key)) is not None and q[0] >= q[1] for key in ranges)

    def create_network(self) -> None:
        from plugin.domain.options import LOCAL_SPACE, IpamDataSpec

        ipam = self.services.ipam
        pool = ipam.request_pool(LOCAL_SPACE, SUBNET, "", False)
        gw = ipam.request_address(pool["PoolID"], GATEWAY, {"RequestAddressType": "com.docker.network.gateway"})
        self.services.networks.create(
            self.network_id,
            {"pybridge.cluster": "sim"},
            ipv6=False,
            internal=False,
            ipv4_data=[IpamDataSpec(pool=SUBNET, gateway=gw, space=LOCAL_SPACE)],
            ipv6_data=[],
        )
        self.pool = pool["PoolID"]

    def start_container(self, k: int, host_index: int) -> tuple[str, float]:
        """What dockerd asks for a container: an address, then the endpoint. (MAC, when claimed)"""
        mac = f"02:5e:{host_index >> 8 & 255:02x}:{host_index & 255:02x}:{k >> 8 & 255:02x}:{k & 255:02x}"
        claimed = time.time()
        address = self.services.ipam.request_address(self.pool, "", {})
        self.services.endpoints.create(
            self.network_id, f"{host_index:032x}{k:032x}", address=address, address6="", mac=mac
        )
        return mac, claimed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class Worker:
    """One process's share of the hosts (host i lives in process i % procs), driven by commands
    from the main process over a pipe. Each process has its own GIL: at 100 hosts, one process's
    keepalives came late enough under the churn that leases expired (the last notes' finding)."""

    def __init__(self, base: Path, indices: list[int], grace: int):
        import plugin.cluster.etcd  # noqa: F401  (the imports are the process's, not the hosts')
        import tests.fakes  # noqa: F401

        self.rss0 = rss_mb()
        self.hosts = {i: SimHost(base, i, grace) for i in indices}
        for h in self.hosts.values():
            h.create_network()
        for h in self.hosts.values():
            h.cluster.start()

    def loaded(self) -> bool:
        return all(h.cluster.watch.loaded for h in self.hosts.values())

    def full(self) -> bool:
        return all(h.reserve_full() for h in self.hosts.values())

    def usage(self) -> tuple[float, float]:
        return cpu_seconds(), rss_mb() - self.rss0

    def churn(self, containers: int) -> tuple[dict[str, tuple[int, float]], int]:
        """Every host here starts its containers; (MAC -> (host, when claimed), starts refused).
        A start the cluster refuses (etcd did not answer in time) fails as dockerd's would, and
        is counted, not retried."""
        from plugin.cluster.interfaces import ClusterUnavailable

        created: dict[str, tuple[int, float]] = {}
        refused = 0
        lock = threading.Lock()

        def one_host(i: int) -> None:
            nonlocal refused
            for k in range(containers):
                try:
                    mac, when = self.hosts[i].start_container(k, i)
                except ClusterUnavailable:
                    with lock:
                        refused += 1
                    continue
                with lock:
                    created[mac] = (i, when)

        with ThreadPoolExecutor(max_workers=min(32, len(self.hosts))) as pool:
            list(pool.map(one_host, self.hosts))
        return created, refused

    def fewest_seen(self) -> int:
        return min(len(h.seen) for h in self.hosts.values())

    def seen(self) -> tuple[dict[int, dict[str, float]], int]:
        return {i: dict(h.seen) for i, h in self.hosts.items()}, sum(h.flaps for h in self.hosts.values())

    def clear_gone(self) -> None:
        for h in self.hosts.values():
            h.gone.clear()

    def stop(self, i: int) -> None:
        if i in self.hosts:
            self.hosts[i].cluster.stop()

    def start(self, i: int) -> None:
        if i in self.hosts:
            self.hosts[i].cluster.start()

    def _others(self, victim: int) -> list[SimHost]:
        return [h for i, h in self.hosts.items() if i != victim]

    def all_gone(self, macs: set[str], victim: int) -> bool:
        return all(macs <= set(h.gone) for h in self._others(victim))

    def all_seen(self, macs: set[str], victim: int) -> bool:
        return all(macs <= set(h.seen) for h in self._others(victim))

    def last_gone(self, macs: set[str], victim: int) -> float:
        return max((h.gone[m] for h in self._others(victim) for m in macs if m in h.gone), default=0.0)

    def last_seen(self, macs: set[str], victim: int) -> float:
        return max((h.seen[m] for h in self._others(victim) for m in macs if m in h.seen), default=0.0)

    def forget(self, macs: set[str], victim: int) -> None:
        for h in self._others(victim):
            for m in macs:
                h.seen.pop(m, None)
                h.gone.pop(m, None)

    def close(self) -> None:
        with ThreadPoolExecutor(max_workers=len(self.hosts)) as pool:  # (each waits for its threads)
            list(pool.map(lambda h: h.cluster.stop(), self.hosts.values()))
        for h in self.hosts.values():
            h.services.store.close()


def serve(conn, base: Path, indices: list[int], grace: int) -> None:
    """A worker process's loop: (method, args) in, ("ok", result) or ("error", text) out."""
    import logging
    import traceback

    logging.basicConfig(level=logging.ERROR)
    try:
        worker = Worker(base, indices, grace)
        conn.send(("ok", None))
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        method, args = conn.recv()
        try:
            conn.send(("ok", getattr(worker, method)(*args)))
        except Exception:
            conn.send(("error", traceback.format_exc()))
        if method == "close":
            return


class Fleet:
    """N simulated hosts spread over `procs` worker processes; a call goes to every worker at
    once and returns their answers."""

    def __init__(self, base: Path, n_hosts: int, grace: int, procs: int):
        import multiprocessing

        ctx = multiprocessing.get_context("fork")  # nothing runs in this process yet but etcd's Popen
        self.conns, self.procs = [], []
        for w in range(min(procs, n_hosts)):
            parent, child = ctx.Pipe()
            indices = list(range(w, n_hosts, procs))
            p = ctx.Process(target=serve, args=(child, base, indices, grace), daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)
        for c in self.conns:
            self._answer(c)

    @staticmethod
    def _answer(conn):
        status, value = conn.recv()
        if status != "ok":
            raise RuntimeError(f"a simulation worker failed:\n{value}")
        return value

    def ask(self, method: str, *args) -> list:
        for c in self.conns:
            c.send((method, args))
        return [self._answer(c) for c in self.conns]

    def close(self) -> None:
        try:
            self.ask("close")
        finally:
            for p in self.procs:
                p.join(30)
                if p.is_alive():
                    p.kill()


def simulate(base: Path, n_hosts: int, containers: int, grace: int, procs: int) -> dict:
    wipe()
    (base / f"n{n_hosts}").mkdir()
    fleet = Fleet(base / f"n{n_hosts}", n_hosts, grace, procs)
    try:
        return measure(fleet, n_hosts, containers, grace)
    finally:
        fleet.close()


def measure(fleet: Fleet, n_hosts: int, containers: int, grace: int) -> dict:
    assert wait_until(lambda: all(fleet.ask("loaded")), 60 + n_hosts), "watches did not load"
    # "at rest" starts once every host's reserve is full: its first fill (TARGET addresses
    # claimed per host, each seen by every host) is start-up, not rest
    filled = wait_until(lambda: all(fleet.ask("full")), 60 + n_hosts)
    time.sleep(2)
    # at rest
    r0, b0, t0 = *etcd_counters(), time.monotonic()
    time.sleep(10)
    r1, b1, t1 = *etcd_counters(), time.monotonic()
    rest = ((r1 - r0) / (t1 - t0), (b1 - b0) / (t1 - t0))
    # churn: every host starts its containers, all hosts at once
    usage0 = fleet.ask("usage")
    c0, v0, s0 = *etcd_counters(), time.monotonic()
    created: dict[str, tuple[int, float]] = {}
    refused = 0
    for part, r in fleet.ask("churn", containers):
        created.update(part)
        refused += r
    everyone = len(created)
    converged = wait_until(
        lambda: min(fleet.ask("fewest_seen")) >= everyone - containers, timeout=max(60, everyone / 50)
    )
    s1 = time.monotonic()
    usage1 = fleet.ask("usage")
    c1, v1 = etcd_counters()
    seen: dict[int, dict[str, float]] = {}
    flaps = 0
    for part, f in fleet.ask("seen"):
        seen.update(part)
        flaps += f
    delays = [
        seen_by[mac] - when
        for j, seen_by in seen.items()
        for mac, (i, when) in created.items()
        if i != j and mac in seen_by
    ]
    churn = {
        "seconds": s1 - s0,
        "converged": converged,
        "p50_ms": percentile(delays, 50) * 1000,
        "p99_ms": percentile(delays, 99) * 1000,
        "requests_per_s": (c1 - c0) / (s1 - s0),
        "bytes_per_s": (v1 - v0) / (s1 - s0),
        "cpu_ms_per_host": sum(b[0] - a[0] for a, b in zip(usage0, usage1)) * 1000 / n_hosts,
        "rss_mb_per_host": sum(b[1] for b in usage1) / n_hosts,
        "flaps": flaps,  # a container dropped by a host, though alive
        "refused": refused,
    }
    # a host dies (its lease is left to expire), then comes back
    victim = n_hosts - 1
    macs = {mac for mac, (i, _) in created.items() if i == victim}
    fleet.ask("clear_gone")
    died, dv0 = time.time(), etcd_counters()
    fleet.ask("stop", victim)  # (its lease is not revoked: it expires after the grace)
    dropped = wait_until(lambda: all(fleet.ask("all_gone", macs, victim)), timeout=grace * 4 + 30)
    last = max(fleet.ask("last_gone", macs, victim))
    drop_s = last - died if last else float("nan")
    fleet.ask("forget", macs, victim)
    back = time.time()
    fleet.ask("start", victim)
    returned = wait_until(lambda: all(fleet.ask("all_seen", macs, victim)), timeout=60)
    last = max(fleet.ask("last_seen", macs, victim))
    back_s = last - back if last else float("nan")
    dv1 = etcd_counters()
    return {
        "rest": rest,
        "churn": churn,
        "death": {"dropped": dropped, "drop_s": drop_s, "returned": returned, "back_s": back_s},
        "death_requests": dv1[0] - dv0[0],
        "filled": filled,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, nargs="+", default=[10, 50, 100])
    ap.add_argument("--containers", type=int, default=50, help="containers per host")
    ap.add_argument("--grace", type=int, default=5, help="PYBRIDGE_CLUSTER_GRACE of the hosts (s)")
    ap.add_argument("--procs", type=int, default=4, help="processes the hosts are spread over (host i in i %% procs)")
    args = ap.parse_args()
    if not shutil.which("etcd"):
        raise SystemExit("simulate: etcd is not installed (apt-get install etcd-server etcd-client)")
    import logging

    logging.basicConfig(level=logging.ERROR)
    base = Path(tempfile.mkdtemp(prefix="pybridge-sim-"))
    procs: list[subprocess.Popen] = []
    try:
        procs = start_etcd(base)
        print(
            f"cluster simulation: real etcd (3 members, loopback), {args.containers} containers per host, "
            f"grace {args.grace} s; hosts spread over {args.procs} processes on {os.cpu_count()} cores"
        )
        print(
            f"  {'hosts':>5s} {'rest req/s':>10s} {'rest KB/s':>9s} | {'churn s':>7s} {'p50 ms':>8s} {'p99 ms':>8s} "
            f"{'req/s':>7s} {'KB/s':>8s} {'CPU ms/host':>11s} {'MB/host':>7s} | {'drop s':>6s} {'back s':>6s} {'flaps':>5s}"
        )
        for n in args.hosts:
            r = simulate(base, n, args.containers, args.grace, args.procs)
            c, d = r["churn"], r["death"]
            print(
                f"  {n:5d} {r['rest'][0]:10.1f} {r['rest'][1] / 1024:9.1f} | {c['seconds']:7.1f} {c['p50_ms']:8.1f} "
                f"{c['p99_ms']:8.1f} {c['requests_per_s']:7.0f} {c['bytes_per_s'] / 1024:8.0f} "
                f"{c['cpu_ms_per_host']:11.0f} {c['rss_mb_per_host']:7.2f} | {d['drop_s']:6.1f} {d['back_s']:6.1f} {c['flaps']:5d}"
                + ("" if c["converged"] and d["dropped"] and d["returned"] else "  (did not converge)")
                + (f"  ({c['refused']} starts refused: etcd did not answer)" if c["refused"] else "")
                + ("" if r["filled"] else "  (reserves not full before the rest window)"),
                flush=True,
            )
    finally:
        stop_etcd(procs)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
