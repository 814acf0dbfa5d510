"""The DNS's sockets: one UDP and one TCP listener per gateway address of a network.

Who may ask: each socket is bound to the network's bridge (SO_BINDTODEVICE), so the kernel
delivers only packets that arrive on that bridge (queries from the host itself count as arriving
on the bridge that holds the address), and a query whose source is outside the network's subnets
is dropped without an answer. Nothing else ever reaches the resolver: not another network's
containers, not Docker's bridges, not a machine that routes to the gateway.

What may pile up: UDP queries that need the event loop wait in a bounded backlog (dropped when it
is full); TCP has a connection limit per listener and per client, an idle limit between queries
and a write limit for answers a client does not read. When a listener is full, the oldest idle
connection (else the oldest) makes room for the new one, so a new client is always heard
(RFC 7766 lets a server close connections under load).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import threading
from collections import Counter
from typing import TYPE_CHECKING, Iterable

from .cache import splice
from .mmsg import DatagramBatch

if TYPE_CHECKING:
    from .server import DnsServer

log = logging.getLogger(__name__)

SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
UDP_BACKLOG = 512  # queries waiting for the event loop, per listener
BATCH = 32  # queries taken, and cached answers sent, per system call
TCP_PER_LISTENER = 64
TCP_PER_CLIENT = 8
TCP_IDLE = 10.0  # seconds a connection may wait for its next query (or its rest)
TCP_WRITE = 5.0  # seconds an answer may wait for a client that does not read
TCP_QUERIES = 1000  # queries per connection
TCP_SNDBUF = 32768


def bound_socket(kind: int, address: str, port: int, device: str) -> socket.socket:
    """A socket on address:port that receives only what arrives on device."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, device.encode())
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
            sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class SourceFilter:
    """Whether a client address lies inside the network's subnets. The hot path asks once per
    packet, so answers are remembered (a bounded memo)."""

    def __init__(self, subnets: Iterable[str]):
        self._nets = [ipaddress.ip_network(s) for s in subnets]
        self.seen: dict[str, bool] = {}  # read inline by the UDP hot loop; cleared, never replaced
        self.refused = 0

    def __call__(self, address: str) -> bool:
        ok = self.seen.get(address)
        if ok is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:  # a scoped (link-local) source, or worse
                ok = False
            else:
                ok = any(ip in net for net in self._nets)
            if len(self.seen) >= 4096:
                self.seen.clear()
            self.seen[address] = ok
        if not ok:
            self.refused += 1
        return ok


class Backlog:
    """A count of waiting work bounded by a limit, shared by two threads."""

    def __init__(self, limit: int):
        self.limit, self.value, self.peak, self.dropped = limit, 0, 0, 0
        self._lock = threading.Lock()

    def try_add(self) -> bool:
        with self._lock:
            if self.value >= self.limit:
                self.dropped += 1
                return False
            self.value += 1
            self.peak = max(self.peak, self.value)
            return True

    def done(self) -> None:
        with self._lock:
            self.value -= 1


