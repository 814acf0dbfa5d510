"""Issue 19, item 6: the README's multi-host example, as written, on the rig. Docker's resolver
(127.0.0.11) knows only its own engine's containers and forwards other names to the container's
external servers, which a remote driver cannot set on Linux: so the recipe is `--dns <gateway>`
(CLI) or `dns:` (Compose), and this proves it, and that without it the name is not found."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

from tests.waiting import wait_for

from .conftest import IMAGE

COMPOSE = """version: "2.4"
services:
  client:
    image: {image}
    command: ping -c1 -W3 {target}
    networks: [web]
    dns: [{gateway}]
networks:
  web:
    external: true
    name: {network}
"""


def test_a_container_on_another_host_is_found_by_name_with_the_readmes_recipe(cluster, net, tmp_path):
    h1, h2, _ = cluster.hosts
    name = net()
    ip = h1.run(f"{name}-api", name, "sleep", "600")
    gateway = ".".join(ip.split(".")[:3]) + ".1"

    def ping(*dns: str) -> subprocess.CompletedProcess:
        return h2.docker(
            "run", "--rm", "--network", name, *dns, IMAGE, "ping", "-c1", "-W3", f"{name}-api", check=False
        )

    # without the recipe (and no lookup leaves the machine: 127.0.0.1 as the external server)
    without = ping("--dns", "127.0.0.1")
    assert without.returncode != 0 and "bad address" in without.stdout + without.stderr, without
    # the recipe: the gateway as the container's DNS server
    assert wait_for(lambda: ping("--dns", gateway).returncode == 0, timeout=30), ping("--dns", gateway)
    # and in Compose
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose is missing (scripts/test.sh installs it)"
    path = tmp_path / "docker-compose.yml"
    path.write_text(COMPOSE.format(image=IMAGE, target=f"{name}-api", gateway=gateway, network=name))
    project = f"pbmh{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "DOCKER_HOST": f"unix://{h2.sock}"}
    try:
        run = subprocess.run(
            [compose, "-f", str(path), "-p", project, "run", "--rm", "client"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr
    finally:
        subprocess.run(
            [compose, "-f", str(path), "-p", project, "down"], env=env, capture_output=True, timeout=120, check=False
        )
