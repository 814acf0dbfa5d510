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
