"""ClusterWatch: what the other hosts of the cluster published, followed from etcd.

One watch of the whole prefix: endpoints (ep/) and names (name/) of the other hosts become the
remote view, handed to the data plane and the DNS network by network as they change. Who holds
an address is the host that listed it first under its own prefix (host/HOST/addr/, ordered by
etcd's create revision, which no client sets): the claims in addr/, which every host may write,
only keep the AddressBook current, so a host that deletes another's claim and makes its own
gains nothing. After a break, everything is read again and the view
replaced (a key deleted meanwhile disappears then). Values are parsed as hostile: what does not
parse is logged and left out.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from ..domain.model import ContainerInfo
from . import records as r
from .addresses import AddressBook
from .interfaces import ClusterKVPort, ClusterUnavailable, Event, WatchCompacted

log = logging.getLogger(__name__)

Peers = dict[str, tuple[str, frozenset[str]]]  # mac -> (host, addresses)
COALESCE = 0.02  # seconds: changes that come together are told together


@dataclass
class RemoteView:
    """What other hosts published: network -> {(host, id): record}."""

    endpoints: dict[str, dict[tuple[str, str], r.EndpointRecord]] = field(default_factory=dict)
    names: dict[str, dict[tuple[str, str], ContainerInfo]] = field(default_factory=dict)


class ClusterWatch:
    def __init__(self, kv: ClusterKVPort, host: str, book: AddressBook):
        self.kv = kv
        self.host = host
        self.book = book
        self._view = RemoteView()
        self._lock = threading.Lock()
        self.on_endpoints: Callable[[str, Peers], None] = lambda n, p: None
        self.on_names: Callable[[str, list[ContainerInfo]], None] = lambda n, c: None
        self.on_loaded: Callable[[], None] = lambda: None
        self.on_tunnels: Callable[[dict[str, r.TunnelRecord]], None] = lambda t: None
        # another host asks for an address: (network, address, asking host)
        self.on_want: Callable[[str, int, str], None] = lambda n, a, h: None
        self._tunnels: dict[str, r.TunnelRecord] = {}  # host -> its WireGuard record (live hosts)
        self.refused = 0  # keys and values under host/ that are not pybridge's
        # what makes a record count: its host is a live member of the network (its member key,
        # under its own prefix and lease, is there) and holds the record's addresses: of the
        # hosts that list an address under their own prefix, it listed it first
        self._members: dict[str, set[str]] = {}
        self._listings: dict[str, dict[int, dict[str, int]]] = {}  # network -> address -> host -> created
        self._claimed: dict[str, set[int]] = {}  # network -> addresses with a claim in addr/
        # False until the first full read: until then the view is empty, not "nobody there",
        # and the data plane keeps what it has (a plugin restarted while etcd is away)
        self.loaded = False
        # what changed, told by the notifier thread (run_notifier): a container on another host
        # is some five keys, each an event, and telling the data plane costs the whole network's
        # peers; told once per COALESCE seconds at most, a host's work for the others' churn no
        # longer grows with their number squared (scripts/simulate_cluster.py)
        self._pending: set[tuple[str, str]] = set()
        self._due = threading.Event()
        # the records that count, kept as each key changes (peers() was the whole network's
        # records checked again on every change: at 50 hosts x 50 containers, most of a host's
        # work for the others' churn). Per network: a record's addresses as numbers, the records
        # with each address, the records that count (mac, addresses), per MAC the records that
        # count with it, and the peers: per MAC the last record in (host, id) order
        self._addrs: dict[str, dict[tuple[str, str], tuple[int, ...]]] = {}
        self._with_addr: dict[str, dict[int, set[tuple[str, str]]]] = {}
        self._counted: dict[str, dict[tuple[str, str], tuple[str, frozenset[str]]]] = {}
        self._by_mac: dict[str, dict[str, set[tuple[str, str]]]] = {}
        self._peers: dict[str, Peers] = {}

    def run(self, stop: threading.Event) -> None:
        """Follow what other hosts publish; on every change, tell the data plane and the DNS."""
        while not stop.is_set():
            try:
                own, rev1 = self.kv.range_created(r.PREFIX + "host/")  # every host's own keys
                addrs, rev0 = self.kv.range(r.PREFIX + "addr/")
                with self._lock:
                    self._members, self._listings, self._claimed = {}, {}, {}
                    for key, (_, created) in own.items():  # (counted once the records are read)
                        self._member(key, b"{}", recount=False)
                        self._listing(key, b"{}", created, book=False)
                    for key in addrs:
                        self._claim(key, b"{}", book=False)
                    taken = {n: set(a) for n, a in self._claimed.items()}
                    for n, listed in self._listings.items():
                        taken.setdefault(n, set()).update(listed)
                self.book.replace_all(taken)
                changed = self._replace(
                    {
                        k: v
                        for k, (v, _) in own.items()
                        if r.split_member_key(k) is None
                        and r.split_listing_key(k) is None
                        and r.split_want_key(k) is None
                    }
                )
                self._wanted([r.split_want_key(k) for k in own])
                self.loaded = True
                try:
                    self.on_loaded()
                except Exception:
                    log.exception("cluster watch: programming every cluster network")
                self._notify(changed)
                self.kv.watch(r.PREFIX, min(rev0, rev1) + 1, self._events, stop)
            except WatchCompacted as e:
                log.info("cluster watch: %s; reading everything again", e)
            except ClusterUnavailable:
                stop.wait(1.0)
            except Exception:
                log.exception("cluster watch (again in 1 s)")
                stop.wait(1.0)

    def _events(self, events: list[Event]) -> None:
        changed: set[tuple[str, str]] = set()
        wants: list[tuple[str, str, int] | None] = []
        with self._lock:
            for ev in events:
                want = r.split_want_key(ev.key)
                if want is not None:
                    if ev.value is not None:
                        wants.append(want)
                    continue
                if r.split_addr_key(ev.key) is not None:
                    self._claim(ev.key, ev.value)
                    continue
                if r.split_listing_key(ev.key) is not None:
                    changed |= self._listing(ev.key, ev.value, ev.created)
                    continue
                if r.split_member_key(ev.key) is not None:
                    changed |= self._member(ev.key, ev.value)
                    continue
                changed |= self._apply(ev.key, ev.value)
        self._notify(changed)
        self._wanted(wants)

    def _wanted(self, wants: list[tuple[str, str, int] | None]) -> None:
        """Tell of the addresses other hosts ask for (outside the lock: answering writes etcd)."""
        for want in wants:
            if want is None or want[0] == self.host:
                continue
            asker, network, address = want
            try:
                self.on_want(network, address, asker)
            except Exception:
                log.exception("cluster network %s: an address asked for by %s", network, asker)

    def hosts(self, network: str) -> int:
        """How many hosts are live members of the network."""
        with self._lock:
            return len(self._members.get(network, ()))

    def _member(self, key: str, value: bytes | None, recount: bool = True) -> set[tuple[str, str]]:
        parts = r.split_member_key(key)
        if parts is None:
            return set()
        network, host = parts
        hosts = self._members.setdefault(network, set())
        (hosts.discard if value is None else hosts.add)(host)
        if recount:
            self._recount(network, [k for k in self._view.endpoints.get(network, {}) if k[0] == host])
        return {("ep", network), ("name", network)}

    def _claim(self, key: str, value: bytes | None, book: bool = True) -> None:
        parts = r.split_addr_key(key)
        if parts is None:
            return
        network, address = parts
        claimed = self._claimed.setdefault(network, set())
        (claimed.discard if value is None else claimed.add)(address)
        if book:
            self._book_sync(network, address)

    def _listing(self, key: str, value: bytes | None, created: int, book: bool = True) -> set[tuple[str, str]]:
        parts = r.split_listing_key(key)
        if parts is None:
            return set()
        host, network, address = parts
        listed = self._listings.setdefault(network, {})
        hosts = listed.setdefault(address, {})
        if value is None:
            hosts.pop(host, None)
            if not hosts:
                del listed[address]
        else:
            hosts[host] = created
        if book:  # (not while everything is read again: counted once the records are)
            self._book_sync(network, address)
            self._recount(network, list(self._with_addr.get(network, {}).get(address, ())))
        return {("ep", network), ("name", network)}

    def _book_sync(self, network: str, address: int) -> None:
        """An address is taken while it has a claim in addr/ or any host lists it."""
        if address in self._claimed.get(network, ()) or address in self._listings.get(network, {}):
            self.book.taken(network, address)
        else:
            self.book.freed(network, address)

    def _holder(self, network: str, address: int) -> str | None:
        hosts = self._listings.get(network, {}).get(address)
        if not hosts:
            return None
        return min(hosts.items(), key=lambda hc: (hc[1], hc[0]))[0]

    def holder(self, network: str, address: int) -> str | None:
        """The host that listed the address first (None: no host lists it)."""
        with self._lock:
            return self._holder(network, address)

    def listed(self, network: str) -> set[int]:
        """The addresses any host lists on the network."""
        with self._lock:
            return set(self._listings.get(network, {}))

    def _counts(self, network: str, host: str, addresses: tuple[str, ...]) -> bool:
        """Whether a record of `host` counts: a live member, holding each of its addresses."""
        if host not in self._members.get(network, ()):
            return False
        return all(self._holder(network, int(ipaddress.ip_address(a))) == host for a in addresses if a)

    def _replace(self, data: dict[str, bytes]) -> set[tuple[str, str]]:
        with self._lock:
            changed = {("ep", n) for n in self._view.endpoints} | {("name", n) for n in self._view.names}
            changed.add(("tunnel", ""))
            self._view = RemoteView()
            self._tunnels = {}
            self._addrs, self._with_addr, self._counted, self._by_mac, self._peers = {}, {}, {}, {}, {}
            for key, value in data.items():
                changed |= self._apply(key, value)
            return changed

    def _apply(self, key: str, value: bytes | None) -> set[tuple[str, str]]:
        host = r.split_tunnel_key(key)
        if host is not None:
            self._tunnels.pop(host, None)
            if value is not None:
                try:
                    self._tunnels[host] = r.parse_tunnel(key, value)
                except r.InvalidRecord as e:
                    self.refused += 1
                    log.warning("cluster: ignoring %s", e)
            return {("tunnel", "")}
        parts = r.split_key(key)
        if parts is None:
            if key.startswith(r.PREFIX + "host/") and value is not None:
                self.refused += 1
                log.warning("cluster: ignoring etcd key %r: not a key pybridge writes", key[:200])
            return set()
        if parts.host == self.host:
            return set()
        table: dict[str, Any] = self._view.endpoints if parts.kind == "ep" else self._view.names
        entries = table.setdefault(parts.network, {})
        item = (parts.host, parts.item)
        if value is None:
            entries.pop(item, None)
        else:
            try:
                entries[item] = (
                    r.parse_endpoint(key, value) if parts.kind == "ep" else r.parse_name(key, parts.item, value)
                )
            except r.InvalidRecord as e:
                self.refused += 1
                log.warning("cluster: ignoring %s", e)
                entries.pop(item, None)
        if parts.kind == "ep":
            self._index(parts.network, item, entries.get(item))
            self._recount(parts.network, [item])
        return {(parts.kind, parts.network)}

    def _index(self, network: str, item: tuple[str, str], rec: r.EndpointRecord | None) -> None:
        """The record's addresses, as numbers, and the record under each of them."""
        addrs = self._addrs.setdefault(network, {})
        with_addr = self._with_addr.setdefault(network, {})
        for a in addrs.pop(item, ()):
            holders = with_addr.get(a)
            if holders is not None:
                holders.discard(item)
                if not holders:
                    del with_addr[a]
        if rec is not None:
            numbers = tuple(int(ipaddress.ip_address(a)) for a in (rec.ipv4, rec.ipv6) if a)
            addrs[item] = numbers
            for a in numbers:
                with_addr.setdefault(a, set()).add(item)

    def _recount(self, network: str, items: list[tuple[str, str]]) -> None:
        """Whether each of these records counts now, and the peers of the MACs that changed."""
        if not items:
            return
        records = self._view.endpoints.get(network, {})
        addrs = self._addrs.get(network, {})
        members = self._members.get(network, ())
        counted = self._counted.setdefault(network, {})
        by_mac = self._by_mac.setdefault(network, {})
        touched: set[str] = set()
        for item in items:
            rec = records.get(item)
            host = item[0]
            counts = (
                rec is not None
                and host in members
                and all(self._holder(network, a) == host for a in addrs.get(item, ()))
            )
            new = (rec.mac, frozenset(a for a in (rec.ipv4, rec.ipv6) if a)) if counts and rec is not None else None
            old = counted.get(item)
            if old == new:
                continue
            if old is not None:
                by_mac[old[0]].discard(item)
                touched.add(old[0])
                del counted[item]
            if new is not None:
                counted[item] = new
                by_mac.setdefault(new[0], set()).add(item)
                touched.add(new[0])
        peers = self._peers.setdefault(network, {})
        for mac in touched:
            holders = by_mac.get(mac)
            if holders:
                winner = max(holders)
                peers[mac] = (winner[0], counted[winner][1])
            else:
                by_mac.pop(mac, None)
                peers.pop(mac, None)

    def peers(self, name: str) -> Peers:
        """mac -> (host, addresses) of the other hosts' containers on the network (those of a
        live member holding their addresses; of two with one MAC, the last in (host, id) order)."""
        with self._lock:
            return dict(self._peers.get(name, {}))

    def names(self, name: str) -> list[ContainerInfo]:
        with self._lock:
            return [
                c
                for k, c in sorted(self._view.names.get(name, {}).items())
                if self._counts(name, k[0], (c.ipv4, c.ipv6))
            ]

    def _notify(self, changed: set[tuple[str, str]]) -> None:
        if changed:
            with self._lock:
                self._pending |= changed
            self._due.set()

    def run_notifier(self, stop: threading.Event, coalesce: float = COALESCE) -> None:
        """Tell the data plane and the DNS what changed: what came within `coalesce` seconds
        of the first change, at once."""
        while not stop.is_set():
            if not self._due.wait(1.0):
                continue
            stop.wait(coalesce)
            self._due.clear()
            with self._lock:
                changed, self._pending = self._pending, set()
            self._tell(changed)

    def _tell(self, changed: set[tuple[str, str]]) -> None:
        for kind, network in sorted(changed):
            try:
                if kind == "tunnel":
                    with self._lock:
                        tunnels = dict(self._tunnels)
                    self.on_tunnels(tunnels)
                elif kind == "ep":
                    self.on_endpoints(network, self.peers(network))
                else:
                    self.on_names(network, self.names(network))
            except Exception:
                log.exception("cluster network %s: applying remote %s", network, kind)
