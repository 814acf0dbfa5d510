"""Fail every kernel step that each operation really runs, each time it runs it (an adapter that
fails on demand, injected by the test): the operation completes or leaves nothing behind, the
injected failure is asserted to have fired, and a restart (restore) converges on the world
before or after a clean run of the operation.

The steps are not listed by hand: a clean run of each operation records the steps it takes
(netlink changes, firewall syncs, sysctls), and every occurrence becomes a case."""

import pytest

from plugin.config import load_settings
from plugin.domain.errors import PybridgeError
from plugin.domain.options import IpamDataSpec
from plugin.store.db import Store
from plugin.wiring import build_services

from ..fakes import Faults, FakeFirewall, FakeLink, FakeNetlink, FakeSysctl

NID, EID = "ab" * 32, "cd" * 32
PORTS = [
    {"Proto": 6, "Port": 80, "HostPort": 8080, "HostPortEnd": 8080},
    {"Proto": 17, "Port": 53, "HostPort": 5353, "HostPortEnd": 5353},
]
V4 = [IpamDataSpec("10.200.1.0/24", "10.200.1.1/24")]
V6 = [IpamDataSpec("fd70:6201:1::/64", "fd70:6201:1::1/64")]


def make(tmp_path):
    faults = Faults()
    settings = load_settings({"PYBRIDGE_NAME": "pbtest", "PYBRIDGE_IFPREFIX": "pt"}, state_dir=str(tmp_path), dns=False)
    s = build_services(
        settings,
        netlink=FakeNetlink(faults=faults),
        firewall=FakeFirewall(faults=faults),
        sysctl=FakeSysctl(faults=faults),
        store=Store(tmp_path / "s.db").open(),
        synchronous_teardown=True,
    )
    return s, faults


def create_network(s):
    s.networks.create(NID, {}, ipv6=True, internal=False, ipv4_data=V4, ipv6_data=V6)


def create_endpoint(s):
    s.endpoints.create(NID, EID, address="10.200.1.2/24", address6="fd70:6201:1::2/64", mac="")


def publish(s):
    s.endpoints.program(NID, EID, PORTS)


def users_bridge(s):
    s.netlink.devices["userbr"] = FakeLink("userbr", "bridge", addresses={"192.168.77.1/24"})


def adopt_bridge(s):
    s.networks.create(
        NID, {"com.docker.network.bridge.name": "userbr"}, ipv6=False, internal=False, ipv4_data=V4, ipv6_data=[]
    )


# (name, operation, the operations that set the stage for it)
OPERATIONS = [
    ("create network", create_network, []),
    ("create endpoint", create_endpoint, [create_network]),
    ("publish ports", publish, [create_network, create_endpoint]),
    ("revoke ports", lambda s: s.endpoints.revoke(NID, EID), [create_network, create_endpoint, publish]),
    ("leave with ports", lambda s: s.endpoints.leave(NID, EID), [create_network, create_endpoint, publish]),
    ("delete endpoint", lambda s: s.endpoints.delete(NID, EID), [create_network, create_endpoint]),
    (
        "delete endpoint with ports still published",
        lambda s: s.endpoints.delete(NID, EID),
        [create_network, create_endpoint, publish],
    ),
    ("delete network", lambda s: s.networks.delete(NID), [create_network]),
    ("delete network with an endpoint", lambda s: s.networks.delete(NID), [create_network, create_endpoint, publish]),
    ("restore", lambda s: s.reconciler.restore(), [create_network, create_endpoint, publish]),
    ("create network on a user's bridge", adopt_bridge, [users_bridge]),
    ("delete network on a user's bridge", lambda s: s.networks.delete(NID), [users_bridge, adopt_bridge]),
]


def world(s):
    with s.store.reading() as tx:
        state = ([n.id for n in tx.networks.all()], [(e.id, e.ports) for e in tx.networks.endpoints()])
    links = sorted((l.name, l.kind, tuple(sorted(l.addresses)), l.master) for l in s.netlink.devices.values())
    return state, links, sorted(s.firewall.all_rules())


def occurrences(steps: list[str]) -> list[tuple[str, int]]:
    """Each step with the number of its call: ['a', 'b', 'a'] -> [('a', 1), ('b', 1), ('a', 2)]."""
    return [(name, steps[: i + 1].count(name)) for i, name in enumerate(steps)]


@pytest.mark.parametrize("name, op, stage", OPERATIONS, ids=[o[0] for o in OPERATIONS])
def test_every_step_failing_leaves_before_or_after_and_restart_converges(tmp_path, name, op, stage):
    clean, faults = make(tmp_path / "clean")
    for setup in stage:
        setup(clean)
    clean.reconciler.restore()
    before = world(clean)
    mark = faults.mark()
    op(clean)
    steps = faults.calls[mark:]
    clean.reconciler.restore()
    after = world(clean)
    cases = occurrences(steps)
    assert cases, f"{name} runs no kernel step at all"
    for i, (step, nth) in enumerate(cases):
        s, faults = make(tmp_path / f"case{i}")
        for setup in stage:
            setup(s)
        s.reconciler.restore()
        faults.arm(step, nth)
        try:
            op(s)
        except PybridgeError:
            pass
        assert faults.fired == 1, f"{name}: the failure injected at {step} (call {nth}) never fired"
        faults.arm(None)
        s.reconciler.restore()  # what a plugin restart runs
        assert world(s) in (before, after), f"{name}, {step} (call {nth}) failing: the world is neither"
        s.reconciler.restore()
        assert world(s) in (before, after), f"{name}, {step} (call {nth}) failing: restore does not converge"
