"""State survives the plugin being disabled and enabled, and dockerd restarting.

dockerd replays neither CreateNetwork nor RequestPool: the plugin restores bridges, addresses
and rules from its own state."""

import os

import pytest

from .dockerenv import (
    MANAGED,
    PLUGIN,
    STATE_DB,
    docker,
    free_subnet,
    free_subnet6,
    ifaces,
    restart_dockerd,
    sh,
    wait_for,
    wait_plugin_socket,
)


def ping(dk, network, target):
    return dk.run_once(network, "ping", "-c1", "-W3", target, check=False)


def test_plugin_disable_force_and_enable_keep_networks_usable(dk):
    subnet = free_subnet()
    net = dk.network("--subnet", subnet)
    web = dk.run(net)
    bridge = f"pt-{dk.network_id(net)[:12]}"
    docker("plugin", "disable", "-f", MANAGED)
    try:
        assert not os.path.exists(f"/run/docker/plugins/{PLUGIN}.sock"), "socket left behind by a stopped plugin"
    finally:
        docker("plugin", "enable", MANAGED)
    assert wait_plugin_socket()
    assert bridge in ifaces()
    res = ping(dk, net, web)
    assert res.returncode == 0, res.stderr
    # the address the running container holds is still leased: a new one gets another
    other = dk.run(net)
    assert dk.ip(other, net) != dk.ip(web, net)


def test_plugin_restore_recreates_a_deleted_bridge(dk):
    net = dk.network("--subnet", free_subnet())
    bridge = f"pt-{dk.network_id(net)[:12]}"
    docker("plugin", "disable", "-f", MANAGED)
    try:
        os.system(f"ip link del {bridge}")
    finally:
        docker("plugin", "enable", MANAGED)
    assert wait_plugin_socket()
    assert wait_for(lambda: bridge in ifaces(), 10)
    web = dk.run(net)
    assert ping(dk, net, web).returncode == 0


@pytest.mark.skipif(
    os.environ.get("PYBRIDGE_TEST_NO_DOCKERD_RESTART") == "1", reason="PYBRIDGE_TEST_NO_DOCKERD_RESTART=1"
)
@pytest.mark.parametrize("signal", ["TERM", "KILL"])
def test_dockerd_restart_keeps_networks_and_restart_always_containers(dk, signal):
    net = dk.network("--subnet", free_subnet())
    web = dk.run(net, "--restart", "always")
    restart_dockerd(signal)
    assert wait_plugin_socket(30)
    assert wait_for(lambda: docker("inspect", "-f", "{{.State.Running}}", web, check=False) == "true", 60)
    res = ping(dk, net, web)
    assert res.returncode == 0, res.stderr
    assert dk.ip(web, net) in res.stdout


def remembered() -> set[str]:
    """The containers whose addresses the plugin remembers (owners rows)."""
    import sqlite3

    db = sqlite3.connect(f"file:{STATE_DB}?mode=ro", uri=True)
    try:
        return {c for (c,) in db.execute("SELECT container FROM owners")}
    finally:
        db.close()


@pytest.mark.skipif(
    os.environ.get("PYBRIDGE_TEST_NO_DOCKERD_RESTART") == "1", reason="PYBRIDGE_TEST_NO_DOCKERD_RESTART=1"
)
@pytest.mark.parametrize("signal", ["TERM", "KILL"])
def test_containers_that_restart_keep_their_addresses_across_dockerd_restarts(dk, signal):
    """Issue 10, item 4. Before: 10.x.x.2/.3 came back as .4/.5. dockerd before 29 does not say
    which container an address request is for: on a network where several restart at once
    they get their addresses back as a set (as with Docker's own IPAM); alone, exactly."""
    shared = dk.network("--subnet", free_subnet())
    alone = dk.network("--subnet", free_subnet(), "--ipv6", "--subnet", free_subnet6())
    a, b = dk.run(shared, "--restart", "always"), dk.run(shared, "--restart", "always")
    plain = dk.run(shared)  # no policy: stays down, forgotten
    # (not unless-stopped: dockerd 28.5 does not start those again after SIGKILL, built-in driver too)
    d = dk.run(alone, "--restart", "on-failure")
    ids = {docker("inspect", "-f", "{{.Id}}", c) for c in (a, b, d)}
    assert wait_for(lambda: remembered() >= ids, 20), "the plugin never learned the containers' addresses"
    before = {c: dk.ip(c, shared) for c in (a, b, plain)}
    d4, d6 = dk.ip(d, alone), dk.ip(d, alone, v6=True)
    restart_dockerd(signal)
    assert wait_plugin_socket(30)
    running = lambda c: docker("inspect", "-f", "{{.State.Running}}", c, check=False) == "true"  # noqa: E731
    assert wait_for(lambda: all(map(running, (a, b, d))), 60)
    assert (dk.ip(d, alone), dk.ip(d, alone, v6=True)) == (d4, d6)
    assert {dk.ip(a, shared), dk.ip(b, shared)} == {before[a], before[b]}
    if int(docker("version", "-f", "{{.Server.Version}}").split(".")[0]) >= 29:  # names the container
        assert (dk.ip(a, shared), dk.ip(b, shared)) == (before[a], before[b])
    assert not running(plain)
    new = dk.run(shared)
    assert dk.ip(new, shared) not in (before[a], before[b])
    assert ping(dk, shared, a).returncode == 0 and ping(dk, alone, d).returncode == 0


def test_a_malformed_state_row_does_not_keep_the_plugin_from_starting(dk):
    """Issue 8, item 11: one unreadable row made restore raise, and the plugin never came up."""
    import json
    import sqlite3

    good, bad = dk.network("--subnet", free_subnet()), dk.network("--subnet", free_subnet())
    bad_id = dk.network_id(bad)
    docker("plugin", "disable", "-f", MANAGED)
    try:
        db = sqlite3.connect(STATE_DB, isolation_level=None)
        db.execute("UPDATE networks SET doc = '{damaged' WHERE id = ?", (bad_id,))
        db.close()
    finally:
        docker("plugin", "enable", MANAGED)
    assert wait_plugin_socket()
    web = dk.run(good)
    assert ping(dk, good, web).returncode == 0
    sock = f"/run/docker/plugins/{PLUGIN}.sock"
    doctor = lambda: json.loads(sh("curl", "-s", "--unix-socket", sock, "http://x/pybridge/doctor").stdout)  # noqa: E731
    assert any(f"networks row {bad_id[:12]}" in p and "unreadable" in p for p in doctor()["problems"])
    docker("network", "rm", bad)  # dockerd can still remove it
    dk.networks.remove(bad)
    sh("curl", "-s", "-X", "POST", "--unix-socket", sock, "http://x/pybridge/gc")
    assert not any(bad_id[:12] in p for p in doctor()["problems"])
    assert f"pt-{bad_id[:12]}" not in ifaces()
