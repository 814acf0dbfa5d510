"""Fakes of the kernel adapters that enforce the same contracts as the real ones.

FakeNetlink refuses what the kernel refuses (duplicate names, a veth on a missing bridge, names
over 15 bytes, an address on a missing link) and can be told to fail a given operation, so that
services can be tested for "complete or leave nothing behind".
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import json
import threading
from dataclasses import dataclass, field

from plugin.domain.errors import Conflict, KernelError, KernelFault
from plugin.kernel import nftrules, nftwire
from plugin.kernel.nft import SET_TYPES
from plugin.domain.model import Taken
from plugin.kernel.interfaces import FirewallCounters, LinkInfo


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
        if self.armed and self.armed[0] == name and self.calls[self._since :].count(name) == self.armed[1]:
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
    uplink: bool = False  # a bridge with a route through a gateway (the host's way out)
    hairpin: bool = False


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

    def set_link_up(self, name, up):
        self._step("set_link_up")
        link = self.devices.get(name)
        if link is None:
            return False
        link.up = up
        return True

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

    def set_hairpin(self, name):
        self._step("set_hairpin")
        link = self.devices.get(name)
        if link is None or link.master is None:
            raise KernelError(f"hairpin on {name}: no such bridge port")
        link.hairpin = True

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
    """Our nftables table as the kernel would hold it. Every change is the real adapter's JSON
    transaction (rendered by plugin.kernel.nftrules), run here by a small interpreter that refuses
    what nft refuses, all or nothing: deleting an element, chain or table that is not there, an
    element whose key already maps elsewhere, a chain deleted while it still has rules."""

    def __init__(self, prefix="PBTEST", faults: Faults | None = None):
        self.prefix = prefix
        self.table = nftrules.table_name(prefix)
        self.mark = nftrules.DEFAULT_MARK
        self.faults = faults or Faults()
        self.kernel: dict | None = None  # {"chains": {name: [rules]}, "sets": {name: {key: value}}}
        self.fail = False
        self.fault: str | None = None  # a fault in firewall work: raised as KernelFault, counted
        self.syncs = 0
        self.changes = 0
        self.families = (4, 6)
        self._foreign: tuple[str, ...] = ()
        self.removed = False
        self._counted = FirewallCounters()
        self._vxlan: dict = {}
        self.run(nftrules.full(self.table, self.mark, {}))  # as after the plugin's start
        self.faults.calls.clear()

    def supports(self, version):
        return version in self.families

    # the interpreter -------------------------------------------------------------------
    def run(self, commands: list[dict]) -> None:
        if self.fail:
            raise KernelError("injected firewall failure")
        self._maybe_fault()
        self.faults.step("firewall")
        json.dumps(commands)  # only JSON reaches the kernel
        nftwire.Compiler(SET_TYPES).compile(commands)  # and only what the real adapter can encode
        k = copy.deepcopy(self.kernel)
        for cmd in commands:
            ((verb, body),) = cmd.items()
            ((kind, obj),) = body.items()
            k = self._apply(k, verb, kind, obj)
        self.kernel = k

    def _apply(self, k, verb, kind, obj):
        def need(cond, what):
            if not cond:
                raise KernelError(f"nftables: {verb} {kind} {obj.get('name', '')}: {what}")

        if kind == "table":
            if verb == "add":
                return k or {"chains": {}, "sets": {}}
            need(k is not None and verb == "delete", "No such file or directory")
            return None
        need(k is not None and obj["table"] == self.table, "No such table")
        chains, sets = k["chains"], k["sets"]
        if kind == "chain":
            name = obj["name"]
            if verb == "add":
                chains.setdefault(name, [])
            elif verb == "flush":
                need(name in chains, "No such file or directory")
                chains[name] = []
            elif verb == "delete":
                need(name in chains, "No such file or directory")
                need(not chains[name], "Device or resource busy")
                del chains[name]
        elif kind == "rule":
            need(obj["chain"] in chains, "No such file or directory")
            chains[obj["chain"]].append(obj["expr"])
        elif kind in ("set", "map"):
            if verb == "add":
                sets.setdefault(obj["name"], {})
            else:
                need(obj["name"] in sets, "No such file or directory")
                sets[obj["name"]] = {}
        elif kind == "element":
            need(obj["name"] in sets, "No such file or directory")
            elems = sets[obj["name"]]
            for item in obj["elem"]:
                key, value = (
                    (nftrules.normalize(item[0]), nftrules.normalize(item[1]))
                    if isinstance(item, list)
                    else (nftrules.normalize(item), None)
                )
                if verb == "add":
                    need(elems.get(key, value) == value, "File exists")
                    elems[key] = value
                else:
                    need(key in elems, "No such file or directory")
                    del elems[key]
        return k

    # FirewallPort ----------------------------------------------------------------------
    def sync(self, networks, endpoints=(), foreign=None):
        bridges = self._foreign if foreign is None else tuple(foreign)
        self.syncs += 1
        self._change(
            nftrules.full(
                self.table, self.mark, nftrules.merge(nftrules.desired(networks, endpoints, bridges), self._vxlan)
            )
        )
        self._foreign = bridges

    def add_network(self, network):
        self.changes += 1
        self._change(nftrules.add_network(self.table, network))

    def remove_network(self, network, endpoints=()):
        self.changes += 1
        self._change(nftrules.remove_network(self.table, network, endpoints))

    def change_ports(self, network, before, after):
        self.changes += 1
        self._change(nftrules.change_ports(self.table, network, before, after))

    def set_foreign(self, foreign, own=()):
        self.changes += 1
        mine = set(own)
        bridges = tuple(b for b in foreign if b not in mine)
        self._change(nftrules.set_foreign(self.table, bridges, own))
        self._foreign = bridges

    def set_vxlan_members(self, port, members, tunnel=""):
        self.changes += 1
        elements = nftrules.vxlan_elements(port, members, tunnel)
        self._change(nftrules.set_vxlan(self.table, elements))
        self._vxlan = elements

    def counters(self):
        return self._counted

    def _change(self, commands):
        ok = False
        try:
            self.run(commands)
            ok = True
        finally:
            c = self._counted
            self._counted = dataclasses.replace(c, changes=c.changes + 1, failures=c.failures + (not ok))

    def watch(self, on_change, legacy_every=2.0):
        return None

    def remove_all(self):
        self.kernel = None
        self.removed = True

    def listing(self) -> nftrules.Listed:
        if self.kernel is None:
            return nftrules.Listed()
        return nftrules.Listed(
            exists=True,
            chains={c: len(r) for c, r in self.kernel["chains"].items()},
            base={c: nftrules.BASE_CHAINS[c] for c in nftrules.BASE_CHAINS if c in self.kernel["chains"]},
            sets=set(self.kernel["sets"]),
            elements=copy.deepcopy(self.kernel["sets"]),
        )

    def _maybe_fault(self):
        """What the real adapter does with a fault: count it, name it, fail the call."""
        if self.fault is not None:
            c = self._counted
            self._counted = dataclasses.replace(c, faults=c.faults + 1, last_fault=self.fault)
            raise KernelFault(f"firewall fault (see the plugin's log): {self.fault}")

    def foreign(self):
        return self._foreign

    def drift(self, networks, endpoints=()):
        self._maybe_fault()
        return nftrules.drift(
            self.mark, nftrules.merge(nftrules.desired(networks, endpoints, self._foreign), self._vxlan), self.listing()
        )

    # for tests -------------------------------------------------------------------------
    def elements(self, name: str) -> dict:
        return dict((self.kernel or {"sets": {}})["sets"].get(name, {}))

    def chains(self) -> dict:
        return dict((self.kernel or {"chains": {}})["chains"])

    def all_rules(self) -> list[str]:
        """What the state put in the table, one line each: the networks' chains and every set's
        elements (the fixed chains are the same whatever the state), sorted."""
        if self.kernel is None:
            return []
        out = [f"chain {c}" for c in self.kernel["chains"] if c not in nftrules.CHAINS]
        out += [
            f"{s}: {nftrules.show(key, v)}"
            for s, e in self.kernel["sets"].items()
            for key, v in e.items()
            if s not in nftrules.FIXED
        ]
        return sorted(out)


class FakeHostDns:
    """The host resolver as the DNS service tells it: every publish kept, the last one current."""

    def __init__(self, servers: tuple[str, ...] = ()):
        self.published: list[dict] = []
        self._servers = servers
        self.on_servers = lambda: None

    def servers(self) -> tuple[str, ...]:
        return self._servers

    def publish(self, links):
        for bridge, (servers, domain) in links.items():
            assert isinstance(bridge, str) and isinstance(domain, str) and domain, (bridge, domain)
            assert all(isinstance(s, str) for s in servers), servers
        self.published.append(dict(links))

    @property
    def current(self) -> dict:
        return self.published[-1] if self.published else {}


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


class FakeKV:
    """ClusterKVPort in memory, with etcd's semantics: a revision per change, keys bound to
    leases vanish when the lease expires or is revoked (tests call expire()), transactions are
    all or nothing and refused above etcd's default size (TXN_OPS conditions or operations),
    keepalive of an unknown lease answers False, and while `down` every call raises
    ClusterUnavailable."""

    def __init__(self):
        from plugin.cluster.interfaces import ClusterUnavailable

        self._unavailable = ClusterUnavailable
        self.data: dict[str, tuple[bytes, int, int]] = {}  # key -> (value, lease, mod revision)
        self.leases: dict[int, int] = {}  # lease -> ttl
        self.revision = 1
        self.down = False
        self.log: list = []  # (revision, key, value or None, create revision or 0)
        self.created: dict[str, int] = {}  # key -> the revision that created it
        self._next_lease = 1000
        self._cond = threading.Condition()

    def as_user(self, writable: tuple[str, ...]) -> FakeKVUser:
        """This etcd as a user whose role writes only under these prefixes."""
        return FakeKVUser(self, writable)

    def _check(self):
        if self.down:
            raise self._unavailable("etcd unreachable (fake down)")

    def grant(self, ttl):
        self._check()
        with self._cond:
            self._next_lease += 1
            self.leases[self._next_lease] = ttl
            return self._next_lease

    def keepalive(self, lease):
        self._check()
        return lease in self.leases

    def revoke(self, lease):
        self._check()
        self.expire(lease)

    def expire(self, lease):
        with self._cond:
            self.leases.pop(lease, None)
            gone = [k for k, (_, l, _) in self.data.items() if l == lease]
            if gone:
                self.revision += 1
                for k in gone:
                    del self.data[k]
                    self.created.pop(k, None)
                    self.log.append((self.revision, k, None, 0))
                self._cond.notify_all()

    def get(self, key):
        self._check()
        item = self.data.get(key)
        return item[0] if item else None

    def range(self, prefix):
        self._check()
        with self._cond:
            return {k: v for k, (v, _, _) in self.data.items() if k.startswith(prefix)}, self.revision

    def range_created(self, prefix):
        self._check()
        with self._cond:
            return {
                k: (v, self.created[k]) for k, (v, _, _) in self.data.items() if k.startswith(prefix)
            }, self.revision

    def txn(self, conditions, operations):
        from plugin.cluster.interfaces import Absent, Delete, NoneUnder, Put, ValueIs

        from plugin.cluster.interfaces import TXN_OPS

        self._check()
        if len(conditions) > TXN_OPS or len(operations) > TXN_OPS:  # (as etcd answers it, applying nothing)
            raise self._unavailable("etcd transaction failed: etcdserver: too many operations in txn request")
        self.txns = getattr(self, "txns", 0) + 1
        with self._cond:
            for c in conditions:
                if isinstance(c, Absent) and c.key in self.data:
                    return False
                if isinstance(c, ValueIs) and self.data.get(c.key, (None,))[0] != c.value:
                    return False
                if isinstance(c, NoneUnder) and any(k.startswith(c.prefix) for k in self.data):
                    return False
            keys = [o.key for o in operations if isinstance(o, (Put, Delete))]
            assert len(keys) == len(set(keys)), "etcd refuses a transaction that changes a key twice"
            if any(isinstance(o, Put) and o.lease and o.lease not in self.leases for o in operations):
                from plugin.cluster.interfaces import LeaseExpired

                raise LeaseExpired("etcd: requested lease not found")  # and applies nothing
            self.revision += 1
            for o in operations:
                if isinstance(o, Put):
                    self.created.setdefault(o.key, self.revision)
                    self.data[o.key] = (o.value, o.lease, self.revision)
                    self.log.append((self.revision, o.key, o.value, self.created[o.key]))
                else:
                    for k in [
                        k for k in self.data if (k == o.key if isinstance(o, Delete) else k.startswith(o.prefix))
                    ]:
                        del self.data[k]
                        self.created.pop(k, None)
                        self.log.append((self.revision, k, None, 0))
            self._cond.notify_all()
            return True

    def watch(self, prefix, start_revision, on_events, stop):
        from plugin.cluster.interfaces import Event

        revision = start_revision
        while not stop.is_set():
            self._check()
            with self._cond:
                events = [Event(k, v, r, c) for r, k, v, c in self.log if r >= revision and k.startswith(prefix)]
                if not events:
                    self._cond.wait(0.05)
                    continue
                revision = self.revision + 1
            on_events(events)
        return revision


class FakeKVUser:
    """FakeKV as one etcd user with a role sees it (etcd's access control): reads everything,
    writes only under `writable` prefixes; a transaction with any other write is refused whole,
    with etcd's message, as EtcdKV reports it. Everything else is the FakeKV's."""

    def __init__(self, kv: FakeKV, writable: tuple[str, ...]):
        self._kv, self.writable = kv, writable
        self.refused = 0

    def __getattr__(self, name):  # what tests reach beyond the port: data, expire, down...
        return getattr(self._kv, name)

    def grant(self, ttl):
        return self._kv.grant(ttl)

    def keepalive(self, lease):
        return self._kv.keepalive(lease)

    def revoke(self, lease):
        return self._kv.revoke(lease)

    def get(self, key):
        return self._kv.get(key)

    def range(self, prefix):
        return self._kv.range(prefix)

    def range_created(self, prefix):
        return self._kv.range_created(prefix)

    def watch(self, prefix, start_revision, on_events, stop):
        return self._kv.watch(prefix, start_revision, on_events, stop)

    def txn(self, conditions, operations):
        from plugin.cluster.interfaces import ClusterUnavailable, DeleteUnder

        for o in operations:
            key = o.prefix if isinstance(o, DeleteUnder) else o.key
            if not key.startswith(self.writable):
                self.refused += 1
                raise ClusterUnavailable(f"etcd transaction at fake failed: etcdserver: permission denied ({key})")
        return self._kv.txn(conditions, operations)


class FakeOverlay:
    """OverlayPort over a FakeNetlink: VXLAN devices are links there (so delete_link and restore
    see them), a device needs its bridge and the underlay address, one VNI has one device, and
    entries exist only on a device that exists."""

    def __init__(self, netlink: FakeNetlink, underlays: dict[str, tuple[str, int]] | None = None):
        self.netlink = netlink
        self.underlays = dict(underlays or {})
        self.vnis: dict[str, int] = {}
        self.entries: dict[str, dict] = {}
        self.full_sets = 0  # set_peers calls (update_peers: only what changed)

    def underlay(self, address):
        return self.underlays.get(address)

    def ensure_vxlan(self, name, vni, local, port, mtu, bridge):
        self.netlink._step("ensure_vxlan")
        if local not in self.underlays:
            raise KernelError(f"no link holds the underlay address {local}")
        if bridge not in self.netlink.devices:
            raise KernelError(f"bridge {bridge} of VXLAN {name} is missing")
        link = self.netlink.devices.get(name)
        if link is not None and (link.kind != "vxlan" or self.vnis.get(name) != vni):
            raise Conflict(f"a link named {name} exists and is not VXLAN {vni}")
        if any(v == vni and n != name and n in self.netlink.devices for n, v in self.vnis.items()):
            raise Conflict(f"VXLAN {vni} already exists on this host under another name")
        created = link is None
        if created:
            link = self.netlink.devices[name] = FakeLink(name, "vxlan", mtu)
            self.vnis[name] = vni
            self.entries[name] = {}
        link.master, link.mtu, link.up = bridge, mtu, True
        return created

    def peers(self, name):
        return dict(self.entries.get(name, {})) if name in self.netlink.devices else {}

    def set_peers(self, name, bridge, peers):
        if name not in self.netlink.devices or bridge not in self.netlink.devices:
            raise KernelError(f"VXLAN {name} or its bridge {bridge} is missing")
        self.entries[name] = {mac: (host, frozenset(ips)) for mac, (host, ips) in peers.items()}
        self.full_sets += 1

    def update_peers(self, name, bridge, peers, have):
        """The real adapter reads nothing back and trusts `have`: here it must be the truth."""
        if name not in self.netlink.devices or bridge not in self.netlink.devices:
            raise KernelError(f"VXLAN {name} or its bridge {bridge} is missing")
        entries = self.entries.setdefault(name, {})
        for mac in set(have) | set(peers):
            assert entries.get(mac) == have.get(mac), (
                f"{mac}: programmed {entries.get(mac)}, caller believes {have.get(mac)}"
            )
            if mac in peers:
                host, ips = peers[mac]
                entries[mac] = (host, frozenset(ips))
            else:
                del entries[mac]


class FakeWireGuard:
    """TunnelPort over a FakeOverlay: the device is a link in its FakeNetlink and its address an
    underlay the overlay knows (so VXLAN finds it, as the kernel would); the key file must be
    there and 0600, keys and peers are checked as the real adapter checks them, and peers exist
    only on a device that exists. A public key is a digest of its private key."""

    def __init__(self, overlay: FakeOverlay):
        self.overlay = overlay
        self.netlink = overlay.netlink
        self.devices: dict[str, dict] = {}  # name -> {"key": private, "port", "address", "peers"}

    def make_key(self, path):
        import base64
        import os as _os

        fd = _os.open(path, _os.O_WRONLY | _os.O_CREAT | _os.O_TRUNC, 0o600)
        with _os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(_os.urandom(32)).decode() + "\n")

    def public_key(self, path):
        import base64
        import hashlib

        from plugin.kernel.interfaces import check_key

        with open(path) as f:
            private = check_key(f.read().strip(), f"private key in {path}")
        return base64.b64encode(hashlib.sha256(private.encode()).digest()).decode()

    def _private(self, key_file):
        import os as _os

        from plugin.kernel.interfaces import check_key

        if _os.stat(key_file).st_mode & 0o077:
            raise KernelError(f"{key_file}: a private key others may read")
        with open(key_file) as f:
            return check_key(f.read().strip(), "private key")

    def ensure(self, name, key_file, port, address, mtu):
        self.netlink._step("ensure_wireguard")
        link = self.netlink.devices.get(name)
        if link is not None and link.kind != "wireguard":
            raise KernelError(f"a link named {name} exists and is not WireGuard")
        if link is None:
            link = self.netlink.devices[name] = FakeLink(name, "wireguard", mtu)
            self.devices[name] = {"peers": {}}
        ip = address.split("/")[0]
        self.devices[name].update(key=self._private(key_file), port=int(port), address=address)
        link.mtu, link.up = mtu, True
        self.overlay.underlays[ip] = (name, mtu)
        return "kernel"

    def set_key(self, name, key_file):
        if name not in self.netlink.devices:
            raise KernelError(f"no WireGuard device {name}")
        self.devices[name]["key"] = self._private(key_file)

    def peers(self, name):
        if name not in self.netlink.devices:
            raise KernelError(f"no WireGuard device {name}")
        return dict(self.devices[name]["peers"])

    def set_peers(self, name, peers):
        if name not in self.netlink.devices:
            raise KernelError(f"no WireGuard device {name}")
        checked = {k: p.check() for k, p in peers.items()}
        allowed = [p.allowed for p in checked.values()]
        assert len(allowed) == len(set(allowed)), "one tunnel address on two peers"
        self.devices[name]["peers"] = checked

    def delete(self, name):
        link = self.netlink.devices.pop(name, None)
        self.devices.pop(name, None)
        if link is not None:
            self.overlay.underlays = {a: u for a, u in self.overlay.underlays.items() if u[0] != name}

    def exists(self, name):
        return name in self.netlink.devices


def host_over_fakes(env: dict, directory, kv, address: str, wireguard: bool = False):
    """pybridge's services for one cluster host (`env` its settings, `directory` its state), its
    kernel faked and `kv` its etcd: the cluster tests' and the simulator's host."""
    from pathlib import Path

    from plugin.config import load_settings
    from plugin.store.db import Store
    from plugin.wiring import build_services

    directory = Path(directory)
    settings = load_settings(env, state_dir=str(directory), dns=False)
    nl = FakeNetlink()
    overlay = FakeOverlay(nl, {address: ("eth1", 1500)})
    return build_services(
        settings,
        netlink=nl,
        firewall=FakeFirewall(),
        sysctl=FakeSysctl(),
        store=Store(directory / "state.db").open(),
        synchronous_teardown=True,
        kv=kv,
        overlay=overlay,
        **({"wireguard": FakeWireGuard(overlay)} if wireguard else {}),
    )
