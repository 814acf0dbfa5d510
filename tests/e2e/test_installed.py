"""The plugin that scripts/install.sh installs (pybridge-plugin) answers to both driver names.

Skipped when it is not installed; .ci/run installs it before the suite runs."""

import pytest

from .dockerenv import docker, free_subnet, sh


@pytest.mark.parametrize("name", ["pybridge", "pybridge:latest"])
def test_installed_plugin_serves_short_and_tagged_names(dk, name):
    if (
        sh("docker", "plugin", "inspect", "-f", "{{.Enabled}}", "pybridge-plugin:latest", check=False).stdout.strip()
        != "true"
    ):
        pytest.skip("pybridge-plugin is not installed")
    net = dk.network("--subnet", free_subnet(), driver=name, ipam=name)
    web = dk.run(net)
    res = dk.run_once(net, "ping", "-c1", "-W3", web, check=False)
    assert res.returncode == 0, res.stderr
    assert docker("network", "inspect", "-f", "{{.Driver}}", net) == name
