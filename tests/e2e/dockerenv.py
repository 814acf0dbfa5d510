"""Helpers for end-to-end tests: run docker, name everything with a per-test prefix, clean up.

Network safety: tests only ever send traffic to containers and bridges they created, to
addresses in 10.200.0.0/13 and fd70:6201::/32, and containers run with --dns 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import random
import shlex
import sqlite3
import subprocess
import time
import uuid

from plugin.domain.naming import chain_prefix
from plugin.kernel import nftrules

from ..waiting import wait_for  # noqa: F401  (the e2e tests import it from here)

PLUGIN = os.environ.get("PYBRIDGE_TEST_PLUGIN", "pybridge-test")
MANAGED = f"{PLUGIN}-plugin:latest"
IMAGE = "pybridge-test-busybox:latest"
IFPREFIX = "pt"
CHAIN_PREFIX = chain_prefix(PLUGIN)
# An engine running in a tree of its own (scripts/engine.sh) keeps the plugin's state there.
ENGINE_TREE = os.environ.get("PYBRIDGE_ENGINE_TREE", "")
STATE_DB = f"{ENGINE_TREE}/var/lib/{PLUGIN}/state.db"
# nft as current as the engine's: Docker 29's nftables tables (written by its root's nft 1.1)
# crash the nft 1.0.6 of Debian 12 whenever it reads the ruleset (issue 18)
NFT = ["chroot", ENGINE_TREE, "nft"] if ENGINE_TREE and os.access(f"{ENGINE_TREE}/usr/sbin/nft", os.X_OK) else ["nft"]
# dockerd's firewall backend: "nftables" for Docker 29 started with it (no iptables rules then)
DOCKER_FIREWALL = os.environ.get("PYBRIDGE_ENGINE_FIREWALL", "iptables") if ENGINE_TREE else "iptables"
AUTO_POOL = ipaddress.ip_network("10.207.0.0/16")

_subnets = itertools.count(random.randrange(0, 1000))


class CommandFailed(AssertionError):
    pass


def sh(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    return sh("docker", *args, check=check, timeout=timeout).stdout.strip()


def host_routes() -> list:
    out = json.loads(sh("ip", "-j", "route", "show", "table", "all").stdout or "[]")
    out += json.loads(sh("ip", "-6", "-j", "route", "show", "table", "all").stdout or "[]")
    nets = []
    for r in out:
        dst = r.get("dst", "")
        if dst and dst != "default" and not dst.startswith(("ff", "fe80")):
            try:
                nets.append(ipaddress.ip_network(dst, strict=False))
            except ValueError:
                pass
    return nets


def free_subnet(prefixlen: int = 24) -> str:
    """A subnet of 10.200.0.0/14 + 10.204.0.0/15 (test range, not the plugin's auto pool) that
    no host route covers."""
    taken = host_routes()
    for _ in range(2000):
        n = next(_subnets) % (6 * 256)
        base = ipaddress.ip_network(f"10.{200 + n // 256}.{n % 256}.0/24")
        net = next(base.subnets(new_prefix=prefixlen)) if prefixlen > 24 else base
        if not any(net.overlaps(t) for t in taken if t.version == 4):
            return str(net)
    raise RuntimeError("no free test subnet")


def free_subnet6() -> str:
    return f"fd70:6201:{random.randrange(0x100, 0xFEFF):x}::/64"


def ifaces() -> dict[str, dict]:
    return {l["ifname"]: l for l in json.loads(sh("ip", "-j", "-d", "link", "show").stdout)}


def our_links() -> set[str]:
    return {n for n in ifaces() if n.startswith((f"{IFPREFIX}-", f"{IFPREFIX}h", f"{IFPREFIX}c"))}


TABLE = nftrules.table_name(CHAIN_PREFIX)
# our one static rule in iptables' FORWARD, as iptables -S prints it (args for -D, and the line)
STATIC = [
    "FORWARD",
    "-m",
    "mark",
    "--mark",
    "0x1000000/0x1000000",
    "-m",
    "comment",
    "--comment",
    CHAIN_PREFIX,
    "-j",
    "ACCEPT",
]
STATIC_LINE = "-A " + " ".join(STATIC)


def our_table() -> nftrules.Listed:
    """Our nftables table as the kernel holds it."""
    res = sh(*NFT, "-j", "list", "table", "inet", TABLE, check=False)
    if res.returncode != 0:
        return nftrules.Listed()
    return nftrules.parse_listing([o for o in json.loads(res.stdout)["nftables"] if "metainfo" not in o])


def elements(name: str) -> dict:
    return our_table().elements.get(name, {})


def our_rules() -> list[str]:
    """Every iptables rule naming our prefix (the old chains, the static rule), and what the state
    puts in our nftables table (the networks' chains, every element)."""
    rules = []
    for tool in ("iptables-save", "ip6tables-save"):
        for line in sh(tool).stdout.splitlines():
            if CHAIN_PREFIX in line and line.startswith("-A"):
                rules.append(f"{tool}: {line}")
    table = our_table()
    rules += [f"nft chain {c}" for c in table.chains if c not in nftrules.CHAINS]
    rules += [f"nft {s}: {nftrules.show(k, v)}" for s, e in table.elements.items() for k, v in e.items()]
    return sorted(rules)


def state_rows() -> dict[str, list]:
    if not os.path.exists(STATE_DB):
        return {}
    conn = sqlite3.connect(f"file:{STATE_DB}?mode=ro", uri=True, timeout=10)
    try:
        return {
            t: sorted(r[0] for r in conn.execute(f"SELECT {k} FROM {t}"))
            for t, k in (
                ("networks", "id"),
                ("endpoints", "id"),
                ("pools", "subnet"),
                ("leases", "pool_id || ' ' || addr"),
                ("dns", "network_id"),
            )
        }
    finally:
        conn.close()


def snapshot() -> dict:
    return {"links": sorted(our_links()), "rules": our_rules(), "state": state_rows()}


class DockerEnv:
    """Creates networks and containers named <prefix>-..., and removes them all at the end."""

    def __init__(self):
        self.prefix = f"pbt{uuid.uuid4().hex[:6]}"
        self._n = itertools.count()
        self.networks: list[str] = []
        self.containers: list[str] = []

    def name(self, kind: str) -> str:
        return f"{self.prefix}-{kind}{next(self._n)}"

    def network(self, *args: str, driver: str = PLUGIN, ipam: str | None = PLUGIN, name: str | None = None) -> str:
        name = name or self.name("net")
        argv = ["network", "create", "-d", driver]
        if ipam:
            argv += ["--ipam-driver", ipam]
        self.networks.append(name)
        docker(*argv, *args, name)
        return name

    def try_network(self, *args: str, **kw) -> tuple[bool, str]:
        try:
            return True, self.network(*args, **kw)
        except CommandFailed as e:
            return False, str(e)

    def run(
        self, network: str | None, *args: str, name: str | None = None, cmd: tuple[str, ...] = ("sleep", "600")
    ) -> str:
        name = name or self.name("c")
        self.containers.append(name)
        # busybox's sleep as PID 1 ignores SIGTERM: without a short stop timeout each stop (and a
        # dockerd shutdown) waits 10 s, and 20.10's shutdown then overruns its deadline and leaves
        # the plugin's task behind ("Force shutdown daemon")
        argv = ["run", "-d", "--name", name, "--dns", "127.0.0.1", "--stop-timeout", "1"]
        if network:
            argv += ["--network", network]
        docker(*argv, *args, IMAGE, *cmd)
        return name

    def run_once(self, network: str, *cmd: str, args: tuple[str, ...] = (), check: bool = True):
        return sh(
            "docker",
            "run",
            "--rm",
            "--network",
            network,
            "--dns",
            "127.0.0.1",
            *args,
            IMAGE,
            *cmd,
            check=check,
            timeout=60,
        )

    def exec(self, container: str, *cmd: str, check: bool = True):
        return sh("docker", "exec", container, *cmd, check=check, timeout=60)

    def ip(self, container: str, network: str, v6: bool = False) -> str:
        key = "GlobalIPv6Address" if v6 else "IPAddress"
        return docker("inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{network}").{key}}}}}', container)

    def network_id(self, network: str) -> str:
        return docker("network", "inspect", "-f", "{{.Id}}", network)

    def cleanup(self) -> list[str]:
        errors = []
        if self.containers:
            # a few at a time: dockerd 20.10 removing 50 containers of one network at once can
            # lose an endpoint count update (moby#42119), and the network then cannot be removed
            # until dockerd restarts
            for i in range(0, len(self.containers), 8):
                res = sh("docker", "rm", "-f", *self.containers[i : i + 8], check=False)
                if res.returncode != 0 and "No such container" not in res.stderr:
                    errors.append(res.stderr.strip())
        for net in reversed(self.networks):
            deadline = time.monotonic() + 120
            while True:
                res = sh("docker", "network", "rm", net, check=False)
                # After a plugin outage, or 50 containers removed at once, dockerd finishes
                # deleting endpoints on its own schedule (its calls to the plugin back off; its
                # endpoint count races, "Fixing inconsistent endpoint_cnt", then stale
                # sandboxes are removed a minute later); give it that time, then report.
                if "has active endpoints" not in res.stderr or time.monotonic() > deadline:
                    break
                time.sleep(1)
            if res.returncode != 0 and "not found" not in res.stderr:
                errors.append(res.stderr.strip())
        return errors


