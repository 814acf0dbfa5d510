"""Fakes of the kernel adapters that enforce the same contracts as the real ones.

FakeNetlink refuses what the kernel refuses (duplicate names, a veth on a missing bridge, names
over 15 bytes, an address on a missing link) and can be told to fail a given operation, so that
services can be tested for "complete or leave nothing behind".
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from plugin.domain.errors import Conflict, KernelError
from plugin.kernel import rules
from plugin.domain.model import Taken
from plugin.kernel.interfaces import LinkInfo


class Faults:
    """The kernel steps the fakes ran, in order, and one armed failure: the n-th call of a step
    (counted from when it was armed) raises KernelError. `fired` says whether it did, so a test
    can assert that its injected failure really happened."""

    def __init__(self):
        self.calls: list[str] = []
        self.armed: tuple[str, int] | None = None
        self._since = 0
        self.fired = 0

    def arm(self, step: str | None = None, nth: int = 1) -> None:
        self.armed, self._since, self.fired = ((step, nth) if step else None), len(self.calls), 0

    def mark(self) -> int:
        return len(self.calls)

    def step(self, name: str) -> None:
        self.calls.append(name)
        if self.armed and self.armed[0] == name and self.calls[self._since:].count(name) == self.armed[1]:
            self.fired += 1
            raise KernelError(f"injected failure in {name} (call {self.armed[1]})")


@dataclass
class FakeLink:
    name: str
    kind: str
    mtu: int = 1500
    master: str | None = None
    peer: str | None = None
    mac: str = ""
    addresses: set = field(default_factory=set)
    up: bool = False
    uplink: bool = False     # a bridge with a route through a gateway (the host's way out)


class FakeNetlink:
    def __init__(self, host_routes=(), faults: Faults | None = None):
        self.devices: dict[str, FakeLink] = {}
        self.routes = [ipaddress.ip_network(r) for r in host_routes]
        self.fail_on: set[str] = set()
        self.calls: list[str] = []
        self.faults = faults or Faults()

    def _step(self, op: str) -> None:
        self.calls.append(op)
        if op in self.fail_on:
            raise KernelError(f"injected failure in {op}")
        self.faults.step(op)

    def _info(self, link: FakeLink) -> LinkInfo:
        idx = list(self.devices).index(link.name) + 1
        master = list(self.devices).index(link.master) + 1 if link.master in self.devices else None
        return LinkInfo(name=link.name, index=idx, kind=link.kind, mtu=link.mtu, master=master, mac=link.mac)

    def link(self, name):
        link = self.devices.get(name)
        return self._info(link) if link else None

    def links(self):
        return [self._info(l) for l in self.devices.values()]

    def ensure_bridge(self, name, mtu, mac):
        self._step("ensure_bridge")
        assert len(name) <= 15, name
        link = self.devices.get(name)
        if link is not None and link.kind != "bridge":
            raise Conflict(f"a {link.kind} link named {name!r} already exists")
        created = link is None
        if created:
            link = self.devices[name] = FakeLink(name, "bridge", mtu or 1500, mac=mac)
        elif mtu:
            link.mtu = mtu
        link.up = True
        return created

    def ensure_addresses(self, name, addresses):
        self._step("ensure_addresses")
        if name not in self.devices:
            raise KernelError(f"link {name} does not exist")
        self.devices[name].addresses.update(str(a) for a in addresses)

    def addresses(self, name):
        link = self.devices.get(name)
        return set(link.addresses) if link else set()

    def remove_addresses(self, name, addresses):
        self._step("remove_addresses")
        if name in self.devices:
            self.devices[name].addresses.difference_update(str(a) for a in addresses)

    def delete_link(self, name):
        self._step("delete_link")
        link = self.devices.pop(name, None)
        if link is None:
            return False
        if link.peer:
            self.devices.pop(link.peer, None)
        for other in self.devices.values():
            if other.master == name:
                other.master = None
        return True

    def delete_link_by_index(self, index, name):
        link = self.devices.get(name)
        if link is None or self._info(link).index != index:
            return False
        return self.delete_link(name)

    def create_veth(self, host, peer, bridge, mtu, mac):
        self._step("create_veth")
        assert len(host) <= 15 and len(peer) <= 15
        if bridge not in self.devices:
            raise KernelError(f"bridge {bridge} does not exist")
        for n in (host, peer):
            self.devices.pop(n, None)
        mtu = mtu or self.devices[bridge].mtu
        self.devices[host] = FakeLink(host, "veth", mtu, master=bridge, peer=peer, up=True)
        self.devices[peer] = FakeLink(peer, "veth", mtu, peer=host, mac=mac)

    def foreign_bridges(self, own):
        own = set(own)
        return sorted(n for n, l in self.devices.items() if l.kind == "bridge" and n not in own and not l.uplink)

    def watch_links(self, on_change):
        raise NotImplementedError("tests call the watcher's callback themselves")

    def host_networks(self):
        taken = [Taken(r, f"host route {r} (dev eth0)") for r in self.routes]
        for link in self.devices.values():
            for a in link.addresses:
                net = ipaddress.ip_interface(a).network
                taken.append(Taken(net, f"host route {net} (dev {link.name})"))
        return taken


class FakeFirewall:
    """Keeps the rendered rules, like the real adapter keeps our chains, and refuses what the real
    adapter refuses: every rule goes through the same checked renderer (unsafe tokens raise)."""

    def __init__(self, prefix="PBTEST", faults: Faults | None = None):
        self.prefix = prefix
        self.faults = faults or Faults()
        self.rules: dict[int, dict[str, list[str]]] = {}
        self.fail = False
        self.syncs = 0
        self.families = (4, 6)
        self.foreign: list[str] = []

    def supports(self, version):
        return version in self.families

    def _render(self, networks, endpoints, foreign=()):
        out = {}
        for v in (4, 6):
            rendered = rules.render(self.prefix, list(networks), v, list(endpoints), list(foreign))
            rules.restore_text(self.prefix, rendered, [])
            out[v] = {table: [rules.line(r) for r in rs] for table, rs in rendered.items()}
        return out

    def sync(self, networks, endpoints=(), foreign=(), check_jumps=True):
        self.syncs += 1
        if self.fail:
            raise KernelError("injected firewall failure")
        self.faults.step("firewall")
        self.rules = self._render(networks, endpoints, foreign)
        self.foreign = list(foreign)

    def remove_all(self):
        self.rules = {}

    def drift(self, networks, endpoints=(), foreign=()):
        return [] if self._render(networks, endpoints, foreign) == self.rules else ["rules differ"]

    def all_rules(self) -> list[str]:
        return [r for fam in self.rules.values() for table in fam.values() for r in table]


class FakeSysctl:
    def __init__(self, faults: Faults | None = None):
        self.values = {}
        self.fail = False
        self.faults = faults or Faults()

    def get(self, *parts):
        return self.values.get(parts)

    def ensure(self, value, *parts):
        if self.fail:
            raise KernelError("injected sysctl failure")
        self.faults.step("sysctl")
        self.values[parts] = value

    def enable_ipv6_forwarding(self):
        self.faults.step("sysctl")
        self.values[("net", "ipv6", "conf", "all", "forwarding")] = "1"

    def enable_ipv6(self, ifname):
        self.faults.step("sysctl")
        self.values[("net", "ipv6", "conf", ifname, "disable_ipv6")] = "0"
