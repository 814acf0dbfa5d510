"""Multi-host fixtures: the hosts scripts/multihost.sh made (PYBRIDGE_MULTIHOST names its
directory). Without it the tests are skipped, or fail when the whole suite runs under CI."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "multihost.sh"
IMAGE = "pybridge-test-busybox:latest"
UNDERLAY = "10.206.255"
ETCD_PORTS = (2379, 2479, 2579)


class Host:
    def __init__(self, base: Path, n: int):
        self.n, self.base = n, base
        self.sock = base / f"h{n}" / "run" / "docker.sock"
        self.netns = f"pbmh-h{n}"
        self.address = f"{UNDERLAY}.{n}"
        encrypt = base / "encrypt"
        self.encrypted = encrypt.exists() and encrypt.read_text().strip() == "wireguard"
        # VXLAN's source on this host: its tunnel address over WireGuard, else its underlay's
        self.vxlan_address = f"10.254.255.{n}" if self.encrypted else self.address

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        p = subprocess.run(
            ["docker", "-H", f"unix://{self.sock}", *args], capture_output=True, text=True, timeout=timeout
        )
        if check and p.returncode != 0:
            raise AssertionError(f"host {self.n}: docker {' '.join(args)}: {p.stderr.strip()}")
        return p

    def run(self, name: str, network: str, *command: str, extra: tuple[str, ...] = ()) -> str:
        """A detached test container; its address on `network`."""
        self.docker(
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--dns",
            "127.0.0.1",
            "--stop-timeout",
            "1",
            *extra,
            IMAGE,
            *command,
        )
        return self.ip(name, network)

    def ip(self, container: str, network: str) -> str:
        return self.docker(
            "inspect", "-f", '{{(index .NetworkSettings.Networks "%s").IPAddress}}' % network, container
        ).stdout.strip()

    def exec(self, container: str, *command: str, check: bool = False, timeout: float = 60):
        return self.docker("exec", container, *command, check=check, timeout=timeout)

    def ns(self, *argv: str, check: bool = True) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv], capture_output=True, text=True, check=check
        ).stdout

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """The host command, against this host's plugin."""
        return subprocess.run(
            [
                str(ROOT / "scripts" / "pybridge"),
                "--socket",
                str(self.base / f"h{self.n}" / "run" / "docker" / "plugins" / "pybridge.sock"),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def remove_containers(self, prefix: str) -> None:
        """One at a time: dockerd 20.10 removing many containers of one network at once can lose
        an endpoint count update (moby#42119) or deadlock in libnetwork (moby#46661, fixed in
        20.10.27; Debian 12 ships 20.10.24)."""
        for cid in self.docker("ps", "-aq", "--filter", f"name={prefix}", check=False).stdout.split():
            self.docker("rm", "-f", cid, check=False)

    def fdb_macs(self) -> set[str]:
        """MACs of remote containers programmed on this host's VXLAN devices."""
        out = self.ns("bridge", "fdb", "show")
        return {line.split()[0] for line in out.splitlines() if " dst " in line}


class Cluster:
    def __init__(self, base: Path):
        self.base = base
        self.hosts = [Host(base, int(n)) for n in (base / "hosts").read_text().split()]
        self.encrypted = self.hosts[0].encrypted  # VXLAN through WireGuard

    def tool(self, *args: str) -> None:
        subprocess.run(
            [str(SCRIPT), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "PYBRIDGE_MULTIHOST_DIR": str(self.base)},
        )

    def root_user(self) -> list[str]:
        """etcdctl's flag for etcd's root user, when the rig turned authentication on."""
        path = self.base / "root.password"
        return [f"--user=root:{path.read_text().strip()}"] if path.exists() else []

    @property
    def tls(self) -> Path | None:
        """The rig's certificates, when etcd serves TLS with client-cert auth (the default)."""
        return self.base / "tls" if (self.base / "tls").is_dir() else None

    def etcdctl_as(self, *args: str, endpoint: str = "") -> subprocess.CompletedProcess:
        """etcdctl on the underlay with only these flags and arguments (as any client there
        could run it); `endpoint`: the first etcd member's, TLS or not as the rig runs it."""
        url = endpoint or f"{'https' if self.tls else 'http'}://{UNDERLAY}.254:{ETCD_PORTS[0]}"
        return subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                "pbmh-ul",
                "etcdctl",
                "--endpoints",
                url,
                "--dial-timeout=2s",
                "--command-timeout=5s",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        )

    def etcdctl(self, *args: str) -> str:
        """etcdctl as the rig's admin client."""
        tls = self.tls
        scheme = "https" if tls else "http"
        endpoints = ",".join(f"{scheme}://{UNDERLAY}.254:{port}" for port in ETCD_PORTS)
        auth = [f"--cacert={tls}/pbtest-ca.pem", f"--cert={tls}/admin.pem", f"--key={tls}/admin-key.pem"] if tls else []
        auth += self.root_user()
        return subprocess.run(
            ["ip", "netns", "exec", "pbmh-ul", "etcdctl", "--endpoints", endpoints, *auth, *args],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "ETCDCTL_API": "3"},
        ).stdout


@pytest.fixture(scope="session")
def cluster():
    base = os.environ.get("PYBRIDGE_MULTIHOST")
    if not base or not (Path(base) / "hosts").exists():
        if os.environ.get("PYBRIDGE_E2E") == "1" and os.environ.get("PYBRIDGE_MULTIHOST_REQUIRED") == "1":
            pytest.fail("no multi-host set-up: run scripts/multihost.sh test")
        pytest.skip("multi-host tests run under scripts/multihost.sh test")
    return Cluster(Path(base))


@pytest.fixture
def net(cluster):
    """A cluster network on every host (the same command on each), with a subnet of its own;
    removed with its containers afterwards."""
    tag = uuid.uuid4().hex[:6]
    made: list[tuple[Host, str]] = []
    subnets = iter(range(1, 250))

    def make(subnet: str | None = None, name: str | None = None, hosts=None, internal: bool = False) -> str:
        name = name or f"pbmh-{tag}-{len(made)}"
        subnet = subnet or f"10.205.{next(subnets)}.0/24"
        for h in hosts or cluster.hosts:
            h.docker(
                "network",
                "create",
                "-d",
                "pybridge",
                "--ipam-driver",
                "pybridge",
                "--subnet",
                subnet,
                *(("--internal",) if internal else ()),
                "-o",
                f"pybridge.cluster={name}",
                name,
            )
            made.append((h, name))
        return name

    yield make
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(cluster.hosts)) as pool:
        list(pool.map(lambda h: h.remove_containers(f"pbmh-{tag}"), cluster.hosts))
    for h, name in reversed(made):
        wait_for(
            lambda: "has active endpoints" not in h.docker("network", "rm", name, check=False).stderr,
            timeout=60,
            interval=1,
        )
    # the cluster's record goes with the last host that had the network
    assert wait_for(
        lambda: (
            not any(name in cluster.etcdctl("get", "--prefix", "--keys-only", "/pybridge/v2/net/") for _, name in made)
        ),
        timeout=10,
    ), "a cluster network's record was left in etcd"
