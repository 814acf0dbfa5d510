"""scripts/uninstall.sh (issue 11, item 5) on an instance of its own, installed by install.sh:
it refuses while a network uses the driver, then removes the plugin, its firewall table, its
links and sockets, keeps the state unless --delete-state, and leaves the other instances alone."""

from __future__ import annotations

import os

from .dockerenv import NFT, IMAGE, free_subnet, sh

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAME = "pbuninst"
PLUGIN = f"{NAME}-plugin:latest"
PREFIX = "pu"
TREE = os.environ.get("PYBRIDGE_ENGINE_TREE", "")
STATE = f"{TREE}/var/lib/{NAME}"
SETTINGS = (
    f"PYBRIDGE_IFPREFIX={PREFIX} PYBRIDGE_METRICS=off PYBRIDGE_DNS_UPSTREAM= "
    "PYBRIDGE_DEFAULT_POOLS=10.206.0.0/16:24 PYBRIDGE_DEFAULT_POOLS6=fd70:6201:fe00::/40:64"
)


def script(*args: str):
    return sh(os.path.join(REPO, "scripts", args[0]), *args[1:], check=False, timeout=600)


def links() -> set[str]:
    return {
        name for name in os.listdir("/sys/class/net") if name.startswith((f"{PREFIX}-", f"{PREFIX}h", f"{PREFIX}c"))
    }


def test_uninstall_refuses_while_in_use_then_removes_everything_it_made(dk):
    others = sh("docker", "plugin", "ls", "--format", "{{.Name}} {{.Enabled}}").stdout.split("\n")
    os.environ["PYBRIDGE_SET"] = SETTINGS
    net = ctr = ""
    try:
        res = script("install.sh", NAME)
        assert res.returncode == 0, res.stderr
        net, ctr = f"pbt-uninst-{os.getpid()}", f"pbt-uninst-c-{os.getpid()}"
        sh("docker", "network", "create", "-d", NAME, "--ipam-driver", NAME, "--subnet", free_subnet(), net)
        sh(
            "docker",
            "run",
            "-d",
            "--name",
            ctr,
            "--network",
            net,
            "--dns",
            "127.0.0.1",
            "--stop-timeout",
            "1",
            IMAGE,
            "sleep",
            "600",
        )
        assert links(), "the network's bridge and the container's veth"

        res = script("uninstall.sh", NAME)
        assert res.returncode == 1 and net in res.stderr, res.stderr
        assert sh("docker", "plugin", "inspect", PLUGIN, check=False).returncode == 0, "refused: nothing removed"

        sh("docker", "rm", "-f", ctr)
        sh("docker", "network", "rm", net)
        sh("ip", "link", "add", f"{PREFIX}-stale", "type", "bridge")  # a link of ours the state does not know
        assert sh(*NFT, "list", "table", "inet", NAME, check=False).returncode == 0
        assert "PBUNINST" in sh("iptables", "-S", "FORWARD").stdout
        res = script("uninstall.sh", NAME)
        assert res.returncode == 0, res.stderr
        assert sh("docker", "plugin", "inspect", PLUGIN, check=False).returncode != 0
        assert links() == set()
        assert sh(*NFT, "list", "table", "inet", NAME, check=False).returncode != 0
        assert "PBUNINST" not in sh("iptables", "-S", "FORWARD").stdout, "its static rule"
        assert not os.path.exists(f"/run/docker/plugins/{NAME}.sock")
        assert not os.path.exists(f"/run/docker/plugins/{NAME}:latest.sock")
        assert os.path.exists(f"{STATE}/state.db"), "the state is kept unless asked"
        assert os.path.exists("/usr/local/bin/pybridge"), "other instances still use the host command"
        assert sh("docker", "plugin", "ls", "--format", "{{.Name}} {{.Enabled}}").stdout.split("\n") == [
            o for o in others
        ], "the other plugins are as they were"

        res = script("uninstall.sh", NAME, "--delete-state")  # again: nothing left but the state
        assert res.returncode == 0, res.stderr
        assert not os.path.exists(STATE)
    finally:
        os.environ.pop("PYBRIDGE_SET", None)
        if ctr:
            sh("docker", "rm", "-f", ctr, check=False)
        if net:
            sh("docker", "network", "rm", net, check=False)
        sh("docker", "plugin", "rm", "-f", PLUGIN, check=False)
        for link in links():
            sh("ip", "link", "del", link, check=False)
        sh(*NFT, "delete", "table", "inet", NAME, check=False)
        sh("rm", "-rf", STATE, f"/run/docker/plugins/{NAME}.sock", f"/run/docker/plugins/{NAME}:latest.sock")
