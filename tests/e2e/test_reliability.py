"""Concurrency and crashes through a real dockerd: nothing lost, nothing held twice, nothing leaked
(the dk fixture checks links, rules, state rows and leases against the starting point)."""

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .dockerenv import IMAGE, MANAGED, PLUGIN, docker, free_subnet, sh, wait_for, wait_plugin_socket


def start_many(dk, networks, count, workers=50):
    names = [dk.name("c") for _ in range(count)]
    dk.containers.extend(names)

    def start(i):
        net = networks[i % len(networks)]
        res = sh(
            "docker",
            "run",
            "-d",
            "--name",
            names[i],
            "--network",
            net,
            "--dns",
            "127.0.0.1",
            IMAGE,
            "sleep",
            "600",
            check=False,
            timeout=180,
        )
        return names[i], net, res.returncode == 0, res.stderr.strip()

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(start, range(count)))


def addresses(dk, results):
    return [dk.ip(name, net) for name, net, ok, _ in results if ok]


def plugin_doctor(lease_grace=60):
    out = sh(
        "curl",
        "-s",
        "--unix-socket",
        f"/run/docker/plugins/{PLUGIN}.sock",
        f"http://x/pybridge/doctor?lease_grace={lease_grace}",
    ).stdout
    return json.loads(out)["problems"]


def plugin_gc(lease_grace=60):
    out = sh(
        "curl",
        "-s",
        "-X",
        "POST",
        "--unix-socket",
        f"/run/docker/plugins/{PLUGIN}.sock",
        f"http://x/pybridge/gc?lease_grace={lease_grace}",
    ).stdout
    return json.loads(out)


def test_fifty_simultaneous_starts_on_one_network(dk):
    net = dk.network("--subnet", free_subnet())
    results = start_many(dk, [net], 50)
    failures = [r for r in results if not r[2]]
    assert failures == [], failures[:3]
    ips = addresses(dk, results)
    assert len(ips) == len(set(ips)) == 50
    first = results[0][0]
    for name, _, _, _ in results[1::7]:
        assert dk.exec(first, "ping", "-c1", "-W2", name, check=False).returncode == 0
    assert plugin_doctor() == []


def test_fifty_simultaneous_starts_across_five_networks_while_networks_come_and_go(dk):
    nets = [dk.network("--subnet", free_subnet()) for _ in range(5)]
    churn_errors, stop = [], threading.Event()

    def churn():
        while not stop.is_set():
            dk.name("churn")
            ok, err = dk.try_network("--subnet", free_subnet())
            if not ok:
                churn_errors.append(err)
            else:
                docker("network", "rm", err)
                dk.networks.remove(err)

    t = threading.Thread(target=churn)
    t.start()
    try:
        results = start_many(dk, nets, 50)
    finally:
        stop.set()
        t.join(60)
    assert [r for r in results if not r[2]] == []
    assert churn_errors == []
    ips = addresses(dk, results)
    assert len(ips) == len(set(ips))
    assert plugin_doctor() == []


def plugin_pids():
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = open(f"/proc/{pid}/environ", "rb").read()
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if f"PYBRIDGE_NAME={PLUGIN}\0".encode() in env and b"plugin\0serve" in cmd:
            pids.append(int(pid))
    return sorted(pids)


@pytest.mark.parametrize("victim", ["tree", "worker"])
def test_plugin_killed_while_containers_start(dk, victim):
    nets = [dk.network("--subnet", free_subnet()) for _ in range(2)]
    pids = plugin_pids()
    assert len(pids) >= 2, pids  # the gunicorn master and its worker

    def kill_soon():
        time.sleep(1.0)
        for pid in pids if victim == "tree" else pids[1:]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    killer = threading.Thread(target=kill_soon)
    killer.start()
    results = start_many(dk, nets, 30, workers=30)
    killer.join()
    # bring it back as a user would
    if victim == "tree":
        sh("docker", "plugin", "disable", "-f", MANAGED, check=False)
        docker("plugin", "enable", MANAGED)
    assert wait_plugin_socket(30)
    assert wait_for(lambda: plugin_pids() and len(plugin_pids()) >= 2, 30)
    ok = [(n, net) for n, net, good, _ in results if good]
    print(f"{victim}: {len(ok)} of 30 started; failures: {sorted({e[:90] for *_, good, e in results if not good})[:2]}")
    ips = [dk.ip(n, net) for n, net in ok]
    assert len(ips) == len(set(ips)), "an address is held twice"
    for (name, net), ip in zip(ok, ips):
        if not ip:
            continue
        res = dk.run_once(net, "ping", "-c1", "-W2", name, check=False)
        assert res.returncode == 0 and ip in res.stdout, f"{name} ({ip}) unreachable: {res.stderr}"
    fresh = dk.run(nets[0])
    assert dk.ip(fresh, nets[0]) not in ips
    # a ReleaseAddress that failed while the plugin was down leaves a lease without an owner:
    # gc (here without the grace that protects in-flight starts) releases it, then none is left
    report = plugin_gc(lease_grace=0)
    print(f"{victim}: gc released {len(report['released_leases'])} leases without an endpoint")
    assert report["errors"] == []
    assert wait_for(lambda: plugin_doctor(lease_grace=0) == [], 10), plugin_doctor(lease_grace=0)
