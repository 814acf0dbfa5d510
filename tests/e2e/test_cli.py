"""The host command `pybridge` (issue 11, item 1), as scripts/install.sh installs it: run from
another directory, against the test plugin's socket, with containers Docker named."""

import json
import queue
import subprocess
import threading

from .dockerenv import PLUGIN, docker, free_port, free_subnet, gateway_of, wait_for

CLI = "/usr/local/bin/pybridge"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "--name", PLUGIN, *args], capture_output=True, text=True, timeout=60, cwd="/")


def test_ls_ps_and_port_show_networks_containers_and_published_ports(dk):
    net, port = dk.network("--subnet", free_subnet()), free_port()
    web = dk.run(net, "-p", f"{port}:80")
    nid, ip = dk.network_id(net), dk.ip(web, net)

    def listed():
        res = cli("ls", "--format", "json")
        assert res.returncode == 0, res.stderr
        return next((n for n in json.loads(res.stdout) if n["id"] == nid and n["name"] == net), None)

    row = wait_for(listed, 15)
    assert row and row["endpoints"] == 1 and row["bridge"] == f"pt-{nid[:12]}" and row["dns"]
    assert net in cli("ls").stdout  # the table names it too

    res = cli("ps", net, "--format", "json")
    assert res.returncode == 0, res.stderr
    (ep,) = json.loads(res.stdout)
    assert (ep["container"], ep["ipv4"].split("/")[0]) == (web, ip)
    assert ep["ports"] == [{"container_port": "80/tcp", "host": f"0.0.0.0:{port}", "family": 0}]
    assert docker("inspect", "-f", "{{.NetworkSettings.MacAddress}}", web) in (ep["mac"], "")

    res = cli("port", web)
    assert (res.returncode, res.stdout.strip()) == (0, f"80/tcp -> 0.0.0.0:{port}")
    assert cli("port", "no-such-container").returncode == 1
    assert cli("ps", "no-such-network").returncode == 1
    assert cli("doctor").returncode == 0


def test_a_plugin_that_is_not_running_is_exit_code_3_with_a_message():
    res = subprocess.run([CLI, "--name", "no-such-plugin", "ls"], capture_output=True, text=True, timeout=30, cwd="/")
    assert res.returncode == 3 and "not running" in res.stderr


def test_dns_records_the_query_log_and_following_it(dk):
    net = dk.network("--subnet", free_subnet(), "-o", "pybridge.dns.log=true")
    web = dk.run(net)
    ip = dk.ip(web, net)
    assert wait_for(lambda: f"{web}" in cli("dns", net).stdout, 15), cli("dns", net).stderr
    rows = [line.split() for line in cli("dns", net).stdout.splitlines()]
    assert rows[0] == ["NAME", "TYPE", "VALUE"] and [web, "A", ip] in rows
    assert [web + "." + net, "A", ip] in rows
    gw = gateway_of(dk, net)
    follower = subprocess.Popen(
        [CLI, "--name", PLUGIN, "dns", net, "--log", "-f"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l.split()) for l in follower.stdout], daemon=True).start()
    try:
        assert lines.get(timeout=15)[:3] == ["TIME", "CLIENT", "NAME"]
        dk.run_once(net, "nslookup", web, gw)
        line = lines.get(timeout=15)  # printed while it follows
        assert web in line and "A" in line and "NOERROR" in line, line
    finally:
        follower.terminate()
        follower.wait(10)
    res = cli("dns", net, "--log", "--format", "json")
    logged = json.loads(res.stdout) if res.stdout.startswith("[") else [json.loads(l) for l in res.stdout.splitlines()]
    assert any(e["name"].rstrip(".") == web and e["rcode"] == "NOERROR" for e in logged)
    assert cli("dns", net, "-f").returncode == 2  # -f without --log
    assert cli("dns", "no-such-network").returncode == 1
    res = cli("doctor")
    assert res.returncode == 0 and "state and kernel agree" in res.stdout


def test_hosts_prints_and_applies_names_to_a_hosts_file(dk, tmp_path):
    net = dk.network("--subnet", free_subnet())
    web = dk.run(net)
    ip = dk.ip(web, net)
    line = f"{ip}\t{web}.{net}.pybridge.internal"
    assert wait_for(lambda: line in cli("hosts").stdout.splitlines(), 15), cli("hosts")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1\tlocalhost\n")
    for _ in range(2):  # again: the same file
        res = cli("hosts", "--apply", "--file", str(hosts))
        assert res.returncode == 0, res.stderr
        text = hosts.read_text().splitlines()
        assert text[0] == "127.0.0.1\tlocalhost" and line in text
        assert text.count("# pybridge end") == 1
    docker("rm", "-f", web)
    dk.containers.remove(web)
    assert wait_for(lambda: line not in cli("hosts").stdout, 15)
    assert cli("hosts", "--apply", "--file", str(hosts)).returncode == 0
    assert hosts.read_text() == "127.0.0.1\tlocalhost\n", "the block goes with the last name"


def test_gc_stats_and_help_on_every_verb(dk):
    net = dk.network("--subnet", free_subnet())
    dk.run(net)
    res = cli("gc")
    assert res.returncode == 0 and "restored from state" in res.stdout, res
    res = cli("stats", "--format", "json")
    assert res.returncode == 0 and json.loads(res.stdout)["NetworkDriver.CreateEndpoint"]["count"] >= 1
    assert "NetworkDriver.Join" in cli("stats").stdout
    for verb in ("ls", "ps", "port", "dns", "hosts", "doctor", "gc", "stats"):
        res = cli(verb, "--help")
        assert res.returncode == 0 and res.stdout.startswith("usage: pybridge"), (verb, res)
    assert cli("no-such-verb").returncode == 2
