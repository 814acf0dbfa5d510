"""Fail every kernel step of every operation in turn (an adapter that fails on demand, injected
by the test): the operation completes or leaves nothing behind, and a restart converges."""

import pytest

from plugin.config import load_settings
from plugin.domain.errors import PybridgeError
from plugin.domain.options import IpamDataSpec
from plugin.store.db import Store
from plugin.wiring import build_services

from ..fakes import FakeFirewall, FakeNetlink, FakeSysctl

NID, EID = "ab" * 32, "cd" * 32
PORTS = [{"Proto": 6, "Port": 80, "HostPort": 8080, "HostPortEnd": 8080}]
STEPS = ["ensure_bridge", "ensure_addresses", "remove_addresses", "delete_link", "create_veth",
         "firewall", "sysctl"]


def make(tmp_path):
    settings = load_settings({"PYBRIDGE_NAME": "pbtest", "PYBRIDGE_IFPREFIX": "pt"},
                             state_dir=str(tmp_path), dns=False)
    return build_services(settings, netlink=FakeNetlink(), firewall=FakeFirewall(), sysctl=FakeSysctl(),
                          store=Store(tmp_path / "s.db").open(), synchronous_teardown=True)


OPERATIONS = [
    ("create network", lambda s: s.networks.create(NID, {}, ipv6=False, internal=False, ipv6_data=[],
                                                   ipv4_data=[IpamDataSpec("10.200.1.0/24", "10.200.1.1/24")])),
    ("create endpoint", lambda s: s.endpoints.create(NID, EID, address="10.200.1.2/24", address6="", mac="")),
    ("publish ports", lambda s: s.endpoints.program(NID, EID, PORTS)),
    ("revoke ports", lambda s: s.endpoints.revoke(NID, EID)),
    ("delete endpoint", lambda s: s.endpoints.delete(NID, EID)),
    ("delete network", lambda s: s.networks.delete(NID)),
]


def world(s):
    with s.ctx.store.reading() as tx:
        state = ([n.id for n in tx.list_networks()], [(e.id, e.ports) for e in tx.list_endpoints()])
    links = sorted((l.name, l.kind, tuple(sorted(l.addresses)), l.master) for l in s.ctx.netlink.devices.values())
    return state, links, sorted(s.ctx.firewall.all_rules())


def fail(s, step, on):
    s.ctx.firewall.fail = on and step == "firewall"
    s.ctx.sysctl.fail = on and step == "sysctl"
    s.ctx.netlink.fail_on = {step} if on and step not in ("firewall", "sysctl") else set()


@pytest.mark.parametrize("index", range(len(OPERATIONS)), ids=[name for name, _ in OPERATIONS])
@pytest.mark.parametrize("step", STEPS)
def test_each_step_failing_leaves_before_or_after_and_restart_converges(tmp_path, index, step):
    clean = make(tmp_path / "clean")
    for _, op in OPERATIONS[:index]:
        op(clean)
    clean.reconciler.restore()
    before = world(clean)
    OPERATIONS[index][1](clean)
    clean.reconciler.restore()
    after = world(clean)

    s = make(tmp_path / "faulty")
    for _, op in OPERATIONS[:index]:
        op(s)
    fail(s, step, True)
    try:
        OPERATIONS[index][1](s)
    except PybridgeError:
        pass
    fail(s, step, False)
    s.reconciler.restore()       # what a plugin restart runs
    assert world(s) in (before, after)
    s.reconciler.restore()
    assert world(s) in (before, after)
