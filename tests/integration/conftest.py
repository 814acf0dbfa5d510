"""Integration tests: the real kernel adapters, as root, inside throwaway network namespaces."""

import os
import subprocess
import uuid

import pytest


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        if os.environ.get("PYBRIDGE_E2E") == "1":
            pytest.fail("integration tests need root")
        pytest.skip("integration tests need root")
    name = f"pbti-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def run(netns, *argv):
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, check=True).stdout