class UdpListener:
    """A blocking UDP socket on its own thread: answers found in the cache go straight back, a
    batch of them per system call (the GIL is released in the calls); everything else waits in
    the bounded backlog for the event loop."""

    def __init__(
        self, server: DnsServer, nid: str, address: str, device: str, allows: SourceFilter, log_queries: bool = False
    ):
        self.server, self.nid, self.allows = server, nid, allows
        self.log_queries = log_queries  # logged queries skip the cache (the loop logs them)
        self.backlog = Backlog(UDP_BACKLOG)
        self.cached = [0] * 16  # answers sent from the cache, by rcode (this thread counts)
        self.sock = bound_socket(socket.SOCK_DGRAM, address, server.port, device)
        self._closed = False
        threading.Thread(target=self._run, name=f"pybridge-dns-udp-{address}", daemon=True).start()

    def _run(self) -> None:
        # The hot loop: locals bound once, no calls but the cache lookup for a cached answer.
        # Queries come in batches and the cache's answers go back in one call (mmsg.py).
        server, nid, allows, backlog = self.server, self.nid, self.allows, self.backlog
        loop, seen, cached = server.loop, self.allows.seen, self.cached
        if loop is None:  # listeners are made by the running server, inside its loop
            raise RuntimeError("the DNS server's event loop is not running")
        batch = DatagramBatch(self.sock, BATCH)
        receive, items, reply, flush = batch.receive, batch.items, batch.reply, batch.flush
        find = bytes.find
        while True:
            try:
                n = receive()
            except OSError:
                if self._closed:
                    return
                continue
            if self._closed:  # shutdown() wakes the receive
                return
            for i, (source, data) in enumerate(items() if n else ()):
                if not (seen.get(source) or allows(source)):
                    continue  # not from this network: no answer at all
                try:
                    cache = server.caches.get(nid)
                    if cache is not None and not self.log_queries:
                        spelled = cache.exact.get(data[2:])  # asked before, spelled this way
                        if spelled is not None:
                            entry = spelled.entry
                            turn = entry.turn % len(spelled.bodies)
                            body = spelled.bodies[turn]
                            if body is not None:
                                entry.turn = turn + 1
                                reply(i, data[:2] + body)
                                cached[body[1] & 15] += 1
                                continue
                        qend = find(data, b"\0", 12) + 1  # as cache.question_end(), inline
                        key = data[2:12] + data[12:qend].lower() + data[qend:] if qend > 13 else None
                        hit = cache.entries.get(key) if key is not None else None
                        if hit is not None:  # asked before, spelled otherwise
                            turn = hit.turn % len(hit.bodies)
                            body = hit.bodies[turn]
                            if body is not None:
                                hit.turn = turn + 1
                                answer = splice(data, body, qend)
                                reply(i, answer)
                                cached[body[1] & 15] += 1
                                cache.spell(data, hit, turn, answer[2:])
                                continue
                    if backlog.try_add():
                        loop.call_soon_threadsafe(self._slow, data, batch.peer(i))
                except Exception:
                    log.exception("DNS query from %s", source)
            try:
                flush()
            except Exception:
                log.exception("DNS replies on %s", self.sock.getsockname()[0])

    def _slow(self, data: bytes, addr) -> None:
        asyncio.get_running_loop().create_task(self._reply(data, addr))

    async def _reply(self, data: bytes, addr) -> None:
        try:
            reply = await self.server.resolve(self.nid, data, addr[0], tcp=False)
            if reply is not None and not self._closed:
                self.sock.sendto(reply, addr)
        except Exception:
            log.exception("DNS query from %s", addr[0])
        finally:
            self.backlog.done()

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def reset(writer: asyncio.StreamWriter) -> None:
    """Drop a connection with a RST: a plain close would queue a FIN behind answers the client
    does not read, and the kernel would keep the socket (and its buffers) for minutes."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class _Conn:
    __slots__ = ("writer", "client", "idle")

    def __init__(self, writer: asyncio.StreamWriter, client: str):
        self.writer, self.client, self.idle = writer, client, True


class TcpListener:
    """TCP on one gateway address, inside the event loop."""

    def __init__(self, server: DnsServer, nid: str, address: str, device: str, allows: SourceFilter):
        self.server, self.nid, self.address, self.device, self.allows = server, nid, address, device, allows
        self.conns: dict[int, _Conn] = {}  # in order of arrival
        self.per_client: Counter = Counter()
        self.evicted = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        sock = bound_socket(socket.SOCK_STREAM, self.address, self.server.port, self.device)
        try:
            self._server = await asyncio.start_server(self._handle, sock=sock, limit=70000)
        except BaseException:
            sock.close()
            raise

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns.values()):
            reset(conn.writer)

    def _admit(self, conn: _Conn) -> bool:
        if not self.allows(conn.client) or self.per_client[conn.client] >= TCP_PER_CLIENT:
            return False
        if len(self.conns) >= TCP_PER_LISTENER:  # make room: the oldest idle one, else the oldest
            victim = next((c for c in self.conns.values() if c.idle), None) or next(iter(self.conns.values()))
            self._forget(victim)
            reset(victim.writer)
            self.evicted += 1
        self.conns[id(conn)] = conn
        self.per_client[conn.client] += 1
        return True

    def _forget(self, conn: _Conn) -> None:
        if self.conns.pop(id(conn), None) is not None:
            self.per_client[conn.client] -= 1
            if self.per_client[conn.client] <= 0:
                del self.per_client[conn.client]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?",)
        conn = _Conn(writer, peer[0])
        if not self._admit(conn):
            reset(writer)  # no answer, no goodbye
            return
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, TCP_SNDBUF)
        writer.transport.set_write_buffer_limits(high=16384)
        clean = False
        try:
            for _ in range(TCP_QUERIES):
                conn.idle = True
                size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), TCP_IDLE), "big")
                conn.idle = False
                if size < 12:
                    break
                wire = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE)
                reply = await self.server.resolve(self.nid, wire, conn.client, tcp=True)
                if reply is None:
                    break
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await asyncio.wait_for(writer.drain(), TCP_WRITE)
            clean = True
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, OSError):
            pass
        except Exception:
            log.exception("DNS TCP client %s", conn.client)
        finally:
            self._forget(conn)
            if clean:
                writer.close()
            else:  # a client that stalls gets no graceful close
                reset(writer)
