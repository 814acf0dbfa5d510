"""The nftables firewall adapter: pybridge's own `inet` table, programmed as data.

Every change is one transaction of a few elements, whatever else the table or the host holds.
What must live in iptables is one static rule per backend and family (plugin.kernel.xtables),
and firewalld's table gets two (plugin.kernel.firewalld). Healing listens to the kernel's
nftables notifications (nftevents) instead of polling: only another process's change to our
table, or to the chains holding those rules, leads to a check, and the check reads our table alone.

The transactions are nftrules' JSON commands compiled by plugin.kernel.nftwire and sent on a
netlink socket of our own (plugin.kernel.nftsocket): no libnftables, whose cache reads every
other table first (and crashed the worker on a table a newer nft wrote: issue 18). What it
reads back is our table only, decoded by the types of our own sets. A fault in that machinery
(an unexpected error in pybridge's own code, a firewall tool killed by a signal) fails the call
that needed the firewall with a clear error, never the process, and is counted and kept for
`doctor` and the metrics (FirewallCounters.faults).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any, TypeVar, cast

from ..domain.errors import KernelError, KernelFault
from ..domain.model import Endpoint, Network
from . import nftevents, nftrules, nftwire
from .firewalld import FirewalldAccept
from .interfaces import FirewallCounters
from .nftsocket import NftSocket, _libc
from .xtables import ForwardAccept

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
T = TypeVar("T")

# every set of our table, by name: what its keys (and a map's values) are
SET_TYPES = {name: nftwire.set_type(decl) for name, decl in nftrules.SETS.items()}


class NftFirewall:
    def __init__(
        self,
        prefix: str,
        mark: int = nftrules.DEFAULT_MARK,
        netns: str | None = None,
        migrate: Callable[[], None] | None = None,
    ):
        self.prefix = prefix
        self.table = nftrules.table_name(prefix)
        self.mark = mark
        self.netns = netns
        self._argv0 = ["ip", "netns", "exec", netns] if netns else []
        self.nft = NftSocket(f"{self.table}-nft", opener=(lambda fn: _in_netns(netns, fn)) if netns else None)
        self.forward = ForwardAccept(prefix, mark, self._argv0, self._contained(self.nft.tables))
        self.firewalld = FirewalldAccept(
            prefix,
            mark,
            self._contained(self._run),
            self._contained(self.nft.tables),
            self._contained(self.nft.chain_rules),
        )
        self._migrate = migrate  # removes the chains an older pybridge kept in iptables
        self._migrated = False
        self._closed = threading.Event()
        self._monitors: list[socket.socket] = []  # the watch's notification sockets
        self._counters = FirewallCounters()
        self._count_lock = threading.Lock()
        self._foreign: tuple[str, ...] = ()  # bridges that are not ours, set by set_foreign or sync
        self._vxlan: nftrules.Elements = {}  # cluster mode's VXLAN filter, set by set_vxlan_members

    # FirewallPort ------------------------------------------------------------------------

    def supports(self, version: int) -> bool:
        return version in (4, 6)  # one inet table filters both families

    def sync(
        self, networks: Iterable[Network], endpoints: Iterable[Endpoint] = (), foreign: Iterable[str] | None = None
    ) -> None:
        """Replace our whole table in one transaction, and put the static iptables rule in place."""
        bridges = self._foreign if foreign is None else tuple(foreign)
        self._change(
            nftrules.full(
                self.table, self.mark, nftrules.merge(nftrules.desired(networks, endpoints, bridges), self._vxlan)
            )
        )
        self._foreign = bridges
        self._contained(self.forward.ensure)()
        self.firewalld.ensure()
        if not self._migrated and self._migrate is not None:
            self._contained(self._migrate)()
        self._migrated = True

    def add_network(self, network: Network) -> None:
        self._change(nftrules.add_network(self.table, network))

    def remove_network(self, network: Network, endpoints: Iterable[Endpoint] = ()) -> None:
        self._change(nftrules.remove_network(self.table, network, endpoints))

    def change_ports(self, network: Network, before: Endpoint | None, after: Endpoint | None) -> None:
        self._change(nftrules.change_ports(self.table, network, before, after))

    def set_foreign(self, foreign: Iterable[str], own: Iterable[str] = ()) -> None:
        mine = set(own)
        bridges = tuple(b for b in foreign if b not in mine)
        self._change(nftrules.set_foreign(self.table, bridges, own))
        self._foreign = bridges

    def foreign(self) -> tuple[str, ...]:
        return self._foreign

    def set_vxlan_members(self, port: int, members: Iterable[tuple[int, str]], tunnel: str = "") -> None:
        """Cluster mode: VXLAN on `port` of network VNI only from the hosts named with it in
        `members` ((VNI, underlay address) pairs), never from a container or a process of this
        host (port 0: no filter). Kept, and put back by every sync."""
        elements = nftrules.vxlan_elements(port, members, tunnel)
        self._change(nftrules.set_vxlan(self.table, elements))
        self._vxlan = elements

    def drift(self, networks: Iterable[Network], endpoints: Iterable[Endpoint] = ()) -> list[str]:
        problems = nftrules.drift(
            self.mark, nftrules.merge(nftrules.desired(networks, endpoints, self._foreign), self._vxlan), self.listing()
        )
        return problems + self._contained(self.forward.problems)() + self.firewalld.problems()

    def listing(self) -> nftrules.Listed:
        """Our table as the kernel holds it, asked for by name: chains, rule counts, sets whose
        declaration is ours (one declared otherwise counts as missing) and their elements."""
        return self._contained(self._listing)()

    def _listing(self) -> nftrules.Listed:
        family, name = nftwire.FAMILIES[nftrules.FAMILY], nftwire.text(self.table)
        out = nftrules.Listed()
        if self.nft.get(nftwire.GETTABLE, family, nftwire.attr(1, name)) is None:
            return out
        out.exists = True
        by_table = nftwire.attr(1, name)

        def ours(kind: int, body: bytes = by_table) -> Iterator[dict[int, bytes]]:
            # the kernel filters rule and set dumps by the table named; chain dumps (kernel 6.18)
            # it does not: every object's table is checked here, before anything else is read
            for _, attrs in self.nft.dump(kind, family, body):
                if nftwire.name_of(attrs.get(1)) == self.table:
                    yield attrs

        for body in ours(nftwire.GETCHAIN):
            chain = nftwire.decode_chain(body)
            out.chains.setdefault(chain.name, 0)
            if chain.base is not None:
                out.base[chain.name] = chain.base
        for body in ours(nftwire.GETRULE):
            chain_name = nftwire.name_of(body.get(2))
            out.chains[chain_name] = out.chains.get(chain_name, 0) + 1
        for body in ours(nftwire.GETSET):
            set_name = nftwire.name_of(body.get(2))
            st = SET_TYPES.get(set_name)
            if st is None or not nftwire.declared_as(st, body):
                continue
            out.sets.add(set_name)
            elements = out.elements.setdefault(set_name, {})
            for part in ours(nftwire.GETSETELEM, by_table + nftwire.attr(2, nftwire.text(set_name))):
                for key, value in nftwire.decode_elements(st, part):
                    elements[nftrules.normalize(key)] = nftrules.normalize(value)
        return out

    def remove_all(self) -> None:
        """Delete our table and the static rules (uninstall, tests)."""
        tbl = {"family": nftrules.FAMILY, "name": self.table}
        self._run([{"add": {"table": dict(tbl)}}, {"delete": {"table": dict(tbl)}}])
        self._contained(self.forward.remove)()
        self.firewalld.remove()
        if self._migrate is not None:
            self._contained(self._migrate)()

    def counters(self) -> FirewallCounters:
        with self._count_lock:
            return self._counters

    def watch(self, on_change: Callable[[], None], legacy_every: float = 2.0) -> None:
        """Call on_change when another process changed our table, or the iptables chain that
        holds our static rule; blocks (run it in a thread). The legacy iptables backend sends no
        events: where it holds a filter table, our rule there is checked every legacy_every s."""
        Monitor(self, on_change, legacy_every).run()

    def close(self) -> None:
        """Close the socket and stop every monitor (tests, shutdown)."""
        self._closed.set()
        # each watch sees _closed within a second and closes its socket
        self.nft.close()

    # ---------------------------------------------------------------------------------------

    def _run(self, commands: list[dict[str, Any]]) -> None:
        """nftrules' commands, compiled and sent as one transaction (a new compiler each time:
        the sets a transaction declares are known to it alone)."""
        self.nft.transact(nftwire.Compiler(SET_TYPES).compile(commands))

    def _change(self, commands: list[dict[str, Any]]) -> None:
        """One change transaction, counted with its duration (for the metrics)."""
        started = time.perf_counter()
        ok = False
        try:
            self._contained(self._run)(commands)
            ok = True
        finally:
            took = time.perf_counter() - started
            with self._count_lock:
                c = self._counters
                self._counters = replace(
                    c, changes=c.changes + 1, failures=c.failures + (not ok), seconds=c.seconds + took
                )

    def _contained(self, fn: Callable[..., T]) -> Callable[..., T]:
        """fn, with a fault in it (an error that is not the kernel's or a tool's answer: a bug of
        ours, a tool killed by a signal) logged, counted as a fault and raised as a KernelError
        that names it, so that the call fails and the process goes on."""

        def call(*args: Any, **kwargs: Any) -> T:
            try:
                return fn(*args, **kwargs)
            except KernelFault as e:
                log.error("firewall fault: %s", e)
                self._fault(str(e))
                raise
            except KernelError:
                raise
            except Exception as e:  # noqa: BLE001 - containing faults is the point
                log.exception("firewall fault in %s", getattr(fn, "__name__", "firewall work"))
                what = f"{type(e).__name__}: {e}"[:300]
                self._fault(what)
                raise KernelFault(f"firewall fault (see the plugin's log): {what}") from None

        return call

    def _fault(self, what: str) -> None:
        with self._count_lock:
            c = self._counters
            self._counters = replace(c, faults=c.faults + 1, last_fault=what)


def _in_netns(netns: str, fn: Callable[[], T]) -> T:
    """fn() in the network namespace netns (by a thread that enters it for that alone)."""
    out: list[Any] = []

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc().setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            out.append((True, fn()))
        except Exception as e:  # handed to the caller's thread
            out.append((False, e))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    ok, value = out[0]
    if not ok:
        raise value
    return cast(T, value)


class Monitor:
    """Follows the kernel's nftables notifications (plugin/kernel/nftevents.py) and tells which
    transactions matter to us: those of another process that touched our table, the iptables
    chain of our static rule or firewalld's chains of our rules."""

    def __init__(self, fw: NftFirewall, on_change: Callable[[], None], legacy_every: float):
        self.fw = fw
        self.on_change = on_change
        self.legacy_every = legacy_every

    def touches(self, change: nftevents.Change) -> bool:
        """Whether one change is to our table, to the iptables filter table or its FORWARD chain
        (where the static rule lives), or to firewalld's table being made or its forward and
        input chains (where firewalld's rules of ours live)."""
        if change.family == nftrules.FAMILY and change.table == self.fw.table:
            return True
        if change.family == "inet" and change.table == "firewalld":
            return change.kind == "table" or change.chain in ("filter_FORWARD", "filter_INPUT")
        return (
            change.family in ("ip", "ip6")
            and change.table == "filter"
            and (change.kind == "table" or change.chain == "FORWARD")
        )

    def run(self) -> None:
        if self.fw._closed.is_set():
            return
        sock = _in_netns(self.fw.netns, nftevents.open_socket) if self.fw.netns else nftevents.open_socket()
        self.fw._monitors.append(sock)
        try:
            self.on_change()  # whatever happened while nobody listened
            touched, due = False, False
            last_legacy = time.monotonic()
            while not self.fw._closed.is_set():
                legacy = self.legacy_every > 0  # 0: no poll of iptables-legacy (events still heal)
                timeout = (
                    0.05
                    if due
                    else min(1.0, max(0.0, self.legacy_every - (time.monotonic() - last_legacy)))
                    if legacy
                    else 1.0
                )
                ready, _, _ = select.select([sock], [], [], timeout)
                if ready:
                    try:
                        data = sock.recv(1 << 20)
                    except OSError as e:
                        if self.fw._closed.is_set():
                            return
                        if e.errno != errno.ENOBUFS:
                            raise KernelError(f"nftables notifications: {e}") from None
                        due = True  # notifications were lost: check
                        continue
                    if not data:
                        if self.fw._closed.is_set():
                            return
                        raise KernelError("nftables notifications stopped")
                    for event in nftevents.parse(data):
                        if isinstance(event, nftevents.Generation):
                            due = due or (touched and event.process != self.fw.nft.name)
                            touched = False
                        else:
                            touched = touched or self.touches(event)
                    continue
                if due:  # a burst is over: check once
                    due = False
                    self.on_change()
                if legacy and time.monotonic() - last_legacy >= self.legacy_every:
                    last_legacy = time.monotonic()
                    if self.fw.forward.legacy_active() and self.fw.forward.problems(legacy_only=True):
                        self.on_change()
        finally:
            self.fw._monitors.remove(sock)
            sock.close()
