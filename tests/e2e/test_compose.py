"""Compose with pybridge as network driver and IPAM driver (issue 10, item 5): docker-compose 1.29
(Debian 12's package) and the compose v2 plugin (Debian 13's and unstable's `docker-compose`
package; CI finds it in the second engine's root, scripts/engine.sh). Services find each other
by name, a published port answers, and `down` leaves nothing (the dk fixture checks links,
rules, state rows and leases)."""

import glob
import os
import shutil
import uuid

import pytest

from .dockerenv import IMAGE, PLUGIN, ENGINE_TREE, docker, free_port, free_subnet, sh, wait_for
from .test_ports import SERVER, fetch

PLUGIN_PATHS = (
    "/usr/libexec/docker/cli-plugins/docker-compose",
    "/usr/lib/docker/cli-plugins/docker-compose",
    "/usr/local/lib/docker/cli-plugins/docker-compose",
)


def implementations() -> dict[str, list[str]]:
    """The compose commands here, by major version: {'v1': argv, 'v2': argv}."""
    found: dict[str, list[str]] = {}
    candidates = [[p] for p in filter(None, [shutil.which("docker-compose")])]
    # the second engine's root (scripts/engine.sh prepare) has Debian unstable's compose v2
    roots = ["", *([ENGINE_TREE] if ENGINE_TREE else []), *sorted(glob.glob("/var/lib/pybridge-engines/*/"))]
    roots = [r.rstrip("/") for r in roots]
    candidates += [[root + p] for root in roots for p in PLUGIN_PATHS if os.access(root + p, os.X_OK)]
    for argv in candidates:
        out = sh(*argv, "version", check=False).stdout
        if "version 1." in out:
            found.setdefault("v1", argv)
        elif "version v2." in out or "version 2." in out:
            found.setdefault("v2", argv)
    return found


FOUND = implementations()

COMPOSE = """version: "2.4"
services:
  web:
    image: {image}
    command: {server}
    dns: 127.0.0.1
    ports: ["127.0.0.1:{port}:80"]
    networks: [app]
  client:
    image: {image}
    command: sleep 600
    dns: 127.0.0.1
    networks: [app]
networks:
  app:
    driver: {driver}
    ipam:
      driver: {driver}
      config:
        - subnet: {subnet}
"""


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_compose_up_names_ports_and_down_leaves_nothing(dk, tmp_path, kind):
    if not FOUND:
        pytest.fail("no docker-compose here (scripts/test.sh installs Debian's package)")
    if kind not in FOUND:
        pytest.skip(f"no compose {kind} here (found {sorted(FOUND)})")
    compose, project = FOUND[kind], f"pbt{uuid.uuid4().hex[:8]}"
    port, subnet = free_port(), free_subnet()
    server = "[" + ", ".join(f'"{a}"' for a in SERVER) + "]"
    (tmp_path / "docker-compose.yml").write_text(
        COMPOSE.format(image=IMAGE, server=server, port=port, driver=PLUGIN, subnet=subnet)
    )

    def run(*a, check=True):
        return sh(*compose, "-p", project, "-f", str(tmp_path / "docker-compose.yml"), *a, check=check, timeout=180)

    try:
        run("up", "-d")
        net = f"{project}_app"
        assert docker("network", "inspect", "-f", "{{.Driver}} {{.IPAM.Driver}}", net) == f"{PLUGIN} {PLUGIN}"
        assert docker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", net) == subnet
        client = docker(
            "ps",
            "-q",
            "--filter",
            f"label=com.docker.compose.project={project}",
            "--filter",
            "label=com.docker.compose.service=client",
        )
        assert client, "the client service is not running"
        res = sh("docker", "exec", client, "ping", "-c1", "-W3", "web", check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert wait_for(lambda: fetch("127.0.0.1", port) == "pong", 15), "the published port does not answer"
    finally:
        down = run("down", check=False)
    assert down.returncode == 0, down.stderr
    assert docker("network", "ls", "-q", "--filter", f"name={project}_app") == ""
