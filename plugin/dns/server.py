"""The DNS runtime: one asyncio loop on its own thread, and a UDP and a TCP listener on each
network's gateway addresses, bound to the network's bridge (plugin/dns/listeners.py says who may
ask and what may pile up). Forwarding has timeouts and a bound on concurrency.

Other threads talk to it through configure(), set_snapshot() and the read-only accessors. Shared
maps (networks, snapshots, caches) are replaced whole under one lock, never edited in place, so
a reader always holds a consistent object without taking the lock.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import threading
import time
from dataclasses import dataclass, field

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode

from .answer import answer, failure, render
from .cache import AnswerCache, cache_key, question_end
from .listeners import TCP_PER_CLIENT, TCP_PER_LISTENER, UDP_BACKLOG, SourceFilter, TcpListener, UdpListener
from .records import Snapshot

log = logging.getLogger(__name__)

FORWARD_TIMEOUT = 2.0
MAX_FORWARDS = 256  # per network, in flight
TCP_LIMIT = 65535


@dataclass(frozen=True)
class NetSpec:
    """What the DNS of one network serves, to whom, and where it forwards."""

    name: str
    gateways: tuple[str, ...]
    bridge: str  # the only device queries are taken from
    subnets: tuple[str, ...]  # the only sources answered
    upstreams: tuple[tuple[str, int], ...] = ()
    forward: bool = True
    log_queries: bool = False
    host_suffix: str = ""  # names under it are never forwarded (see answer())
    host_domain: str = ""  # this network's domain under it (app.pybridge.internal)


@dataclass
class _Net:
    spec: NetSpec
    key: tuple  # what the listeners were made for
    udp: list = field(default_factory=list)
    tcp: list = field(default_factory=list)
    allows: SourceFilter = field(default_factory=lambda: SourceFilter(()))
    inflight: int = 0
    log: collections.deque = field(default_factory=lambda: collections.deque(maxlen=1000))
    # counted in the event loop (the listeners count what they answer from the cache)
    answered: dict = field(default_factory=dict)  # rcode text -> queries
    forwarded: int = 0
    forward_failures: int = 0

    def close(self) -> None:
        for listener in self.udp + self.tcp:
            listener.close()


def _listen_key(spec: NetSpec) -> tuple:
    """Listeners are made again when their addresses, bridge or subnets change, or when the
    bridge was made again (a socket stays bound to the old bridge's index)."""
    try:
        index = socket.if_nametoindex(spec.bridge)
    except OSError:
        index = None
    return spec.gateways, spec.bridge, spec.subnets, index


class DnsServer:
    def __init__(self, port: int = 53, ttl: int = 10):
        self.port, self.ttl = port, ttl
        self.loop: asyncio.AbstractEventLoop | None = None
        self.caches: dict[str, AnswerCache] = {}
        self._nets: dict[str, _Net] = {}
        self._snapshots: dict[str, Snapshot] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # control, from any thread
    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self.loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self.loop.run_forever, name="pybridge-dns", daemon=True)
            self._thread.start()

    def configure(self, specs: dict[str, NetSpec]) -> None:
        """Listen for exactly these networks (by ID): start new listeners, stop gone ones."""
        self.start()
        keyed = {nid: (spec, _listen_key(spec)) for nid, spec in specs.items()}
        loop = self.loop
        if loop is None:
            raise RuntimeError("the DNS server's event loop did not start")
        asyncio.run_coroutine_threadsafe(self._reconcile(keyed), loop).result(timeout=10)

    def set_snapshot(self, network_id: str, snapshot: Snapshot) -> None:
        """The network's names from now on. Its ready answers go, unless the names are the same
        (Docker's events that change none of them, a restart of the watcher: on a network of a
        thousand containers every answer would be rendered again)."""
        with self._lock:
            if self._snapshots.get(network_id) == snapshot:
                return
            self._snapshots = {**self._snapshots, network_id: snapshot}
            self.caches = {**self.caches, network_id: AnswerCache()}

    def snapshot(self, network_id: str) -> Snapshot | None:
        return self._snapshots.get(network_id)

    def spec_name(self, network_id: str) -> str | None:
        net = self._nets.get(network_id)
        return net.spec.name if net else None

    def query_log(self, network_id: str) -> list[dict]:
        net = self._nets.get(network_id)
        return list(net.log) if net else []

    def listening(self) -> dict[str, list[str]]:
        return {nid: list(n.spec.gateways) for nid, n in self._nets.items() if n.udp}

    def stats(self) -> dict:
        """What the listeners hold and refused, for tests and the operator."""
        nets = list(self._nets.values())
        udp = [u for n in nets for u in n.udp]
        tcp = [t for n in nets for t in n.tcp]
        return {
            "tcp_connections": sum(len(t.conns) for t in tcp),
            "tcp_evicted": sum(t.evicted for t in tcp),
            "tcp_limit_per_listener": TCP_PER_LISTENER,
            "tcp_limit_per_client": TCP_PER_CLIENT,
            "udp_backlog_max": max((u.backlog.peak for u in udp), default=0),
            "udp_backlog_dropped": sum(u.backlog.dropped for u in udp),
            "udp_backlog_limit": UDP_BACKLOG,
            "refused_sources": sum(n.allows.refused for n in nets),
            "cache_entries": {nid: len(c.entries) for nid, c in self.caches.items()},
        }

    def counters(self) -> dict[str, dict]:
        """Per network (by ID): its name, queries answered by rcode (cache hits included),
        queries forwarded and forwards that failed (no upstream, or none answered)."""
        out = {}
        for nid, net in list(self._nets.items()):
            answered = dict(net.answered)
            for listener in list(net.udp):
                for code, n in enumerate(listener.cached):
                    if n:
                        text = dns.rcode.to_text(dns.rcode.Rcode.make(code))
                        answered[text] = answered.get(text, 0) + n
            out[nid] = {
                "name": net.spec.name,
                "answered": answered,
                "forwarded": net.forwarded,
                "forward_failures": net.forward_failures,
            }
        return out

    def stop(self) -> None:
        if self.loop is not None:
            self.configure({})

    # inside the loop
    async def _reconcile(self, keyed: dict[str, tuple[NetSpec, tuple]]) -> None:
        nets = dict(self._nets)
        for nid in [n for n in nets if n not in keyed or nets[n].key != keyed[n][1]]:
            nets.pop(nid).close()
        for nid, (spec, key) in keyed.items():
            if nid in nets:
                nets[nid].spec = spec
                for listener in nets[nid].udp:
                    listener.log_queries = spec.log_queries
                continue
            net = nets[nid] = _Net(spec, key, allows=SourceFilter(spec.subnets))
            await self._listen(nid, net)
        with self._lock:
            self._nets = nets
            self._snapshots = {k: v for k, v in self._snapshots.items() if k in keyed}
            self.caches = {k: v for k, v in self.caches.items() if k in keyed}

    async def _listen(self, nid: str, net: _Net) -> None:
        for gw in net.spec.gateways:
            try:
                net.udp.append(UdpListener(self, nid, gw, net.spec.bridge, net.allows, net.spec.log_queries))
                tcp = TcpListener(self, nid, gw, net.spec.bridge, net.allows)
                await tcp.start()
                net.tcp.append(tcp)
            except OSError as e:
                log.error(
                    "DNS for network %s cannot listen on %s:%d (%s): %s",
                    net.spec.name,
                    gw,
                    self.port,
                    net.spec.bridge,
                    e,
                )

    async def resolve(self, nid: str, wire: bytes, peer: str, tcp: bool) -> bytes | None:
        """The answer to one query that arrived on network nid (UDP answers within the client's
        size limit, with TC when cut; TCP answers whole)."""
        started = time.perf_counter()
        net = self._nets.get(nid)
        if net is None:
            return None
        snapshot, cache = self._snapshots.get(nid), self.caches.get(nid)
        qend = question_end(wire) if not tcp and cache is not None else None
        key = cache_key(wire, qend) if qend is not None else None
        existing = cache.entries.get(key) if cache is not None and key is not None else None
        rotation = existing.take_turn() if existing is not None else (0 if key is not None else None)
        # the host asks from its own address on the bridge, a gateway of the network
        decision = answer(
            snapshot,
            wire,
            ttl=self.ttl,
            forward=net.spec.forward,
            limit=TCP_LIMIT if tcp else None,
            rotate=rotation,
            host_suffix=net.spec.host_suffix,
            from_host=peer in net.spec.gateways,
        )
        reply = decision.reply
        if decision.forward is not None:
            net.forwarded += 1
            reply, decision.rcode = await self._forward(net, decision.forward, decision.limit, tcp)
        elif cache is not None and key is not None and qend is not None and decision.rotations and reply is not None:
            entry = existing or cache.entry(key, decision.rotations)
            if existing is None:
                entry.take_turn()
            cache.fill(entry, rotation or 0, reply[2:], wire, qend)
        if decision.rcode:
            net.answered[decision.rcode] = net.answered.get(decision.rcode, 0) + 1
        if decision.qname and net.spec.log_queries:
            record = {
                "time": round(time.time(), 3),
                "client": peer,
                "name": decision.qname,
                "type": decision.qtype,
                "rcode": decision.rcode,
                "ms": round((time.perf_counter() - started) * 1000, 3),
            }
            net.log.append(record)
            log.info("dns %s: %s", net.spec.name, record)
        return reply

    async def _forward(self, net: _Net, query: dns.message.Message, limit: int, tcp: bool) -> tuple[bytes, str]:
        """Ask the upstreams over UDP. Only a TCP client's question is asked again over TCP when
        the UDP answer was cut: a UDP client gets at most its own limit, with TC set."""
        if not net.spec.upstreams or net.inflight >= MAX_FORWARDS:
            net.forward_failures += 1
            return failure(query), "SERVFAIL"
        net.inflight += 1
        try:
            for host, port in net.spec.upstreams:
                try:
                    resp = await dns.asyncquery.udp(query, host, port=port, timeout=FORWARD_TIMEOUT)
                    if tcp and resp.flags & dns.flags.TC:
                        resp = await dns.asyncquery.tcp(query, host, port=port, timeout=FORWARD_TIMEOUT)
                    return render(resp, limit), dns.rcode.to_text(resp.rcode())
                except (dns.exception.DNSException, OSError, EOFError, ValueError):
                    continue
            net.forward_failures += 1
            return failure(query), "SERVFAIL"
        finally:
            net.inflight -= 1
