"""What the plugin can touch on the host: least privilege, checked on the running plugin."""

import os

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


def test_the_hosts_run_is_mounted_read_only(engine):
    """Issue 11: the host's /run is there for the system bus socket (systemd-resolved), and
    nothing in it can be written from the plugin."""
    pids = plugin_pids()
    assert pids
    mounts = [m.split() for m in open(f"/proc/{pids[0]}/mountinfo").read().splitlines()]
    run = [m for m in mounts if m[4] == "/host/run"]
    assert run and "ro" in run[0][5].split(","), run
    probe = f"/proc/{pids[0]}/root/host/run/pybridge-write-probe"
    try:
        open(probe, "w").close()
        written = True
    except OSError:
        written = False
    finally:
        if os.path.exists(probe):
            os.unlink(probe)
    assert not written, "the plugin's /host/run is writable"
