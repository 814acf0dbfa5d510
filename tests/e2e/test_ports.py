"""Published ports through a real dockerd, shown by traffic from every side."""

import random
import socket
import subprocess
import sys

from .dockerenv import PLUGIN, free_subnet, sh, wait_for
from .test_connectivity import outside  # noqa: F401  (fixture)

SERVER = ("sh", "-c", "while true; do echo pong | nc -l -p 80; done")


def fetch(ip, port, timeout=3.0):
    try:
        with socket.create_connection((ip, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(64).decode().strip()
    except OSError:
        return ""


def fetch_from_ns(ns, ip, port):
    code = f"import socket; s=socket.create_connection(('{ip}', {port}), timeout=3); print(s.recv(64).decode().strip())"
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=20).stdout.strip()


def published(endpoint_container_ip):
    out = sh(sys.executable, "-m", "plugin", "ports", "--state-dir", f"/var/lib/{PLUGIN}").stdout
    return [line.split()[0] for line in out.splitlines() if f"-> {endpoint_container_ip}:" in line]


def test_published_port_answers_from_outside_host_hairpin_and_other_networks(dk, outside):
    port = random.randrange(20000, 29000)
    net = dk.network("--subnet", free_subnet())
    web = dk.run(net, "-p", f"{port}:80", cmd=SERVER)
    assert wait_for(lambda: fetch("127.0.0.1", port) == "pong", 15), "from the host via 127.0.0.1"
    assert fetch_from_ns(outside.ns, outside.host_ip, port) == "pong", "from outside via the host"
    gw = sh("ip", "-j", "route", "get", outside.ip).stdout  # the host address the outside sees
    assert outside.host_ip in gw
    same = dk.run_once(net, "sh", "-c", f"nc -w 3 {outside.host_ip} {port}", check=False)
    assert "pong" in same.stdout, "hairpin from the same network"
    other = dk.network("--subnet", free_subnet())
    res = dk.run_once(other, "sh", "-c", f"nc -w 3 {outside.host_ip} {port}", check=False)
    assert "pong" in res.stdout, "from another network through the published port"
    direct = dk.run_once(other, "sh", "-c", f"nc -w 3 {dk.ip(web, net)} 80", check=False)
    assert "pong" not in direct.stdout, "but not directly"


def test_port_zero_gets_a_free_port_shown_by_the_ports_command(dk):
    net = dk.network("--subnet", free_subnet())
    web = dk.run(net, "-p", "80", cmd=SERVER)
    rows = wait_for(lambda: published(dk.ip(web, net)), 10)
    assert rows and rows[0].startswith("0.0.0.0:")
    port = int(rows[0].split(":")[1].split("/")[0])
    assert wait_for(lambda: fetch("127.0.0.1", port) == "pong", 15)


def test_a_host_port_taken_by_another_mapping_is_refused(dk):
    port = random.randrange(30000, 39000)
    net = dk.network("--subnet", free_subnet())
    dk.run(net, "-p", f"{port}:80", cmd=SERVER)
    res = sh("docker", "run", "--rm", "--network", net, "--dns", "127.0.0.1", "-p", f"{port}:80",
             "pybridge-test-busybox", "true", check=False)
    assert res.returncode != 0
    assert f"host port 0.0.0.0:{port}/tcp is already published by another container" in res.stderr
