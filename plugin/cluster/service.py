"""ClusterService: this host's part in a cluster of pybridge hosts sharing etcd.

- Networks: the first host that creates cluster network NAME writes its record (subnets,
  gateways, VNI, gateway MAC, MTU) in one transaction that also claims the VNI; every other host
  must create it with the same subnets, and gets the same VNI and MAC.
- Addresses: claimed with compare-and-swap (create only if absent), so two hosts never hand out
  the same one; each claim carries this host's etcd lease, so the addresses of a host that dies
  come back after the grace.
- Endpoints and names: published under this host's lease; other hosts watch them and program
  their VXLAN devices and DNS.

The local state store stays the source of truth for what this host holds: when etcd comes back
(or this host's lease expired meanwhile), `resync` makes etcd's copy of this host's keys equal to
it again. The data plane needs no etcd: entries stay programmed while etcd is away.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Collection, ContextManager, Iterable, Iterator

from ..domain.errors import Conflict, Exhausted
from ..domain.model import ContainerInfo
from . import records as r
from .addresses import AddressBook, home
from .reserve import SHARE, Reserve
from .watch import ClusterWatch, Peers
from .interfaces import (
    Absent,
    ClusterKVPort,
    ClusterUnavailable,
    Condition,
    Delete,
    DeleteUnder,
    LeaseExpired,
    NoneUnder,
    Operation,
    Put,
    TXN_OPS,
    ValueIs,
)

log = logging.getLogger(__name__)

CLAIM_ATTEMPTS = 64
RESERVE_WAIT = 1.0  # seconds a call waits for the reserve's next batch before it claims alone
HANDOVER_WAIT = 2.0  # seconds a host waits for another to give up an address of its reserve
# a range's reserve (size, target), its network's book version and host count (see _quiet_signature)
_Quiet = tuple[tuple[int, int], int, int]
BATCH = 40  # addresses claimed in one transaction at most (two operations each; etcd allows TXN_OPS)


@dataclass(frozen=True)
class LocalNetwork:
    """A cluster network as this host holds it (from the state store)."""

    name: str
    record: r.NetRecord
    addresses: tuple[tuple[int, str], ...] = ()  # (address, kind) leased here
    endpoints: tuple[tuple[str, r.EndpointRecord], ...] = ()  # (endpoint id, record)
    names: tuple[ContainerInfo, ...] = ()


def _claim_ops(name: str, host: str, address: int, value: bytes, lease: int) -> list[Operation]:
    """An address's claim (addr/, which every host may write) and the holder's own listing of
    it (under its prefix, which only it may write: what the other hosts believe)."""
    return [Put(r.addr_key(name, address), value, lease), Put(r.listing_key(name, host, address), b"{}", lease)]


def _claims_ops(name: str, host: str, claims: list[tuple[int, bytes]], lease: int) -> list[Operation]:
    return [op for address, value in claims for op in _claim_ops(name, host, address, value, lease)]


def _writes(items: list[tuple[str, bytes | None]], lease: int) -> list[Operation]:
    """Puts (under lease) and deletes (a value of None)."""
    return [Put(k, v, lease) if v is not None else Delete(k) for k, v in items]


def _holder_in(key: str, value: bytes) -> str:
    try:
        return r.parse_addr(key, value).host or "nobody"
    except r.InvalidRecord:
        return "a record pybridge does not write"


def _network_of(key: str, host: str) -> str:
    """The network of one of this host's own keys (host/HOST/member/NET, .../ep/NET/..,
    .../name/NET/.., .../addr/NET/..), or "" for a key it does not recognise (stale then, and
    deleted)."""
    parts = key[len(r.host_prefix(host)) :].split("/")
    return parts[1] if len(parts) >= 2 and parts[0] in ("member", "ep", "name", "addr") else ""


class TurnGate:
    """Changes and the resync take turns. A change (a plugin call that writes this host's keys
    in etcd and its state store: both, as one step) runs side by side with other changes; the
    resync (which reads the store, then makes etcd's keys of this host equal to it) runs alone,
    so that it never takes a change made between its read and its writes for a stale key. A
    waiting resync goes first: changes do not starve it. A change may nest in another one on the
    same thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._changes = 0
        self._resync = False
        self._resync_waiting = 0
        self._depth = threading.local()

    @contextmanager
    def change(self) -> Iterator[None]:
        depth = getattr(self._depth, "n", 0)
        if depth == 0:
            with self._cond:
                while self._resync or self._resync_waiting:
                    self._cond.wait()
                self._changes += 1
        self._depth.n = depth + 1
        try:
            yield
        finally:
            self._depth.n = depth
            if depth == 0:
                with self._cond:
                    self._changes -= 1
                    if self._changes == 0:
                        self._cond.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            self._resync_waiting += 1
            try:
                while self._resync or self._changes:
                    self._cond.wait()
            finally:
                self._resync_waiting -= 1
            self._resync = True
        try:
            yield
        finally:
            with self._cond:
                self._resync = False
                self._cond.notify_all()


class ClusterService:
    def __init__(self, kv: ClusterKVPort, host: str, grace: int):
        self.kv = kv
        self.host = host
        self.grace = grace
        self._lease = 0
        self._lock = threading.RLock()
        self._book = AddressBook()
        self.watch = ClusterWatch(kv, host, self._book)
        # addresses claimed ahead (see reserve.py), topped up by run_reserve while it runs
        self._reserve = Reserve()
        self._reserving = False
        self._refill_due = threading.Event()
        # range -> what it looked like when its last refill found nothing to do: an idle loop
        # passes it over until one of those moves (see _quiet_signature)
        self._quiet_at: dict[tuple[str, int, int], _Quiet] = {}
        self._reserve_cursor: dict[tuple[str, int, int], int] = {}
        self.watch.on_want = self._give_up
        self.reachable = False
        self.resyncs = 0
        self.local: Callable[[], list[LocalNetwork]] = lambda: []
        # network -> this host's names as last reported (or, before any report, as the resync
        # found them); the names thread is their one writer, and writes what is latest when it
        # writes, so that a resync that read older names never puts them back over newer ones
        self._names: dict[str, list[ContainerInfo]] = {}
        self._names_pending: set[str] = set()
        # network -> the lease its names were all last written under (names thread only): under
        # a newer one, every name is written again, not only those that changed, or the ones
        # still under a lease that ends (a restarted plugin's) would go with it
        self._names_lease: dict[str, int] = {}
        self._names_lock = threading.Lock()
        self._names_due = threading.Event()
        self._dirty = threading.Event()
        # addresses this host holds locally that the resync found claimed by another host: the
        # endpoint is taken off the wire (on_clash) rather than run a duplicate
        self.clashes: dict[str, set[int]] = {}
        self.on_clash: Callable[[str, int], None] = lambda name, address: None
        self._turns = TurnGate()
        self.tunnel: r.TunnelRecord | None = None  # this host's WireGuard key and port, for the others
        self.describe_tunnel: Callable[[], dict[str, Any]] = lambda: {"encrypt": "none"}

    def changing(self) -> ContextManager[None]:
        """Held by a plugin call around its etcd write and the state store's record of it (see
        TurnGate): a resync waits for it, and it waits for a resync under way."""
        return self._turns.change()

    # --- session
    def _session(self) -> int:
        with self._lock:
            if not self._lease:
                self._lease = self.kv.grant(self.grace)
                # a new lease holds none of this host's keys yet: whoever took it (the session,
                # or a first write such as the WireGuard key's at start), the resync writes them
                self._dirty.set()
            return self._lease

    def _lease_gone(self, lease: int) -> None:
        """etcd dropped this host's lease (it was silent longer than the grace): the next call
        takes a new one, and everything this host holds is written again under it."""
        with self._lock:
            if self._lease == lease:
                self._lease = 0
                log.warning("cluster: this host's lease expired; writing its keys again")
        self._dirty.set()

    def _leased(self, conditions: list[Condition], operations: Callable[[int], list[Operation]]) -> bool:
        """A transaction whose puts carry this host's lease; made again once under a new lease
        when etcd no longer had the old one."""
        for attempt in (1, 2):
            lease = self._session()
            try:
                return self.kv.txn(conditions, operations(lease))
            except LeaseExpired:
                self._lease_gone(lease)
                if attempt == 2:
                    raise ClusterUnavailable("etcd dropped two leases of this host in a row") from None
        return False

    def _apply(self, operations: list[Operation]) -> None:
        """Unconditional operations in transactions etcd takes (TXN_OPS at most each): each is
        applied whole, not all of them together (what calls this is made whole again by a
        resync)."""
        for start in range(0, len(operations), TXN_OPS):
            self.kv.txn([], operations[start : start + TXN_OPS])

    def _apply_leased(self, puts: dict[str, bytes], deletes: list[str]) -> None:
        """Puts under this host's lease and deletes, as _apply sends them."""
        items = [*puts.items(), *((k, None) for k in deletes)]
        for start in range(0, len(items), TXN_OPS):
            chunk = items[start : start + TXN_OPS]
            self._leased([], functools.partial(_writes, chunk))

    def _fail(self, what: str, e: ClusterUnavailable) -> ClusterUnavailable:
        self.reachable = False
        return ClusterUnavailable(
            f"{what}: the cluster store is unreachable ({e}); cluster networks "
            "take no new containers until it answers, local networks are not affected"
        )

    # --- networks
    def join_network(
        self, name: str, subnets: list[tuple[str, str]], mtu: int, aux: tuple[str, ...] = ()
    ) -> r.NetRecord:
        """The cluster's record of network `name`, made now from these subnets and aux addresses
        if there is none (the aux addresses claimed with it, for every host); this host is
        recorded as a member. Conflict when the record says otherwise."""
        try:
            record = self._ensure_record(name, subnets, mtu, tuple(sorted(aux)))
            self._leased([], functools.partial(self._membership, name))
        except ClusterUnavailable as e:
            raise self._fail(f"cluster network {name}", e) from e
        return record

    def _ensure_record(
        self, name: str, subnets: list[tuple[str, str]], mtu: int, aux: tuple[str, ...] = ()
    ) -> r.NetRecord:
        want = tuple(sorted(subnets))
        for _ in range(8):
            raw = self.kv.get(r.net_key(name))
            if raw is not None:
                record = r.parse_net(r.net_key(name), raw)
                if tuple(sorted(record.subnets)) != want:
                    shown = ", ".join(f"{p} (gateway {g or 'none'})" for p, g in record.subnets)
                    raise Conflict(
                        f"cluster network {name} has {shown}: create it here with the same --subnet and --gateway"
                    )
                if record.aux != aux:
                    raise Conflict(
                        f"cluster network {name} has aux addresses {', '.join(record.aux) or 'none'}: "
                        "create it here with the same --aux-address"
                    )
                return record
            others, _ = self.kv.range(r.PREFIX + "net/")
            used_vnis = set()
            for key, value in others.items():
                try:
                    other = r.parse_net(key, value)
                except r.InvalidRecord:
                    continue
                used_vnis.add(other.vni)
                for pool, _gw in other.subnets:
                    for mine, _ in subnets:
                        if ipaddress.ip_network(pool).overlaps(ipaddress.ip_network(mine)):
                            raise Conflict(f"subnet {mine} overlaps {pool} of cluster network {key.rsplit('/', 1)[-1]}")
            taken, _ = self.kv.range(r.PREFIX + "vni/")
            used_vnis |= {v for v in map(r.parse_vni_key, taken) if v is not None}
            vni = next(v for v in range(r.VNI_FIRST, r.VNI_LAST + 1) if v not in used_vnis)
            gw4 = next((g for p, g in subnets if g and ipaddress.ip_network(p).version == 4), "")
            record = r.NetRecord(want, vni, r.gateway_mac(gw4, vni), mtu, aux)
            ops = [Put(r.net_key(name), record.to_json().encode()), Put(r.vni_key(vni), name.encode())]
            ops += [
                Put(r.addr_key(name, int(ipaddress.ip_address(g))), r.AddrRecord("", "gateway").to_json().encode())
                for _, g in subnets
                if g
            ]
            ops += [
                Put(r.addr_key(name, int(ipaddress.ip_address(a))), r.AddrRecord("", "aux").to_json().encode())
                for a in aux
            ]
            if self.kv.txn([Absent(r.net_key(name)), Absent(r.vni_key(vni))], ops):
                log.info("cluster network %s recorded: VNI %d, %s", name, vni, ", ".join(p for p, _ in subnets))
                return record
        raise Conflict(f"cluster network {name}: its record changed under us too often, try again")

    def _membership(self, name: str, lease: int) -> list[Operation]:
        """This host's member key (its own, which no other host can write) and its entry in the
        network's index of hosts (what the last host's leave checks)."""
        return [Put(r.member_key(name, self.host), b"{}", lease), Put(r.members_key(name, self.host), b"{}", lease)]

    def leave_network(self, name: str) -> None:
        """This host no longer has the network: its keys go; the record and the network's claims
        go with the last host (other hosts' own keys are theirs: they went when they left)."""
        with self._names_lock:
            self._names.pop(name, None)
            self._names_pending.discard(name)
            self._names_lease.pop(name, None)
        self._reserve.forget(name)  # (its claims are this host's: they go below)
        try:
            held, _ = self.kv.range(r.addr_prefix(name))
            ops: list[Operation] = [
                Delete(r.member_key(name, self.host)),
                Delete(r.members_key(name, self.host)),
                DeleteUnder(r.ep_prefix(name, self.host)),
                DeleteUnder(r.name_prefix(name, self.host)),
                DeleteUnder(r.listing_prefix(name, self.host)),
            ]
            ops += [Delete(k) for k, v in held.items() if self._mine(k, v)]
            ops += [Delete(k) for k in self._my_macs(name)]
            self._apply(ops)
            raw = self.kv.get(r.net_key(name))
            if raw is None:
                return
            vni = r.parse_net(r.net_key(name), raw).vni
            if self.kv.txn(
                [NoneUnder(r.members_prefix(name)), ValueIs(r.net_key(name), raw)],
                [
                    Delete(r.net_key(name)),
                    Delete(r.vni_key(vni)),
                    DeleteUnder(r.addr_prefix(name)),
                    DeleteUnder(r.mac_prefix(name)),
                ],
            ):
                log.info("cluster network %s: last host left, record removed", name)
        except (ClusterUnavailable, r.InvalidRecord) as e:
            log.warning("cluster network %s: leaving it in etcd later (%s)", name, e)
            self._dirty.set()

    # --- addresses
    def _listings(self) -> dict[str, dict[int, dict[str, int]]]:
        """network -> address -> host -> the revision that created its listing, for every
        host's listings (read from etcd: what the resync decides on)."""
        found, _ = self.kv.range_created(r.PREFIX + "host/")
        out: dict[str, dict[int, dict[str, int]]] = {}
        for key, (_, created) in found.items():
            parts = r.split_listing_key(key)
            if parts is not None:
                out.setdefault(parts[1], {}).setdefault(parts[2], {})[parts[0]] = created
        return out

    def _mine(self, key: str, value: bytes) -> bool:
        try:
            return r.parse_addr(key, value).host == self.host
        except r.InvalidRecord:
            return False

    def claim(self, name: str, address: int, kind: str) -> bool:
        """True when this host holds the address now (made now, or held already). An address
        of this host's reserve is handed out as it is; one in another host's reserve is asked
        for, when asked for by name (a static address)."""
        if self._reserve.drop(name, address, handed=True):
            return True
        key = r.addr_key(name, address)
        try:
            value = r.AddrRecord(self.host, kind).to_json().encode()
            if self._take(name, address, value):
                return True
            held = self.kv.get(key)
            if kind == "static" and held is not None and self._reserved_by_another(key, held):
                return self._ask(name, address, value)
        except ClusterUnavailable as e:
            raise self._fail(f"address {ipaddress.ip_address(address)} of cluster network {name}", e) from e
        if self.watch.holder(name, address) == self.host:
            return True  # (its claim in addr/ was deleted and made anew by another host: it holds it all the same)
        return held is not None and self._mine(key, held) and self.watch.holder(name, address) in (None, self.host)

    def _reserved_by_another(self, key: str, value: bytes) -> bool:
        try:
            record = r.parse_addr(key, value)
        except r.InvalidRecord:
            return False
        return record.kind == "reserve" and record.host not in ("", self.host)

    def _ask(self, name: str, address: int, value: bytes) -> bool:
        """Ask the host whose reserve holds `address` to give it up (a key under this host's own
        prefix: the holder knows who asks), and claim it once it is free; False when it was not
        given up in HANDOVER_WAIT (the holder handed it out meanwhile, or does not answer)."""
        want, key = r.want_key(name, self.host, address), r.addr_key(name, address)
        self._leased([], lambda lease: [Put(want, b"{}", lease)])
        try:
            deadline = time.monotonic() + HANDOVER_WAIT
            while time.monotonic() < deadline:
                held = self.kv.get(key)
                if held is None and self._take(name, address, value):
                    return True
                if held is not None and not self._reserved_by_another(key, held):
                    return False  # handed out there (its record says so now), or taken by a third
                time.sleep(0.02)
            return False
        finally:
            self.kv.txn([], [Delete(want)])

    def _give_up(self, name: str, address: int, asker: str) -> None:
        """Another host asks for an address: given up when it is in this host's reserve (not
        handed out); else the asker's wait ends when it sees the record, or times out."""
        if not self._reserve.drop(name, address):
            return
        log.info("cluster network %s: %s given up to %s, which asks for it", name, ipaddress.ip_address(address), asker)
        with self.changing():
            self._give_back(name, address)

    def _give_back(self, name: str, address: int) -> None:
        """A claim of the reserve (not handed out) is deleted, with this host's listing of it."""
        key = r.addr_key(name, address)
        value = r.AddrRecord(self.host, "reserve").to_json().encode()
        try:
            self.kv.txn([ValueIs(key, value)], [Delete(key), Delete(r.listing_key(name, self.host, address))])
        except ClusterUnavailable:
            self._dirty.set()  # (the resync deletes what this host no longer wants)

    def _take(self, name: str, address: int, value: bytes) -> bool:
        """Claim a free address: its claim in addr/ and this host's listing of it, in one
        transaction. Given back at once when another host listed it before (its claim was
        deleted under it: it holds the address all the same, and the others know it)."""
        key = r.addr_key(name, address)
        if not self._leased([Absent(key)], functools.partial(_claim_ops, name, self.host, address, value)):
            return False
        return self._kept(name, address, value)

    def _kept(self, name: str, address: int, value: bytes) -> bool:
        """After a claim was made: whether this host keeps it (no other host listed the address
        before; else the claim is given back)."""
        key = r.addr_key(name, address)
        holder = self.watch.holder(name, address)
        if holder in (None, self.host):
            return True
        log.warning(
            "cluster network %s: address %s had no claim in etcd but %s lists it: left to that host",
            name,
            ipaddress.ip_address(address),
            holder,
        )
        self.kv.txn([ValueIs(key, value)], [Delete(key), Delete(r.listing_key(name, self.host, address))])
        return False

    def _claim_lost(self, name: str, lost: list[tuple[int, str]]) -> list[int]:
        """Claims of this host's addresses that etcd no longer has (its lease expired), BATCH in
        a transaction: a returning host makes a few round trips, not one per container. A batch
        that etcd refuses (one of its addresses was claimed meanwhile) is claimed one by one.
        Returns the addresses another host holds now."""
        clashes: list[int] = []
        for start in range(0, len(lost), BATCH):
            chunk = lost[start : start + BATCH]
            values = {a: r.AddrRecord(self.host, kind).to_json().encode() for a, kind in chunk}
            if len(chunk) > 1 and self._leased(
                [Absent(r.addr_key(name, a)) for a, _ in chunk],
                functools.partial(_claims_ops, name, self.host, [(a, values[a]) for a, _ in chunk]),
            ):
                clashes += [a for a, _ in chunk if not self._kept(name, a, values[a])]
            else:
                clashes += [a for a, kind in chunk if not self.claim(name, a, kind)]
        return clashes

    def _claim_kept(self, name: str, kept: list[tuple[int, str, bytes]], lease: int) -> None:
        """Claims etcd still has as this host's (address, kind, value) put again under `lease`
        with their listings, BATCH in a transaction (a restarted plugin's keys still carry the
        lease of the one before), each batch kept only if no claim of it changed; one by one when
        one did."""
        for start in range(0, len(kept), BATCH):
            chunk = kept[start : start + BATCH]

            def ops(items: list[tuple[int, str, bytes]]) -> list[Operation]:
                return [
                    op
                    for a, _, v in items
                    for op in (Put(r.addr_key(name, a), v, lease), Put(r.listing_key(name, self.host, a), b"{}", lease))
                ]

            if len(chunk) > 1 and self.kv.txn([ValueIs(r.addr_key(name, a), v) for a, _, v in chunk], ops(chunk)):
                continue
            for a, kind, v in chunk:
                if self.kv.txn([ValueIs(r.addr_key(name, a), v)], ops([(a, kind, v)])):
                    continue
                # gone meanwhile (the old lease's keys expire while the resync runs) or changed:
                # a reserve's address is not handed out then, and the next resync claims a
                # container's again as a missing key
                if kind == "reserve":
                    self._reserve.drop(name, a)
                else:
                    log.warning(
                        "cluster network %s: address key %s changed while re-claimed", name, r.addr_key(name, a)
                    )
                self._dirty.set()

    def _claim_macs(self, name: str, wanted: dict[str, bytes], held: dict[str, bytes], lease: int) -> None:
        """This host's MAC claims (key -> claim) made again under `lease`, TXN_OPS in a
        transaction, each made if absent or kept if it is this host's; one held by another
        endpoint is logged and left to it."""
        mine = [(k, v) for k, v in wanted.items() if k not in held or held[k] == v]
        for k in wanted.keys() - dict(mine).keys():
            log.error(
                "cluster network %s: MAC %s of a container here is claimed by another endpoint too",
                name,
                k.rsplit("/", 1)[-1],
            )
        for start in range(0, len(mine), TXN_OPS):
            chunk = mine[start : start + TXN_OPS]
            conditions: list[Condition] = [Absent(k) if k not in held else ValueIs(k, v) for k, v in chunk]
            if len(chunk) > 1 and self.kv.txn(conditions, [Put(k, v, lease) for k, v in chunk]):
                continue
            for (k, v), condition in zip(chunk, conditions):  # (one changed meanwhile: each alone)
                if not self.kv.txn([condition], [Put(k, v, lease)]):
                    log.error("cluster network %s: the claim of MAC %s changed meanwhile", name, k.rsplit("/", 1)[-1])

    def _load_taken(self, name: str) -> None:
        """What etcd holds of the network's addresses, into the book (the watch keeps it current
        afterwards; this is for a network it has not delivered yet, or a book gone stale)."""
        held, _ = self.kv.range(r.addr_prefix(name))
        claimed = [parts[1] for parts in map(lambda k: r.split_addr_key(k, name), held) if parts]
        self._book.load(name, [*claimed, *self.watch.listed(name)])

    def allocate(self, name: str, lo: int, hi: int, cursor: int, avoid: Collection[int] = ()) -> int:
        """A free address in [lo, hi]: from this host's reserve while it is kept (no etcd round
        trip), waiting with the others for its next batch when it is empty; else claimed alone."""
        if self._reserving:
            got = self._reserve.take(name, lo, hi, avoid)
            if got is None:
                self._refill_due.set()
                got = self._reserve.wait(name, lo, hi, avoid, RESERVE_WAIT)
            self._refill_due.set()
            if got is not None:
                return got
        return self._allocate(name, lo, hi, cursor, avoid)

    def _allocate(self, name: str, lo: int, hi: int, cursor: int, avoid: Collection[int] = ()) -> int:
        """A free address in [lo, hi] after cursor (or after this host's home in the subnet, for
        its first), claimed for this host: usually one transaction (see AddressBook). Addresses
        in `avoid` (remembered for containers that restart) are taken only when no other is free.
        With none left, one in another host's reserve is asked for."""
        try:
            if not self._book.known(name):
                self._load_taken(name)
            cursor = cursor if lo <= cursor <= hi else home(self.host, lo, hi)
            reloaded = False
            for _ in range(CLAIM_ATTEMPTS):
                value = self._book.reserve(name, lo, hi, cursor, avoid)
                if value is None and avoid:
                    value = self._book.reserve(name, lo, hi, cursor)
                if value is None:
                    if reloaded:
                        asked = self._ask_any(name, lo, hi)
                        if asked is not None:
                            return asked
                        raise Exhausted(f"no free address left in cluster network {name}")
                    self._load_taken(name)  # the book may hold addresses freed since
                    reloaded = True
                    continue
                won = False
                try:
                    record = r.AddrRecord(self.host, "dynamic").to_json().encode()
                    won = self._take(name, value, record)
                    self._book.settle(name, value, taken=True)
                except BaseException:
                    self._book.settle(name, value, taken=False)
                    raise
                if won:
                    return value
                cursor = value  # another host took it meanwhile: walk on
        except ClusterUnavailable as e:
            raise self._fail(f"an address on cluster network {name}", e) from e
        raise Exhausted(f"cluster network {name}: no address could be claimed in {CLAIM_ATTEMPTS} attempts")

    def _ask_any(self, name: str, lo: int, hi: int) -> int | None:
        """The subnet is full: an address in another host's reserve, asked for (a few tried)."""
        held, _ = self.kv.range(r.addr_prefix(name))
        value = r.AddrRecord(self.host, "dynamic").to_json().encode()
        candidates = [
            parts[1]
            for k, v in sorted(held.items())
            if (parts := r.split_addr_key(k, name)) and lo <= parts[1] <= hi and self._reserved_by_another(k, v)
        ]
        for address in candidates[:3]:
            if self._ask(name, address, value):
                return address
        return None

    # --- the reserve
    def prime(self, name: str, lo: int, hi: int) -> None:
        """A network of this host: its reserve is filled now, before its first container."""
        self._reserve.demand(name, lo, hi)
        self._refill_due.set()

    def run_reserve(self, stop: threading.Event) -> None:
        """Keep the reserve of each network in demand topped up (and give back what is over its
        share), write the records of addresses handed out from it as theirs ("dynamic")."""
        self._reserving = True
        try:
            while not stop.is_set():
                self._refill_due.wait(1.0)
                self._refill_due.clear()
                ranges = self._reserve.ranges()
                for gone in self._quiet_at.keys() - set(ranges):
                    del self._quiet_at[gone]
                for key in ranges:
                    try:
                        before = self._quiet_signature(key)
                        if before is not None and self._quiet_at.get(key) == before:
                            continue  # nothing moved since it last had nothing to do
                        self._quiet_at.pop(key, None)
                        if not self._refill(key) and before is not None:
                            # (what it saw before: a change during the refill moves it again)
                            self._quiet_at[key] = before
                    except ClusterUnavailable:
                        stop.wait(0.5)
                    except Exception:
                        log.exception("cluster network %s: the reserve of addresses", key[0])
                        stop.wait(0.5)
        finally:
            self._reserving = False

    def _quiet_signature(self, key: tuple[str, int, int]) -> _Quiet | None:
        """What decides a range's refill, cheaply: the reserve's size and target, the book's
        version of the network (any address taken, freed or being claimed) and its host count;
        None while the reserve has work whatever these say (handed-out records, waiting calls)."""
        reserve = self._reserve.quiet(key)
        if reserve is None:
            return None
        return reserve, self._book.version(key[0]), self.watch.hosts(key[0])

    def _refill(self, key: tuple[str, int, int]) -> bool:
        """Top up (or trim) a range's reserve and write down what it handed out; whether there
        was anything to do."""
        name, lo, hi = key
        with self.changing():  # the claims and the reserve, as one step for the resync
            if not self._book.known(name):
                self._load_taken(name)
            # (what the reserve holds counts as free here: the share is of what no container has)
            free = self._book.free(name, lo, hi) + self._reserve.held(key)
            cap = free // (SHARE * max(1, self.watch.hosts(name)))
            n = self._reserve.wanted(key, cap)
            if n < 0:
                for a in self._reserve.excess(key, -n):
                    self._give_back(name, a)
            elif n > 0:
                got = self._claim_batch(name, lo, hi, min(n, BATCH))
                if not self._reserve.add(key, got):  # (the network left meanwhile)
                    for a in got:
                        self._give_back(name, a)
            # the records of what was handed out are rewritten when no call waits for a batch;
            # a change too (a resync re-claims a key with the value it read: never under it)
            handed = self._reserve.handed(key) if not self._reserve.waiters() else set()
            if not handed:
                return n != 0
            reserve = r.AddrRecord(self.host, "reserve").to_json().encode()
            dynamic = r.AddrRecord(self.host, "dynamic").to_json().encode()
            keys = [r.addr_key(name, a) for a in sorted(handed)]
            if not self._leased([ValueIs(k, reserve) for k in keys], functools.partial(self._puts, keys, dynamic)):
                for k in keys:  # (one was released meanwhile: each on its own)
                    self._leased([ValueIs(k, reserve)], functools.partial(self._puts, [k], dynamic))
            return True

    @staticmethod
    def _puts(keys: list[str], value: bytes, lease: int) -> list[Operation]:
        return [Put(k, value, lease) for k in keys]

    def _claim_batch(self, name: str, lo: int, hi: int, n: int) -> list[int]:
        """Up to n free addresses claimed for the reserve in one transaction (each on its own when
        that fails: another host took one of them meanwhile)."""
        cursor = self._reserve_cursor.get((name, lo, hi), home(self.host, lo, hi))
        picks: list[int] = []
        for _ in range(n):
            a = self._book.reserve(name, lo, hi, cursor)
            if a is None:
                break
            picks.append(a)
            cursor = a
        self._reserve_cursor[(name, lo, hi)] = cursor
        if not picks:
            return []
        value = r.AddrRecord(self.host, "reserve").to_json().encode()
        won: list[int] = []
        answered = False
        try:
            if self._leased(
                [Absent(r.addr_key(name, a)) for a in picks],
                functools.partial(_claims_ops, name, self.host, [(a, value) for a in picks]),
            ):
                for a in picks:
                    if self.watch.holder(name, a) in (None, self.host):
                        won.append(a)
                    else:  # (listed first by another host: its all the same)
                        self._give_back(name, a)
            else:
                won = [a for a in picks if self._take(name, a, value)]
            answered = True
        finally:
            for a in picks:  # (taken: by this host, or by the one that had it first)
                self._book.settle(name, a, taken=answered)
        return won

    def release(self, name: str, address: int) -> None:
        key = r.addr_key(name, address)
        try:
            held = self.kv.get(key)
            if held is not None and self._mine(key, held):
                if self.kv.txn([ValueIs(key, held)], [Delete(key), Delete(r.listing_key(name, self.host, address))]):
                    self._book.freed(name, address)
            else:  # (taken over by another host's claim: this host's listing goes all the same)
                self.kv.txn([], [Delete(r.listing_key(name, self.host, address))])
        except ClusterUnavailable as e:
            log.warning(
                "address %s of cluster network %s: released in etcd later (%s)", ipaddress.ip_address(address), name, e
            )
            self._dirty.set()

    # --- the encrypted underlay
    def publish_tunnel(self, record: r.TunnelRecord) -> None:
        """This host's WireGuard public key and port, under its prefix and lease (so it goes when
        the host does). Written again by the resync when etcd does not answer now."""
        self.tunnel = record
        key, value = r.tunnel_key(self.host), record.to_json().encode()
        try:
            self._leased([], lambda lease: [Put(key, value, lease)])
        except (ClusterUnavailable, LeaseExpired) as e:
            log.warning("cluster: WireGuard key published later (%s)", e)
            self._dirty.set()

    # --- endpoints and names
    def publish_endpoint(self, name: str, endpoint_id: str, record: r.EndpointRecord) -> None:
        """The endpoint's record, and its MAC claimed on the network in the same transaction
        (create only if absent, like an address): Conflict when another endpoint holds it."""
        key, value = r.ep_key(name, self.host, endpoint_id), record.to_json().encode()
        mkey, claim = r.mac_key(name, record.mac), r.MacClaim(self.host, endpoint_id).to_json().encode()
        try:
            for _ in range(4):
                if self._leased([Absent(mkey)], lambda lease: [Put(mkey, claim, lease), Put(key, value, lease)]):
                    return
                held = self.kv.get(mkey)
                if held is None:
                    continue  # released meanwhile: claim it again
                if held == claim:  # ours already (a retried call, a resync)
                    if self._leased(
                        [ValueIs(mkey, held)], lambda lease: [Put(mkey, claim, lease), Put(key, value, lease)]
                    ):
                        return
                    continue
                try:
                    holder = r.parse_mac_claim(mkey, held)
                    who = f"a container on host {holder.host}" if holder.host != self.host else "another container here"
                except r.InvalidRecord:
                    who = "a record pybridge did not write"
                raise Conflict(f"MAC {record.mac} is in use on cluster network {name} by {who}")
        except ClusterUnavailable as e:
            raise self._fail(f"endpoint {endpoint_id[:12]} of cluster network {name}", e) from e
        raise Conflict(f"MAC {record.mac} on cluster network {name}: its claim changed too often, try again")

    def _my_macs(self, name: str, endpoint_id: str | None = None, held: dict[str, bytes] | None = None) -> list[str]:
        """Keys of the MACs this host (that endpoint of it) claims on the network, among `held`
        (the network's mac/ keys, read now when not given)."""
        if held is None:
            held, _ = self.kv.range(r.mac_prefix(name))
        out = []
        for k, v in held.items():
            try:
                c = r.parse_mac_claim(k, v)
            except r.InvalidRecord:
                continue
            if c.host == self.host and endpoint_id in (None, c.endpoint):
                out.append(k)
        return out

    def withdraw_endpoint(self, name: str, endpoint_id: str) -> None:
        try:
            self.kv.txn(
                [],
                [Delete(r.ep_key(name, self.host, endpoint_id))]
                + [Delete(k) for k in self._my_macs(name, endpoint_id)],
            )
        except ClusterUnavailable as e:
            log.warning("endpoint %s of cluster network %s: withdrawn in etcd later (%s)", endpoint_id[:12], name, e)
            self._dirty.set()

    def publish_names(self, name: str, containers: Iterable[ContainerInfo]) -> None:
        """This host's containers on the network, by name (from Docker, via the DNS watcher).
        Returns at once: a thread of its own writes them, so that an etcd that does not answer
        never holds up the DNS of local networks."""
        with self._names_lock:
            self._names[name] = list(containers)
            self._names_pending.add(name)
        self._names_due.set()

    def _names_again(self, networks: Iterable[LocalNetwork]) -> None:
        """The resync's part: the names of these networks are written again (by the names
        thread), as last reported, or as the resync read them where none was reported yet."""
        with self._names_lock:
            for n in networks:
                self._names.setdefault(n.name, list(n.names))
                self._names_pending.add(n.name)
        self._names_due.set()

    def run_names(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._names_due.wait(1.0)
            self._names_due.clear()
            self.write_names()

    def write_names(self) -> None:
        """One pass of the names thread: the networks whose names are due, as they are now."""
        with self._names_lock:
            due, self._names_pending = self._names_pending, set()
            wanted = {name: list(self._names[name]) for name in due if name in self._names}
        for name, containers in wanted.items():
            try:
                self._put_names(name, containers)
            except (ClusterUnavailable, LeaseExpired) as e:
                log.warning("names of cluster network %s: published later (%s)", name, e)
                self._dirty.set()  # the resync has them written again
            except Exception:
                log.exception("names of cluster network %s", name)
                self._dirty.set()

    def _put_names(self, name: str, containers: list[ContainerInfo]) -> None:
        prefix = r.name_prefix(name, self.host)
        lease = self._session()
        have, _ = self.kv.range(prefix)
        want = {
            r.name_key(name, self.host, c.id): r.name_to_json(c).encode()
            for c in containers
            if r.split_key(r.name_key(name, self.host, c.id))
        }
        deletes = [k for k in have if k not in want]
        again = self._names_lease.get(name) != lease
        puts = {k: v for k, v in want.items() if again or have.get(k) != v}
        if puts or deletes:
            self._apply_leased(puts, deletes)
        self._names_lease[name] = lease

    # --- background: session, resync, watch
    def run_session(self, stop: threading.Event) -> None:
        """Keep this host's lease alive; when it is new (first start, or it expired while etcd
        was away) or something waits to be written, write this host's keys again."""
        while not stop.is_set():
            try:
                with self._lock:
                    lease = self._lease
                alive = bool(lease) and self.kv.keepalive(lease)
                if not alive:
                    if lease:
                        self._lease_gone(lease)
                    self._dirty.set()
                if self._dirty.is_set():
                    self._dirty.clear()
                    self.resync()
                if not self.reachable:
                    log.info("cluster: etcd answers")
                self.reachable = True
            except LeaseExpired:
                with self._lock:
                    self._lease_gone(self._lease)
            except ClusterUnavailable as e:
                if self.reachable:
                    log.warning("cluster: %s", e)
                self.reachable = False
                self._dirty.set()
            except Exception:
                log.exception("cluster session")
                self._dirty.set()
            stop.wait(max(1.0, self.grace / 4) if self.reachable else 1.0)

    def resync(self) -> None:
        """etcd's keys of this host := the local state (members, addresses, endpoints, names);
        alone, so that no plugin call changes either between the read and the writes."""
        lease = self._session()
        with self._turns.alone():
            networks = self.local()
            mine = {n.name for n in networks}
            for name in self._reserve.networks() - mine:
                self._reserve.forget(name)
            listings = self._listings()
            for n in networks:
                self._resync_network(n, lease, listings.get(n.name, {}))
            self._names_again(networks)
            # what this host published for networks it no longer has
            own, _ = self.kv.range(r.host_prefix(self.host))
            index, _ = self.kv.range(r.PREFIX + "members/")
            tunnel = r.tunnel_key(self.host)
            if self.tunnel is not None:  # (again under the lease of now)
                self.kv.txn([], [Put(tunnel, self.tunnel.to_json().encode(), lease)])
            stale = [k for k in own if _network_of(k, self.host) not in mine and not (k == tunnel and self.tunnel)]
            stale += [k for k in index if k.rsplit("/", 1)[-1] == self.host and k.split("/")[-2] not in mine]
            self._apply([Delete(k) for k in stale])
        self.resyncs += 1

    def _resync_network(self, n: LocalNetwork, lease: int, listings: dict[int, dict[str, int]]) -> None:
        key = r.net_key(n.name)
        record_ops: list[Operation] = [
            Put(key, n.record.to_json().encode()),
            Put(r.vni_key(n.record.vni), n.name.encode()),
        ]
        if not self.kv.txn([Absent(key), Absent(r.vni_key(n.record.vni))], record_ops):
            raw = self.kv.get(key)
            if raw is not None and r.parse_net(key, raw) != n.record:
                log.error("cluster network %s: etcd's record differs from this host's (VNI or subnets)", n.name)
        self.kv.txn([], self._membership(n.name, lease))
        aux = r.AddrRecord("", "aux").to_json().encode()
        for a in n.record.aux:  # the network's, for every host
            k = r.addr_key(n.name, int(ipaddress.ip_address(a)))
            if not self.kv.txn([Absent(k)], [Put(k, aux)]) and self.kv.get(k) != aux:
                log.error("cluster network %s: aux address %s is held by a container", n.name, a)
        held, _ = self.kv.range(r.addr_prefix(n.name))
        wanted = {r.addr_key(n.name, a): kind for a, kind in n.addresses}
        for ra in self._reserve.addresses(n.name):  # kept while etcd still has it as this host's
            k = r.addr_key(n.name, ra)
            listed = listings.get(ra, {})
            own, others = listed.get(self.host), [c for h, c in listed.items() if h != self.host]
            if k in held and self._mine(k, held[k]) and not (others and (own is None or min(others) < own)):
                wanted.setdefault(k, "reserve")
            else:
                self._reserve.drop(n.name, ra)
        lost: list[tuple[int, str]] = []
        kept: list[tuple[int, str, bytes]] = []  # still this host's, under an older lease
        for k, kind in wanted.items():
            address = int(k.rsplit("/", 1)[-1], 16)
            listed = listings.get(address, {})
            own, others = listed.get(self.host), [c for h, c in listed.items() if h != self.host]
            listing = r.listing_key(n.name, self.host, address)
            if others and (own is None or min(others) < own):
                self._clash(n.name, address)  # another host listed it first (this host was cut off)
            elif k in held and self._mine(k, held[k]):
                kept.append((address, kind, held[k]))
            elif k in held and own is not None:
                # its claim in addr/ was deleted and made anew by another host; this host listed
                # the address first, so it holds it for every host all the same
                log.warning(
                    "cluster network %s: the claim of %s, a container's here, was made anew by %s: "
                    "ignored, this host listed the address first",
                    n.name,
                    ipaddress.ip_address(address),
                    _holder_in(k, held[k]),
                )
                self.kv.txn([], [Put(listing, b"{}", lease)])
            elif k not in held:
                lost.append((address, kind))
            else:
                self._clash(n.name, address)
        self._claim_kept(n.name, kept, lease)
        for address in self._claim_lost(n.name, lost):
            self._clash(n.name, address)
        stale = [k for k, v in held.items() if k not in wanted and self._mine(k, v)]
        stale += [
            r.listing_key(n.name, self.host, a)
            for a, hosts in listings.items()
            if self.host in hosts and r.addr_key(n.name, a) not in wanted
        ]
        eps, _ = self.kv.range(r.ep_prefix(n.name, self.host))
        want_eps = {r.ep_key(n.name, self.host, eid): rec.to_json().encode() for eid, rec in n.endpoints}
        stale += [k for k in eps if k not in want_eps]
        want_macs = {
            r.mac_key(n.name, rec.mac): r.MacClaim(self.host, eid).to_json().encode() for eid, rec in n.endpoints
        }
        macs, _ = self.kv.range(r.mac_prefix(n.name))
        self._claim_macs(n.name, want_macs, macs, lease)
        stale += [k for k in self._my_macs(n.name, held=macs) if k not in want_macs]
        ops: list[Operation] = [Put(k, v, lease) for k, v in want_eps.items()]
        ops += [Delete(k) for k in stale]
        self._apply(ops)

    def _clash(self, name: str, address: int) -> None:
        """Another host holds an address a container here has (this host was cut off past the
        grace and the address went to someone else): that container leaves the wire."""
        log.error(
            "cluster network %s: address %s of a container here is held by another host: taking that "
            "container off the network (remove it, or start it again for a new address)",
            name,
            ipaddress.ip_address(address),
        )
        self.clashes.setdefault(name, set()).add(address)
        try:
            self.on_clash(name, address)
        except Exception:
            log.exception("cluster network %s: taking %s off the network", name, ipaddress.ip_address(address))

    def start(self) -> None:
        stop = threading.Event()
        self._stop = stop
        self._threads = [
            threading.Thread(target=fn, args=(stop,), name=name, daemon=True)
            for fn, name in (
                (self.run_session, "pybridge-cluster"),
                (self.watch.run, "pybridge-cluster-watch"),
                (self.watch.run_notifier, "pybridge-cluster-notify"),
                (self.run_names, "pybridge-cluster-names"),
                (self.run_reserve, "pybridge-cluster-reserve"),
            )
        ]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 10.0) -> None:
        """The background threads end (each within a wait of its loop, or an etcd call)."""
        stop = getattr(self, "_stop", None)
        if stop is None:
            return
        stop.set()
        for t in getattr(self, "_threads", []):
            t.join(timeout)

    # the other hosts, as the watch follows them
    @property
    def on_endpoints(self) -> Callable[[str, Peers], None]:
        return self.watch.on_endpoints

    @on_endpoints.setter
    def on_endpoints(self, fn: Callable[[str, Peers], None]) -> None:
        self.watch.on_endpoints = fn

    @property
    def on_names(self) -> Callable[[str, list[ContainerInfo]], None]:
        return self.watch.on_names

    @on_names.setter
    def on_names(self, fn: Callable[[str, list[ContainerInfo]], None]) -> None:
        self.watch.on_names = fn

    def remote_peers(self, name: str) -> Peers:
        return self.watch.peers(name)

    @property
    def loaded(self) -> bool:
        return self.watch.loaded

    @property
    def refused(self) -> int:
        return self.watch.refused

    def remote_names(self, name: str) -> list[ContainerInfo]:
        return self.watch.names(name)

    def snapshot(self) -> dict[str, Any]:
        """For `pybridge cluster` and the metrics: this host, reachability, resyncs so far, and how
        many records from etcd were refused (not what pybridge writes)."""
        return {
            "host": self.host,
            "reachable": self.reachable,
            "resyncs": self.resyncs,
            "refused_records": self.watch.refused,
            "tunnel": self.describe_tunnel(),
            "clashes": {n: sorted(str(ipaddress.ip_address(a)) for a in s) for n, s in self.clashes.items() if s},
            "reserve": {
                "hits": self._reserve.hits,
                "misses": self._reserve.misses,
                "held": {n: len(self._reserve.addresses(n)) for n in self._reserve.networks()},
            },
        }
