"""A pytest plugin for running docker-py's own network integration tests (docker/docker-py,
tests/integration/api_network_test.py and models_networks_test.py) with pybridge as network
driver and IPAM driver: every network those tests create with the default driver (or "bridge")
and the default IPAM gets PYBRIDGE_DOCKERPY_DRIVER (default pybridge) for both. Networks that
name another driver (overlay, in the swarm tests) are left alone.

Two of those tests assert the driver's own name ("bridge", IPAM "default"). With
PYBRIDGE_DOCKERPY_NAMES=original, inspecting a swapped network shows the names the test asked
for, so that the rest of their assertions (subnet, ip-range, gateway, aux addresses) are checked
too; the swap itself is checked by inspecting through the Docker API directly.
scripts/docker-py-tests.sh loads it; nothing of docker-py is kept in this repository."""

import os

import docker.api.network
from docker.types import IPAMConfig

DRIVER = os.environ.get("PYBRIDGE_DOCKERPY_DRIVER", "pybridge")
SWAPPED: dict[str, tuple[str, str]] = {}  # network ID -> (driver, IPAM driver) asked for


def pytest_configure(config):
    create, inspect = (
        docker.api.network.NetworkApiMixin.create_network,
        docker.api.network.NetworkApiMixin.inspect_network,
    )

    def create_network(self, name, driver=None, options=None, ipam=None, *args, **kwargs):
        asked = (driver or "bridge", (ipam or {}).get("Driver") or "default")
        if asked[0] != "bridge" or asked[1] != "default":
            return create(self, name, driver, options, ipam, *args, **kwargs)
        ipam = IPAMConfig(driver=DRIVER, pool_configs=(ipam or {}).get("Config"), options=(ipam or {}).get("Options"))
        result = create(self, name, DRIVER, options, ipam, *args, **kwargs)
        actual = inspect(self, result["Id"])
        assert (actual["Driver"], actual["IPAM"]["Driver"]) == (DRIVER, DRIVER), actual
        SWAPPED[result["Id"]] = asked
        return result

    def inspect_network(self, net_id, *args, **kwargs):
        result = inspect(self, net_id, *args, **kwargs)
        if os.environ.get("PYBRIDGE_DOCKERPY_NAMES") == "original" and result.get("Id") in SWAPPED:
            result["Driver"], result["IPAM"]["Driver"] = SWAPPED[result["Id"]]
        return result

    docker.api.network.NetworkApiMixin.create_network = create_network
    docker.api.network.NetworkApiMixin.inspect_network = inspect_network