def docker_ready() -> bool:
    return sh("docker", "info", check=False, timeout=30).returncode == 0


def plugin_enabled() -> bool:
    res = sh("docker", "plugin", "inspect", "-f", "{{.Enabled}}", MANAGED, check=False)
    return res.stdout.strip() == "true"


def wait_plugin_socket(timeout: float = 20) -> bool:
    return wait_for(lambda: os.path.exists(f"/run/docker/plugins/{PLUGIN}.sock"), timeout)


def _alive(pid: str) -> bool:
    """False once the process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def restart_dockerd(kill_signal: str = "TERM") -> None:
    """Restart the engine the way it was started (systemd, or a background dockerd)."""
    if (
        os.path.isdir("/run/systemd/system")
        and sh("systemctl", "is-active", "docker", check=False).stdout.strip() == "active"
    ):
        sh("systemctl", "restart", "docker", timeout=120)
    else:
        pid = sh("pidof", "dockerd").stdout.split()[0]
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[:-1]
        sh("kill", f"-{kill_signal}", pid)
        if not wait_for(lambda: not _alive(pid), 60):
            raise RuntimeError("dockerd did not stop")
        # After SIGKILL the pid files stay; a zombie with such a pid (dockerd's, or that of the
        # containerd it supervises, which dies with it) makes the new dockerd refuse or hang.
        exec_root = _flag(cmdline, "--exec-root", "/var/run/docker")
        for pidfile in (_flag(cmdline, "--pidfile", "/var/run/docker.pid"), f"{exec_root}/containerd/containerd.pid"):
            try:
                old = open(pidfile).read().strip()
            except FileNotFoundError:
                continue
            if wait_for(lambda: not _alive(old), 30):
                os.unlink(pidfile)
        # detached (setsid, reparented to init) so that it outlives the test run; an engine in a
        # tree of its own is started by the command that started it (scripts/engine.sh daemon)
        argv = shlex.split(os.environ.get("PYBRIDGE_DOCKERD_COMMAND", "")) or [c.decode() for c in cmdline]

        def start() -> None:
            sh("sh", "-c", 'setsid "$@" >>/var/log/pybridge-dockerd.log 2>&1 </dev/null &', "sh", *argv)

        logged = os.path.getsize(DOCKERD_LOG) if os.path.exists(DOCKERD_LOG) else 0
        # a bundle containerd failed to delete (.ID) makes the next start of ID fail, and 20.10 panic
        sh(
            "bash",
            "-c",
            '. "$1"; pb_clear_dead_bundles "$2"',
            "bash",
            os.path.join(REPO, "scripts", "lib.sh"),
            exec_root,
            check=False,
        )
        start()
        if not wait_for(lambda: docker_ready() or _panicked_on_a_plugin_task(logged), 60, 0.5):
            raise RuntimeError("dockerd did not come back")
        if not docker_ready():
            # dockerd 20.10 after SIGKILL: a managed plugin's task from before is still there
            # ("failed to enable plugin": "... already exists", "failed to start shim: mkdir ...:
            # file exists"), its client stays nil, and the network controller's first call to it
            # panics, at every start. The engine is brought back (its orphaned plugin shims and
            # their task state cleared, as scripts/lib.sh does before any start) for the tests
            # after this one; this one fails with what happened.
            sh(
                "bash",
                "-c",
                '. "$1"; pb_clear_stale_plugin_tasks "$2"',
                "bash",
                os.path.join(REPO, "scripts", "lib.sh"),
                exec_root,
                check=False,
            )
            start()
            wait_for(docker_ready, 60, 0.5)
            raise RuntimeError(
                "dockerd panicked at start: a managed plugin's task from before the kill "
                "still existed (failed to enable plugin ... already exists); stale plugin "
                "tasks killed, dockerd started again"
            )
        return
    if not wait_for(docker_ready, 60, 0.5):
        raise RuntimeError("dockerd did not come back")


DOCKERD_LOG = "/var/log/pybridge-dockerd.log"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _flag(cmdline: list[bytes], name: str, default: str) -> str:
    """The value of dockerd's `--name VALUE` or `--name=VALUE` in its command line."""
    args = [c.decode() for c in cmdline]
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def _panicked_on_a_plugin_task(offset: int) -> bool:
    """Has dockerd died at start with the panic that follows 'failed to enable plugin ...
    already exists' (in its log after `offset`)?"""
    if sh("pidof", "dockerd", check=False).returncode == 0:
        return False
    with open(DOCKERD_LOG, "rb") as f:
        f.seek(offset)
        tail = f.read().decode("utf-8", "replace")
    return "failed to enable plugin" in tail and "panic:" in tail


