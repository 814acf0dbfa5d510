"""End-to-end fixtures: a real dockerd with the test plugin installed by scripts/test.sh.

When PYBRIDGE_E2E=1 (set by scripts/test.sh) a missing engine or plugin fails the tests;
otherwise they are skipped, so unit tests still run on a machine without Docker.
"""

import os

import pytest

from .dockerenv import DockerEnv, MANAGED, docker_ready, plugin_enabled, snapshot, wait_for


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
    errors = env.cleanup()
    after = wait_for(lambda: (lambda s: s if s == before else None)(snapshot()), 10) or snapshot()
    assert not errors, f"cleanup failed: {errors}"
    assert after == before, f"left behind after cleanup:\nbefore={before}\nafter={after}"
