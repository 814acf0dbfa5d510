"""What the plugin can touch on the host: least privilege, checked on the running plugin."""

import os
import stat

from .dockerenv import plugin_pids


def test_the_plugin_sees_only_net_sysctls_of_the_host(engine):
    """Issue 8, item 11: the plugin mounted all of the host's /proc/sys writable; it needs
    /proc/sys/net only."""
    pids = plugin_pids()
    assert pids, "the test plugin's processes were not found"
    root = f"/proc/{pids[0]}/root"
    assert os.path.exists(f"{root}/host/proc/sys/net/ipv4/ip_forward")
    assert not os.path.exists(f"{root}/host/proc/sys/kernel")
    mounts = open(f"/proc/{pids[0]}/mountinfo").read().splitlines()
    host_sys = [m.split()[4] for m in mounts if m.split()[4].startswith("/host/proc/sys")]
    assert host_sys == ["/host/proc/sys/net"], host_sys


def _writable_by(pid: str, directory: str) -> bool:
    """Whether a file can be made in `directory` as the plugin process `pid` sees it."""
    probe = f"/proc/{pid}/root{directory}/pybridge-write-probe"
    try:
        open(probe, "w").close()
        return True
    except OSError:
        return False
    finally:
        if os.path.exists(probe):
            os.unlink(probe)


def _mounts(pid: str) -> list[list[str]]:
    return [m.split() for m in open(f"/proc/{pid}/mountinfo").read().splitlines()]


def test_of_the_hosts_run_only_the_system_bus_is_mounted_and_read_only(engine):
    """Issue 11 mounted the host's whole /run (read-only) for the system bus socket; issue 20,
    item 2: only /run/dbus (the test plugin's is the test bus's directory), and nothing in it can
    be written from the plugin."""
    pids = plugin_pids()
    assert pids
    mounts = _mounts(pids[0])
    assert not [m for m in mounts if m[4] == "/host/run"], "the host's whole /run is mounted"
    bus = [m for m in mounts if m[4] == "/host/run/dbus"]
    assert bus and "ro" in bus[0][5].split(","), bus
    assert not _writable_by(pids[0], "/host/run/dbus"), "the plugin's /host/run/dbus is writable"


def _unix_sockets_under(root: str) -> set[str]:
    """Every unix socket file the plugin's mount namespace shows (its /proc and /sys left out)."""
    found = set()
    for top, dirs, files in os.walk(root, followlinks=False):
        rel = top[len(root) :] or "/"
        if rel.startswith(("/proc", "/sys", "/dev")):
            dirs[:] = []
            continue
        for f in files:
            path = os.path.join(top, f)
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    found.add(path[len(root) :])
            except OSError:
                continue
    return found


def test_from_inside_the_plugin_no_socket_of_the_host_but_dockers_and_the_bus_can_be_reached():
    """Issue 20, item 2: read-only mounts stop writes, not connect(): with the host's /run
    mounted, the plugin (uid 0) could connect to containerd's socket, systemd's private bus and
    any other root socket under /run. A socket the test makes under the host's /run stands for
    them all (containerd's and systemd's are not on every machine), and those are checked by
    name too: none is reachable from inside the running plugin, by connect() in its mount
    namespace. What is: Docker's API socket (events, for the DNS), the system bus, the plugin
    sockets' directory (where it publishes its own) and its own sockets."""
    import socket
    import subprocess

    pids = plugin_pids()
    assert pids
    probe = "/run/pybridge-test-probe.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(probe):
        os.unlink(probe)
    server.bind(probe)
    server.listen(1)
    try:
        candidates = [
            probe,
            "/run/containerd/containerd.sock",
            "/run/docker/containerd/containerd.sock",
            "/run/systemd/private",
            "/run/systemd/notify",
            "/run/dbus/system_bus_socket",
        ]
        script = (
            "import socket, sys\n"
            "for p in sys.argv[1:]:\n"
            "    for path in (p, '/host' + p):\n"
            "        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            "        try:\n"
            "            s.connect(path); print('REACHED', path)\n"
            "        except OSError as e:\n"
            "            print('no', path, e.errno)\n"
            "        finally:\n"
            "            s.close()\n"
        )
        res = subprocess.run(
            ["nsenter", "-t", pids[0], "-m", "--", "python3", "-c", script, *candidates],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        reached = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("REACHED")]
        assert reached == [], f"reachable from inside the plugin: {reached}"
        sockets = _unix_sockets_under(f"/proc/{pids[0]}/root")
        allowed = {"/run/pybridge/docker.sock", "/host/run/dbus/system_bus_socket"}
        others = {
            s
            for s in sockets
            if s not in allowed and not s.startswith(("/host/run-docker-plugins/", "/run/docker/plugins/"))
        }
        assert not others, f"sockets of the host visible inside the plugin: {sorted(others)}"
    finally:
        server.close()
        os.unlink(probe)


def test_the_plugin_holds_only_the_capabilities_it_uses():
    """Issue 20, item 2: a managed plugin gets Docker's default container capabilities (chown,
    dac_override, setuid, kill, mknod, ...) plus those config.json names. The plugin keeps
    net_admin (links, addresses, nf_tables), net_raw (iptables, SO_BINDTODEVICE) and
    net_bind_service (DNS on port 53), in every process."""
    want = (1 << 12) | (1 << 13) | (1 << 10)  # net_admin, net_raw, net_bind_service
    pids = plugin_pids()
    assert len(pids) >= 2, pids  # gunicorn's arbiter and its worker
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
        for field in ("CapEff", "CapPrm", "CapBnd"):
            assert int(status[field], 16) == want, (pid, field, status[field])
        assert int(status["CapInh"], 16) == 0 and int(status["CapAmb"], 16) == 0, status


def test_the_running_plugins_sockets_are_owner_only():
    """Only root may talk to the plugin: its sockets (the managed plugin's own, and the
    short-name socket it publishes) are 0600."""
    from .dockerenv import PLUGIN

    path = f"/run/docker/plugins/{PLUGIN}.sock"
    assert os.path.exists(path), path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, oct(os.stat(path).st_mode)


def test_the_etcd_tls_directory_is_mounted_read_only(engine):
    """Issue 22, item 2: etcd's CA and this host's client certificate and key come from a host
    directory the plugin can read and never change."""
    pids = plugin_pids()
    assert pids
    tls = [m for m in _mounts(pids[0]) if m[4] == "/etc/pybridge/etcd-tls"]
    assert tls and "ro" in tls[0][5].split(","), tls
    assert not _writable_by(pids[0], "/etc/pybridge/etcd-tls"), "the plugin's etcd-tls directory is writable"