def recover_from_engine_deadlock() -> str:
    """dockerd 20.10 before 20.10.27 can deadlock in libnetwork when containers come and go at
    once (getSvcRecords against processEndpointDelete, moby#46661, fixed by moby/libnetwork#2679;
    Debian 12 ships 20.10.24): every network call then hangs for good. When `docker network ls`
    does not answer, its goroutines are dumped; if they show that deadlock, dockerd is restarted
    so that the tests after this one run, and what was seen is returned (the test fails with it).
    Anything else that hangs is reported the same way, without a restart."""
    if sh("timeout", "20", "docker", "network", "ls", check=False, timeout=30).returncode == 0:
        return ""
    pid = sh("pidof", "dockerd").stdout.split()[0]
    dumps = _flag(open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[:-1], "--exec-root", "/var/run/docker")
    before = set(os.listdir(dumps))
    sh("kill", "-USR1", pid)
    wait_for(lambda: any(n.startswith("goroutine-stacks") for n in set(os.listdir(dumps)) - before), 10)
    new = sorted(n for n in set(os.listdir(dumps)) - before if n.startswith("goroutine-stacks"))
    stacks = open(os.path.join(dumps, new[-1])).read() if new else ""
    if "processEndpointDelete" in stacks and "getSvcRecords" in stacks:
        restart_dockerd("KILL")
        wait_plugin_socket(60)
        return (
            f"dockerd deadlocked in libnetwork (moby#46661, fixed in 20.10.27): goroutines in "
            f"{dumps}/{new[-1]}; dockerd restarted"
        )
    return f"dockerd stopped answering; goroutines in {dumps}/{new[-1] if new else '(no dump)'}"


