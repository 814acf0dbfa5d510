"""Our firewall heals itself when flushed or deleted from outside, and doctor/gc see and repair
the differences between state and kernel."""

import json

from .dockerenv import CHAIN_PREFIX, PLUGIN, free_subnet, sh, wait_for


def can_ping(dk, container, ip):
    return dk.exec(container, "ping", "-c1", "-W1", ip, check=False).returncode == 0


def plugin(method, path):
    out = sh("curl", "-s", "-X", method, "--unix-socket", f"/run/docker/plugins/{PLUGIN}.sock", f"http://x{path}").stdout
    return json.loads(out)


def test_chains_flushed_or_deleted_from_outside_come_back_within_seconds(dk):
    net = dk.network("--subnet", free_subnet())
    a, b = dk.run(net), dk.run(net)
    ip = dk.ip(b, net)
    assert can_ping(dk, a, ip)
    fwd = f"{CHAIN_PREFIX}-FORWARD"
    iso = f"{CHAIN_PREFIX}-ISOLATE"
    for damage in (["iptables", "-F", fwd],                                    # a flush
                   ["sh", "-c", f"iptables -D DOCKER-USER -j {iso}; iptables -D FORWARD -j {fwd}; "
                                f"iptables -F {fwd}; iptables -X {fwd}"]):      # chain and jumps gone
        sh(*damage)
        assert wait_for(lambda: can_ping(dk, a, ip), 30, 0.5), f"not healed after {damage}"
    assert plugin("GET", "/pybridge/doctor")["problems"] == []


def test_doctor_reports_a_difference_and_gc_repairs_it(dk):
    net = dk.network("--subnet", free_subnet())
    bridge = f"pt-{dk.network_id(net)[:12]}"
    addr = sh("ip", "-4", "-o", "addr", "show", "dev", bridge).stdout.split()[3]
    sh("ip", "addr", "del", addr, "dev", bridge)
    problems = plugin("GET", "/pybridge/doctor")["problems"]
    assert any(f"bridge {bridge} lacks address {addr}" in p for p in problems), problems
    report = plugin("POST", "/pybridge/gc")
    assert report["errors"] == []
    assert plugin("GET", "/pybridge/doctor")["problems"] == []
    assert addr in sh("ip", "-4", "-o", "addr", "show", "dev", bridge).stdout
