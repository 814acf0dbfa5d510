"""The DNS runtime: one asyncio loop on its own thread, UDP and TCP listeners on each network's
gateway addresses (never anywhere else), forwarding with timeouts and a bound on concurrency.

Other threads talk to it only through configure()/set_snapshot(), which swap whole objects.
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

from .answer import answer, failure, render
from .records import Snapshot

log = logging.getLogger(__name__)

FORWARD_TIMEOUT = 2.0
MAX_FORWARDS = 256          # per network, in flight
MAX_TCP_CLIENTS = 64        # per listener
TCP_IDLE = 10.0


@dataclass(frozen=True)
class NetSpec:
    """What the DNS of one network serves and where it forwards."""

    name: str
    gateways: tuple[str, ...]
    upstreams: tuple[tuple[str, int], ...] = ()
    forward: bool = True
    log_queries: bool = False


@dataclass
class _Net:
    spec: NetSpec
    listeners: list = field(default_factory=list)
    inflight: int = 0
    log: collections.deque = field(default_factory=lambda: collections.deque(maxlen=1000))


CACHE_MAX = 4096


class AnswerCache:
    """Ready wire answers of one snapshot, keyed by the query after its ID. A name with several
    addresses keeps one answer per rotation and cycles through them (round robin survives)."""

    def __init__(self):
        self.entries: dict[bytes, list] = {}

    def put(self, wire: bytes, bodies: list[bytes]) -> None:
        if len(self.entries) >= CACHE_MAX:
            self.entries = {}
        self.entries[wire[2:]] = [[b[2:] for b in bodies], 0]


class DnsServer:
    def __init__(self, port: int = 53, ttl: int = 10):
        self.port, self.ttl = port, ttl
        self._nets: dict[str, _Net] = {}
        self._snapshots: dict[str, Snapshot] = {}
        self._caches: dict[str, AnswerCache] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # control, from any thread
    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="pybridge-dns", daemon=True)
            self._thread.start()

    def configure(self, specs: dict[str, NetSpec]) -> None:
        """Listen for exactly these networks (by ID): start new listeners, stop gone ones."""
        self.start()
        asyncio.run_coroutine_threadsafe(self._reconcile(dict(specs)), self._loop).result(timeout=10)

    def set_snapshot(self, network_id: str, snapshot: Snapshot) -> None:
        self._snapshots = {**self._snapshots, network_id: snapshot}
        self._caches = {**self._caches, network_id: AnswerCache()}

    def snapshot(self, network_id: str) -> Snapshot | None:
        return self._snapshots.get(network_id)

    def spec_name(self, network_id: str) -> str | None:
        net = self._nets.get(network_id)
        return net.spec.name if net else None

    def query_log(self, network_id: str) -> list[dict]:
        net = self._nets.get(network_id)
        return list(net.log) if net else []

    def listening(self) -> dict[str, list[str]]:
        return {nid: list(n.spec.gateways) for nid, n in self._nets.items() if n.listeners}

    def stop(self) -> None:
        if self._loop is not None:
            self.configure({})

    # inside the loop
    async def _reconcile(self, specs: dict[str, NetSpec]) -> None:
        for nid in [n for n in self._nets if n not in specs or self._nets[n].spec.gateways != specs[n].gateways]:
            for closer in self._nets.pop(nid).listeners:
                closer()
        for nid, spec in specs.items():
            if nid in self._nets:
                self._nets[nid].spec = spec
                continue
            net = self._nets[nid] = _Net(spec)
            for gw in spec.gateways:
                try:
                    udp = _UdpListener(self, nid, gw)
                    server = await asyncio.start_server(
                        lambda r, w, nid=nid: self._tcp(nid, r, w), host=gw, port=self.port, limit=70000)
                    net.listeners += [udp.close, server.close]
                except OSError as e:
                    log.error("DNS for network %s cannot listen on %s:%d: %s", spec.name, gw, self.port, e)
        self._snapshots = {k: v for k, v in self._snapshots.items() if k in specs}
        self._caches = {k: v for k, v in self._caches.items() if k in specs}

    async def resolve(self, nid: str, wire: bytes, peer: str, limit: int | None) -> bytes | None:
        started = time.perf_counter()
        net = self._nets.get(nid)
        if net is None:
            return None
        snapshot, cache = self._snapshots.get(nid), self._caches.get(nid)
        decision = answer(snapshot, wire, ttl=self.ttl, forward=net.spec.forward, limit=limit)
        reply = decision.reply
        if decision.forward is not None:
            reply, decision.rcode = await self._forward(net, decision.forward, limit)
        elif decision.rotations and limit is None and cache is not None:
            bodies = [answer(snapshot, wire, ttl=self.ttl, forward=False, rotate=k).reply
                      for k in range(min(decision.rotations, 8))]
            cache.put(wire, bodies)
        if decision.qname and net.spec.log_queries:
            entry = {"time": round(time.time(), 3), "client": peer, "name": decision.qname,
                     "type": decision.qtype, "rcode": decision.rcode,
                     "ms": round((time.perf_counter() - started) * 1000, 3)}
            net.log.append(entry)
            log.info("dns %s: %s", net.spec.name, entry)
        return reply

    async def _forward(self, net: _Net, query: dns.message.Message, limit: int | None) -> tuple[bytes, str]:
        if not net.spec.upstreams or net.inflight >= MAX_FORWARDS:
            return failure(query), "SERVFAIL"
        net.inflight += 1
        try:
            for host, port in net.spec.upstreams:
                try:
                    resp = await dns.asyncquery.udp(query, host, port=port, timeout=FORWARD_TIMEOUT)
                    if resp.flags & dns.flags.TC and limit is None:
                        resp = await dns.asyncquery.tcp(query, host, port=port, timeout=FORWARD_TIMEOUT)
                    return render(resp, limit or 65535), dns.rcode.to_text(resp.rcode())
                except (dns.exception.DNSException, OSError, EOFError, ValueError):
                    continue
            return failure(query), "SERVFAIL"
        finally:
            net.inflight -= 1

    async def _tcp(self, nid: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        net = self._nets.get(nid)
        peer = writer.get_extra_info("peername") or ("?",)
        try:
            if net is None or len(asyncio.all_tasks()) > MAX_TCP_CLIENTS * max(1, len(self._nets)) + 64:
                return
            while True:
                size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), TCP_IDLE), "big")
                if size < 12:
                    return
                wire = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE)
                reply = await self.resolve(nid, wire, peer[0], 65535)
                if reply is None:
                    return
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, OSError):
            pass
        except Exception:
            log.exception("DNS TCP client %s", peer[0])
        finally:
            writer.close()


class _UdpListener:
    """A blocking UDP socket on its own thread: answers found in the AnswerCache go straight
    back (the GIL is released in recvfrom/sendto); everything else goes to the asyncio loop."""

    # One socket and thread per address: a second thread on SO_REUSEPORT measured slower (the
    # GIL serialises the Python part of the loop).
    THREADS = 1

    def __init__(self, server: DnsServer, nid: str, address: str):
        self.server, self.nid = server, nid
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.socks = []
        try:
            for _ in range(self.THREADS):
                sock = socket.socket(family, socket.SOCK_DGRAM)
                self.socks.append(sock)
                if self.THREADS > 1:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((address, server.port))
        except OSError:
            for sock in self.socks:
                sock.close()
            raise
        self._closed = False
        for sock in self.socks:
            threading.Thread(target=self._run, args=(sock,), name=f"pybridge-dns-udp-{address}",
                             daemon=True).start()

    def _run(self, sock: socket.socket) -> None:
        # The hot loop: locals bound once, no calls but the cache lookup for a cached answer.
        server, nid, loop = self.server, self.nid, self.server._loop
        recvfrom, sendto = sock.recvfrom, sock.sendto
        while True:
            try:
                data, addr = recvfrom(4096)
            except OSError:
                if self._closed:
                    return
                continue
            if addr is None or self._closed:  # shutdown() wakes recvfrom with nothing
                return
            try:
                cache = server._caches.get(nid)
                entry = cache.entries.get(data[2:]) if cache is not None and len(data) >= 12 else None
                if entry is not None and not server._nets[nid].spec.log_queries:
                    bodies, turn = entry
                    entry[1] = turn + 1
                    sendto(data[:2] + bodies[turn % len(bodies)], addr)
                else:
                    loop.call_soon_threadsafe(self._slow, sock, data, addr)
            except Exception:
                log.exception("DNS query from %s", addr[0])

    def _slow(self, sock: socket.socket, data: bytes, addr) -> None:
        asyncio.get_running_loop().create_task(self._reply(sock, data, addr))

    async def _reply(self, sock: socket.socket, data: bytes, addr) -> None:
        try:
            reply = await self.server.resolve(self.nid, data, addr[0], None)
            if reply is not None and not self._closed:
                sock.sendto(reply, addr)
        except Exception:
            log.exception("DNS query from %s", addr[0])

    def close(self) -> None:
        self._closed = True
        for sock in self.socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