def plugin_pids() -> list[str]:
    """The test plugin's processes (gunicorn arbiter and worker), found by the instance name
    baked into its rootfs."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/root/etc/pybridge-instance") as f:
                if f.read().strip() == f"{PLUGIN}-plugin":
                    out.append(pid)
        except OSError:
            continue
    return out


def free_port(low: int = 20000, high: int = 39000, count: int = 1) -> int:
    """The first of `count` consecutive host ports that no process here listens on (TCP or UDP)
    and no mapping of the test plugin uses: checked, not guessed."""
    import socket

    used = sh("ss", "-Htuan").stdout
    ours = "\n".join(our_rules())

    def free(port: int) -> bool:
        if f":{port} " in used or f"--dport {port} " in ours:
            return False
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True

    for _ in range(200):
        port = random.randrange(low, high - count)
        if all(free(port + i) for i in range(count)):
            return port
    raise RuntimeError("no free host port")


def static_program(directory, name: str, source: str) -> str:
    """A C program built statically (for the busybox image, which has no libc), its path."""
    (directory / f"{name}.c").write_text(source)
    sh("gcc", "-static", "-O2", "-o", str(directory / name), str(directory / f"{name}.c"))
    return str(directory / name)


def gateway_of(env: "DockerEnv", network: str) -> str:
    """The IPv4 gateway address on a test network's bridge."""
    out = sh("ip", "-4", "-o", "addr", "show", "dev", f"{IFPREFIX}-{env.network_id(network)[:12]}").stdout
    return out.split()[3].split("/")[0]


def sandbox(container: str) -> str:
    """A path to a running container's network namespace. Not its SandboxKey: an engine in a
    mount namespace of its own (scripts/engine.sh) mounts that file where the host cannot see."""
    return f"/proc/{docker('inspect', '-f', '{{.State.Pid}}', container)}/ns/net"
