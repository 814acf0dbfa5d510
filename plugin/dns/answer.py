"""Answering one DNS query from a snapshot. Pure, so it can be fuzzed: bytes in, a decision out.

Never raises on any input: a packet that does not parse is dropped (or answered FORMERR when its
header can be read); a name the network does not own is handed to the forwarder, or REFUSED
when the network forwards nothing.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from .records import Snapshot

_rotation = itertools.count()


@dataclass
class Decision:
    reply: bytes | None = None  # send this back
    forward: dns.message.Message | None = None  # or forward this upstream
    qname: str = ""
    qtype: str = ""
    rcode: str = ""
    rotations: int = 0  # >0: a local answer with this many orders
    limit: int = 512  # the most this client takes


def _header_only(wire: bytes, rcode: int) -> bytes | None:
    if len(wire) < 12:
        return None
    flags = 0x8000 | (wire[2] & 0x79) << 8 | rcode  # QR, opcode and RD copied, RA clear
    return wire[:2] + flags.to_bytes(2, "big") + b"\0" * 8


def max_udp_size(query: dns.message.Message) -> int:
    return max(512, min(query.payload, 4096)) if query.edns >= 0 else 512


def render(response: dns.message.Message, limit: int) -> bytes:
    """Wire form within limit; when too big, the answers go and TC is set."""
    try:  # want_shuffle=False: dnspython would shuffle the records and undo the round robin
        return response.to_wire(max_size=limit, want_shuffle=False)
    except dns.exception.TooBig:
        response.answer.clear()
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit, want_shuffle=False)


def answer(
    snapshot: Snapshot | None,
    wire: bytes,
    *,
    ttl: int,
    forward: bool,
    limit: int | None = None,
    rotate: int | None = None,
    host_suffix: str = "",
    from_host: bool = False,
) -> Decision:
    """host_suffix: names under it are answered from the snapshot or NXDOMAIN, never forwarded
    (the host routes that suffix to pybridge: a forward would loop, or reach another network's
    DNS through the host). from_host: the query came from the host itself (resolved, asking for
    the host): never forwarded to the network's upstream."""
    try:
        query = dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError, IndexError, UnicodeError):
        return Decision(reply=_header_only(wire, dns.rcode.FORMERR), rcode="FORMERR")
    if query.flags & dns.flags.QR:
        return Decision()  # a response, not a query: ignore
    limit = limit or max_udp_size(query)
    try:
        return _decide(
            snapshot,
            query,
            ttl=ttl,
            forward=forward and not from_host,
            limit=limit,
            rotate=rotate,
            host_suffix=host_suffix.lower().strip("."),
        )
    except (dns.exception.DNSException, ValueError) as e:  # a record that cannot be written
        response = dns.message.make_response(query)
        response.set_rcode(dns.rcode.SERVFAIL)
        return Decision(reply=render(response, limit), rcode=f"SERVFAIL ({type(e).__name__})", limit=limit)


def _under(qname: str, suffix: str) -> bool:
    name = qname.lower().rstrip(".")
    return bool(suffix) and (name == suffix or name.endswith("." + suffix))


def _decide(
    snapshot: Snapshot | None,
    query: dns.message.Message,
    *,
    ttl: int,
    forward: bool,
    limit: int,
    rotate: int | None,
    host_suffix: str = "",
) -> Decision:
    response = dns.message.make_response(query)
    response.flags |= dns.flags.RA if forward else 0
    if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
        response.set_rcode(dns.rcode.NOTIMP if query.opcode() != dns.opcode.QUERY else dns.rcode.FORMERR)
        return Decision(reply=render(response, limit), rcode=dns.rcode.to_text(response.rcode()), limit=limit)
    q = query.question[0]
    qname, qtype = q.name.to_text(), q.rdtype
    decision = Decision(qname=qname, qtype=dns.rdatatype.to_text(qtype), limit=limit)
    if q.rdclass != dns.rdataclass.IN or snapshot is None:
        response.set_rcode(dns.rcode.REFUSED)
    elif qtype == dns.rdatatype.PTR and snapshot.reverse(qname):
        response.flags |= dns.flags.AA
        response.answer.append(dns.rrset.from_text(q.name, ttl, "IN", "PTR", snapshot.reverse(qname)))
    elif (found := snapshot.lookup(qname)) is not None:
        response.flags |= dns.flags.AA
        turn = next(_rotation) if rotate is None else rotate
        decision.rotations = max(len(found[0]), len(found[1]), 1)
        for rdtype, addrs in ((dns.rdatatype.A, found[0]), (dns.rdatatype.AAAA, found[1])):
            if addrs and qtype in (rdtype, dns.rdatatype.ANY):
                k = turn % len(addrs)
                ordered = addrs[k:] + addrs[:k]  # round robin between answers
                response.answer.append(dns.rrset.from_text_list(q.name, ttl, "IN", rdtype, ordered))
    elif _under(qname, host_suffix):
        response.set_rcode(dns.rcode.NXDOMAIN)
    elif forward:
        decision.forward = query
        return decision
    else:
        response.set_rcode(dns.rcode.REFUSED)
    decision.rcode = dns.rcode.to_text(response.rcode())
    decision.reply = render(response, limit)
    return decision


def failure(query: dns.message.Message, rcode: dns.rcode.Rcode = dns.rcode.SERVFAIL) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    return render(response, 512)
