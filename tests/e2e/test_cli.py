"""The host command `pybridge` (issue 11, item 1), as scripts/install.sh installs it: run from
another directory, against the test plugin's socket, with containers Docker named."""

import json
import subprocess

from .dockerenv import PLUGIN, docker, free_port, free_subnet, wait_for

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
    assert net in cli("ls").stdout                                     # the table names it too

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
