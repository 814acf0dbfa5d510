"""Issue 8, items 2-4 and 11: the DNS answers only its own network, never amplifies, and cannot
be starved. The real server on loopback: "lo" stands in for the network's bridge, and clients
use distinct 127.x source addresses. Nothing here leaves the machine."""

import socket
import struct
import threading

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest

from plugin.dns.records import build
from plugin.dns.server import DnsServer, NetSpec
from plugin.domain.model import ContainerInfo

from ..waiting import wait_for
from .test_dns import addrs, free_port

MEMBERS = [ContainerInfo(f"{i:064x}", f"c{i}", ("svc",), f"10.0.{i // 200}.{i % 200 + 2}") for i in range(60)]
SNAP = build("app", [ContainerInfo("a" * 64, "web", (), "10.0.0.2", "fd70::2")] + MEMBERS, ["10.0.0.1"])


def spec(**kw):
    base = dict(name="app", gateways=("127.0.0.1",), bridge="lo", subnets=("127.0.0.0/16",), forward=False)
    base.update(kw)
    return NetSpec(**base)


@pytest.fixture
def server():
    srv = DnsServer(port=free_port(), ttl=10)
    srv.configure({"n": spec()})
    srv.set_snapshot("n", SNAP)
    yield srv
    srv.stop()


def udp(srv, name, rdtype="A", source="127.0.0.1", timeout=2.0, **kw):
    q = dns.message.make_query(name, rdtype, **kw)
    return dns.query.udp(q, "127.0.0.1", port=srv.port, source=source, timeout=timeout)


class BigUpstream:
    """A test upstream on loopback answering big.pybridge.test with 300 A records: truncated
    (TC, no answers) over UDP when that does not fit, whole over TCP. Counts what it serves."""

    def __init__(self):
        self.port = free_port()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.tcp = socket.socket()
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen(8)
        self.tcp_queries = 0
        for target in (self._serve_udp, self._serve_tcp):
            threading.Thread(target=target, daemon=True).start()

    @staticmethod
    def reply(wire, limit):
        q = dns.message.from_wire(wire)
        r = dns.message.make_response(q)
        addresses = [f"203.0.113.{i + 1}" for i in range(250)] + [f"198.51.100.{i + 1}" for i in range(50)]
        r.answer.append(dns.rrset.from_text_list(q.question[0].name, 30, "IN", "A", addresses))
        try:
            return r.to_wire(max_size=limit)
        except dns.exception.TooBig:
            r.answer.clear()
            r.flags |= dns.flags.TC
            return r.to_wire()

    def _serve_udp(self):
        while True:
            try:
                data, peer = self.udp.recvfrom(4096)
            except OSError:
                return
            q = dns.message.from_wire(data)
            self.udp.sendto(self.reply(data, q.payload if q.edns >= 0 else 512), peer)

    def _serve_tcp(self):
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with conn:
                size = struct.unpack(">H", conn.recv(2))[0]
                data = b""
                while len(data) < size:
                    data += conn.recv(size - len(data))
                self.tcp_queries += 1
                out = self.reply(data, 65535)
                conn.sendall(struct.pack(">H", len(out)) + out)

    def close(self):
        self.udp.close()
        self.tcp.close()


@pytest.fixture
def big_upstream():
    up = BigUpstream()
    yield up
    up.close()


# item 3: amplification
def test_udp_replies_never_exceed_the_clients_limit_and_tcp_gets_everything(big_upstream):
    srv = DnsServer(port=free_port(), ttl=10)
    srv.configure({"n": spec(forward=True, upstreams=(("127.0.0.1", big_upstream.port),))})
    srv.set_snapshot("n", SNAP)
    try:
        q = dns.message.make_query("big.pybridge.test", "A", use_edns=False)
        # from a container's address, not the gateway's (the host's queries are never forwarded)
        wire = dns.query.udp(q, "127.0.0.1", port=srv.port, timeout=5, ignore_trailing=True, source="127.0.0.2")
        assert len(wire.to_wire()) <= 512 and wire.flags & dns.flags.TC
        raw = _raw_udp(srv.port, q.to_wire(), source="127.0.0.2")
        assert len(raw) <= 512, f"a {len(q.to_wire())}-byte query got a {len(raw)}-byte UDP reply"
        q = dns.message.make_query("big.pybridge.test", "A", use_edns=0, payload=1232)
        raw = _raw_udp(srv.port, q.to_wire(), source="127.0.0.2")
        assert len(raw) <= 1232 and dns.message.from_wire(raw).flags & dns.flags.TC
        whole = dns.query.tcp(
            dns.message.make_query("big.pybridge.test", "A"), "127.0.0.1", port=srv.port, timeout=5, source="127.0.0.2"
        )
        assert len(addrs(whole)) == 300 and not whole.flags & dns.flags.TC
        assert big_upstream.tcp_queries == 1, "only the TCP client's question went to the upstream over TCP"
    finally:
        srv.stop()


def _raw_udp(port, wire, source="127.0.0.1", timeout=5.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, 0))
    s.settimeout(timeout)
    try:
        s.sendto(wire, ("127.0.0.1", port))
        return s.recv(65535)
    finally:
        s.close()


def test_local_answers_are_truncated_for_udp_and_whole_over_tcp(server):
    q = dns.message.make_query("svc", "A", use_edns=False)
    raw = _raw_udp(server.port, q.to_wire())
    assert len(raw) <= 512 and dns.message.from_wire(raw).flags & dns.flags.TC
    whole = dns.query.tcp(dns.message.make_query("svc", "A"), "127.0.0.1", port=server.port, timeout=5)
    assert len(addrs(whole)) == 60


