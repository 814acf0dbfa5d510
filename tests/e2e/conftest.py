"""End-to-end fixtures: a real dockerd with the test plugin installed by scripts/test.sh.

When PYBRIDGE_E2E=1 (set by scripts/test.sh) a missing engine or plugin fails the tests;
otherwise they are skipped, so unit tests still run on a machine without Docker.
"""

import os
import uuid

import pytest

from .dockerenv import (
    DockerEnv,
    MANAGED,
    docker_ready,
    plugin_enabled,
    recover_from_engine_deadlock,
    sh,
    snapshot,
    wait_for,
)


@pytest.fixture(scope="session")
def engine():
    problem = None
    if os.geteuid() != 0:
        problem = "end-to-end tests need root"
    elif not docker_ready():
        problem = "no Docker engine answers"
    elif not plugin_enabled():
        problem = f"plugin {MANAGED} is not installed and enabled (run scripts/test.sh)"
    if problem:
        if os.environ.get("PYBRIDGE_E2E") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    return True


@pytest.fixture
def dk(engine):
    """Docker helper for one test; checks afterwards that nothing of ours was left behind."""
    before = snapshot()
    env = DockerEnv()
    yield env
    engine_deadlock = recover_from_engine_deadlock()
    errors = env.cleanup()
    assert not engine_deadlock, engine_deadlock
    after = wait_for(lambda: (lambda s: s if s == before else None)(snapshot()), 10) or snapshot()
    assert not errors, f"cleanup failed: {errors}"
    assert after == before, f"left behind after cleanup:\nbefore={before}\nafter={after}"


@pytest.fixture
def neighbour():
    """A namespace plugged into a bridge as a machine on the same LAN segment would be (as on a
    bridge a user adopted together with its uplink)."""
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"pbt-lan-{tag}", f"pbtl{tag}", f"pbtm{tag}"
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
    sh("ip", "link", "set", ns_if, "netns", ns)
    sh("ip", "-n", ns, "link", "set", ns_if, "up")

    def plug(bridge: str, address: str, gw: str) -> tuple[str, str]:
        sh("ip", "link", "set", host_if, "master", bridge, "up")
        sh("ip", "-n", ns, "addr", "add", address, "dev", ns_if)
        sh("ip", "-n", ns, "route", "add", f"{gw}/32", "dev", ns_if)
        return ns, ns_if

    try:
        yield plug
    finally:
        sh("ip", "link", "del", host_if, check=False)
        sh("ip", "netns", "del", ns, check=False)
