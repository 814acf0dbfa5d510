"""Swarm mode (issue 10, item 3), in a single-node swarm on loopback that the test makes and
leaves. A swarm-scoped pybridge network is made from a config-only network that names
pybridge's IPAM and the subnet (as for macvlan): services with two replicas in DNS round-robin
mode reach each other by name through the network's DNS, and `docker run` on it works. Without
--config-from dockerd hands each node's copy a subnet of its own pools whatever --subnet says;
dockerd sends the plugin nothing at `docker network create --scope swarm`, so pybridge refuses
such a network when the first container joins it, and says what to do instead."""

import ipaddress
import json

import pytest

from .dockerenv import IMAGE, MANAGED, docker, free_subnet, sh, wait_for


@pytest.fixture
def swarm(dk):
    if docker("info", "-f", "{{.Swarm.LocalNodeState}}") != "inactive":
        pytest.skip("this engine is in a swarm already; the test makes and leaves its own")
    had_gwbridge = sh("docker", "network", "inspect", "docker_gwbridge", check=False).returncode == 0
    docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:2377")
    made: dict[str, list[str]] = {"services": [], "containers": [], "networks": []}
    try:
        yield made
    finally:
        for s in made["services"]:
            sh("docker", "service", "rm", s, check=False)
        for s in made["services"]:
            wait_for(
                lambda: (
                    sh("docker", "ps", "-aq", "--filter", f"label=com.docker.swarm.service.name={s}").stdout.strip()
                    == ""
                ),
                60,
            )
        if made["containers"]:
            sh("docker", "rm", "-f", *made["containers"], check=False)
        for n in reversed(made["networks"]):
            wait_for(
                lambda: (
                    sh("docker", "network", "rm", n, check=False).returncode == 0
                    or "not found" in sh("docker", "network", "inspect", n, check=False).stderr
                ),
                60,
            )
        sh("docker", "swarm", "leave", "--force", check=False)
        if not had_gwbridge:
            wait_for(lambda: sh("docker", "network", "rm", "docker_gwbridge", check=False).returncode == 0, 30)


def test_swarm_services_on_a_pybridge_network_made_from_a_config_only_network(dk, swarm):
    subnet = free_subnet()
    gateway = str(ipaddress.ip_network(subnet).network_address + 1)
    tag = dk.name("sw")
    config, net, svc = f"{tag}-config", f"{tag}-net", f"{tag}-svc"
    docker("network", "create", "--config-only", "--ipam-driver", MANAGED, "--subnet", subnet, config)
    swarm["networks"].append(config)
    docker("network", "create", "-d", MANAGED, "--scope", "swarm", "--attachable", "--config-from", config, net)
    swarm["networks"].append(net)
    docker(
        "service",
        "create",
        "--detach",
        "--name",
        svc,
        "--replicas",
        "2",
        "--endpoint-mode",
        "dnsrr",
        "--network",
        net,
        "--dns",
        gateway,
        IMAGE,
        "sleep",
        "600",
    )
    swarm["services"].append(svc)
    tasks = lambda: sh("docker", "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={svc}").stdout.split()  # noqa: E731
    assert wait_for(lambda: len(tasks()) == 2, 90), sh("docker", "service", "ps", "--no-trunc", svc).stdout
    one, two = tasks()
    addresses = {
        json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", t))[net]["IPAddress"]
        for t in (one, two)
    }
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network(subnet) for a in addresses), addresses
    # the service's name answers with both tasks (round robin), from a task and from `docker run`
    looked = sh("docker", "exec", one, "nslookup", svc, gateway).stdout
    assert all(a in looked for a in addresses), looked
    assert wait_for(
        lambda: sh("docker", "exec", one, "ping", "-c1", "-W2", f"tasks.{svc}", check=False).returncode == 0, 10
    )
    runner = f"{tag}-run"
    swarm["containers"].append(runner)
    res = sh(
        "docker",
        "run",
        "--rm",
        "--name",
        runner,
        "--network",
        net,
        "--dns",
        gateway,
        IMAGE,
        "ping",
        "-c1",
        "-W2",
        svc,
        check=False,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_swarm_network_without_config_from_is_refused_saying_what_to_do(dk, swarm):
    """The refusal reaches the user as the task's error (`docker service ps --no-trunc`); a
    `docker run` on such a network fails too, but dockerd 28.5 reports only "attaching to
    network failed ... context deadline exceeded" there."""
    net, svc = dk.name("sw"), dk.name("svc")
    docker("network", "create", "-d", MANAGED, "--scope", "swarm", "--attachable", "--subnet", free_subnet(), net)
    swarm["networks"].append(net)
    docker(
        "service",
        "create",
        "--detach",
        "--name",
        svc,
        "--replicas",
        "1",
        "--endpoint-mode",
        "dnsrr",
        "--network",
        net,
        "--dns",
        "127.0.0.1",
        IMAGE,
        "sleep",
        "600",
    )
    swarm["services"].append(svc)
    errors = lambda: sh("docker", "service", "ps", "--no-trunc", "--format", "{{.Error}}", svc).stdout  # noqa: E731
    assert wait_for(lambda: "--config-from" in errors(), 90), errors()
    assert "--config-only --ipam-driver" in errors()