# item 2: only the network's own clients
def test_queries_from_outside_the_networks_subnets_are_dropped_silently():
    srv = DnsServer(port=free_port(), ttl=10)
    srv.configure({"n": spec(subnets=("127.0.0.0/24",))})
    srv.set_snapshot("n", SNAP)
    try:
        assert addrs(udp(srv, "web", source="127.0.0.9")) == ["10.0.0.2"]
        with pytest.raises(dns.exception.Timeout):
            udp(srv, "web", source="127.0.1.9", timeout=1.0)
        with pytest.raises((ConnectionError, EOFError, dns.exception.Timeout, OSError)):
            dns.query.tcp(dns.message.make_query("web", "A"), "127.0.0.1", port=srv.port, source="127.0.1.9", timeout=2)
        assert srv.stats()["refused_sources"] >= 2
    finally:
        srv.stop()


# item 4: starvation
def _pipeline(port, source, count=4000):
    """A TCP client that sends many queries and never reads its answers."""
    s = socket.socket()
    s.bind((source, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    q = dns.message.make_query("svc", "A").to_wire()
    frame = struct.pack(">H", len(q)) + q
    s.setblocking(False)
    try:
        for _ in range(count):
            s.send(frame)
    except (BlockingIOError, ConnectionError):  # full, or already refused by the server
        pass
    return s


def _tcp_state(sock) -> int:
    return struct.unpack("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0]


TCP_ESTABLISHED = 1


def test_tcp_clients_that_never_read_are_cut_off_and_cannot_shut_tcp_dns_off(server):
    hogs = [_pipeline(server.port, "127.0.0.2") for _ in range(3)]
    hogs += [_pipeline(server.port, f"127.0.{i // 250 + 3}.{i % 250 + 1}", count=1) for i in range(150)]
    try:
        # another client is still served over TCP while 153 connections are held open
        ok = dns.query.tcp(
            dns.message.make_query("web", "A"), "127.0.0.1", port=server.port, source="127.0.9.9", timeout=5
        )
        assert addrs(ok) == ["10.0.0.2"]
        stats = server.stats()
        assert stats["tcp_connections"] <= stats["tcp_limit_per_listener"]
        # the ones that never read their answers are dropped once a write has waited too long
        assert wait_for(lambda: all(_tcp_state(h) != TCP_ESTABLISHED for h in hogs[:3]), 60)
    finally:
        for h in hogs:
            h.close()
    assert wait_for(lambda: server.stats()["tcp_connections"] == 0, 60)


def test_one_client_cannot_hold_every_tcp_connection(server):
    hogs = [_pipeline(server.port, "127.0.0.2", count=1) for _ in range(40)]
    try:
        assert wait_for(lambda: server.stats()["tcp_connections"] <= server.stats()["tcp_limit_per_client"], 10)
        ok = dns.query.tcp(
            dns.message.make_query("web", "A"), "127.0.0.1", port=server.port, source="127.0.0.3", timeout=5
        )
        assert addrs(ok) == ["10.0.0.2"]
    finally:
        for h in hogs:
            h.close()


def test_udp_work_waiting_for_the_loop_is_bounded(server):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.4", 0))
    for i in range(20000):  # distinct names: nothing is cached, everything needs the loop
        s.sendto(dns.message.make_query(f"n{i}.example", "A").to_wire(), ("127.0.0.1", server.port))
    s.close()
    stats = server.stats()
    assert stats["udp_backlog_max"] <= stats["udp_backlog_limit"]
    assert wait_for(lambda: _answers(server), 30), "the server answers again after the flood"


def _answers(srv):
    try:
        return addrs(udp(srv, "web", source="127.0.0.5", timeout=1.0)) == ["10.0.0.2"]
    except dns.exception.Timeout:
        return False


def test_names_differing_only_in_case_share_one_cached_answer(server, monkeypatch):
    import plugin.dns.answer as answer_module

    renders = {"n": 0}
    real = answer_module.render

    def counting(*args, **kw):
        renders["n"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(answer_module, "render", counting)
    seen_orders = set()
    for i in range(1000):
        name = "".join(c.upper() if (i >> k) & 1 else c for k, c in enumerate("svc.app"))
        q = dns.message.make_query(name, "A", use_edns=0, payload=4096)
        raw = _raw_udp(server.port, q.to_wire())
        reply = dns.message.from_wire(raw)
        assert raw[12 : 12 + len(name) + 2] == q.to_wire()[12 : 12 + len(name) + 2], "the question keeps its case"
        assert reply.id == q.id and len(addrs(reply)) == 60
        seen_orders.add(tuple(r.to_text() for rr in reply.answer for r in rr)[0])
    assert renders["n"] <= 20, f"{renders['n']} answers rendered for one question in 1,000 spellings"
    assert len(seen_orders) > 1, "the round robin survives the cache"
    assert server.stats()["cache_entries"]["n"] <= 2


def test_a_ptr_for_a_name_over_63_characters_answers():
    long_name = "x" * 70
    snap = build("app", [ContainerInfo("b" * 64, long_name, (), "10.0.0.7")])
    srv = DnsServer(port=free_port(), ttl=10)
    srv.configure({"n": spec()})
    srv.set_snapshot("n", snap)
    try:
        reply = udp(srv, "7.0.0.10.in-addr.arpa", "PTR")
        assert reply.rcode() == dns.rcode.NOERROR and addrs(reply) == ["bbbbbbbbbbbb.app."]
        assert addrs(udp(srv, "bbbbbbbbbbbb")) == ["10.0.0.7"]
    finally:
        srv.stop()
