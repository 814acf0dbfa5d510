"""pybridge's own nf_tables netlink socket: transactions (batches of plugin.kernel.nftwire
messages) and the dumps that read its table back, each naming that table, so that the kernel
answers with nothing else. Two reads go wider, by name only: which tables exist (their families
and names: `tables`) and the handles and comments of one chain's rules (`chain_rules`, for the
rules pybridge keeps in firewalld's chains).

A transaction is processed by the kernel while send() runs; its answers (an ACK or an error per
message) are then already queued, and are read until each message has one. The sending thread
is named after the instance while it sends (the kernel names the committing task in its change
notifications, and the firewall watch ignores our own changes by that name).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ..domain.errors import KernelError
from . import nftwire
from .nftwire import Message

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # acks carry the header of the message, not all of it
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
NLMSG = struct.Struct("=IHHII")  # length, type, flags, sequence, port
NFGEN = struct.Struct("=BBH")  # family, version, resource id (big endian)
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x4, 0x300, 0x10
RECV = 1 << 17
REPLY_TIMEOUT = 10.0


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def set_comm(name: bytes) -> bytes:
    """Name the calling thread (what the kernel's notifications name as the task behind a
    change); the old name."""
    old = ctypes.create_string_buffer(16)
    _libc().prctl(16, old, 0, 0, 0)  # PR_GET_NAME
    _libc().prctl(15, name[:15], 0, 0, 0)  # PR_SET_NAME
    return old.value


def open_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    except OSError:
        sock.close()
        raise
    return sock


def _frame(kind: int, flags: int, seq: int, family: int, body: bytes, subsys: bool = True) -> bytes:
    mtype = (nftwire.SUBSYS << 8) | kind if subsys else kind
    payload = NFGEN.pack(family, 0, socket.htons(nftwire.SUBSYS) if not subsys else 0) + body
    return NLMSG.pack(NLMSG.size + len(payload), mtype, flags, seq, 0) + payload + bytes(-len(payload) % 4)


def _messages(data: bytes) -> Iterator[tuple[int, int, int, int, int, int]]:
    """(type, flags, sequence, family, body start, end) of each message in one datagram."""
    at = 0
    while at + NLMSG.size <= len(data):
        length, mtype, flags, seq, _ = NLMSG.unpack_from(data, at)
        if length < NLMSG.size or at + length > len(data):
            return
        family = data[at + NLMSG.size] if length >= NLMSG.size + NFGEN.size else 0
        yield mtype, flags, seq, family, at + NLMSG.size, at + length
        at += (length + 3) & ~3


def _errno(data: bytes, start: int) -> int:
    return -struct.unpack_from("=i", data, start)[0] if start + 4 <= len(data) else errno.EPROTO


class NftSocket:
    """The socket, made at first use in the namespace `netns` (by `opener`), or the host's."""

    def __init__(self, name: str, opener: Callable[[Callable[[], socket.socket]], socket.socket] | None = None):
        self.name = name[:15]
        self._opener = opener
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._seq = 0
        self._sndbuf = 0

    def _socket(self) -> socket.socket:
        if self._sock is None:
            try:
                self._sock = self._opener(open_socket) if self._opener else open_socket()
            except OSError as e:
                raise KernelError(f"nftables: cannot open a netlink socket: {e}") from None
            self._sndbuf = 0
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        with self._lock:
            self._reset()

    def _next(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF or 1
        return self._seq

    # transactions ------------------------------------------------------------------------------
    def transact(self, messages: list[Message]) -> None:
        """One batch: all of it, or (on any error) none of it."""
        if not messages:
            return
        with self._lock:
            sock = self._socket()
            begin = self._next()
            frames = [_frame(nftwire.BATCH_BEGIN, NLM_F_REQUEST, begin, 0, b"", subsys=False)]
            pending: dict[int, Message] = {}
            for m in messages:
                seq = self._next()
                pending[seq] = m
                frames.append(_frame(m.kind, NLM_F_REQUEST | NLM_F_ACK | m.flags, seq, m.family, m.body))
            frames.append(_frame(nftwire.BATCH_END, NLM_F_REQUEST, self._next(), 0, b"", subsys=False))
            data = b"".join(frames)
            self._grow_sndbuf(sock, len(data))
            old = set_comm(self.name.encode())
            try:
                sock.send(data)
            except OSError as e:
                self._reset()
                raise KernelError(f"nftables: sending a transaction failed: {e}") from None
            finally:
                set_comm(old)
            failures = self._acks(sock, begin, pending)
        if failures:
            code, what = failures[0]
            raise KernelError(f"nftables: {os.strerror(code)} ({what})")

    def _grow_sndbuf(self, sock: socket.socket, size: int) -> None:
        if size + 4096 <= self._sndbuf:
            return
        want = max(size * 2, 1 << 20)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, want)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, want)
        self._sndbuf = want

    def _acks(self, sock: socket.socket, begin: int, pending: dict[int, Message]) -> list[tuple[int, str]]:
        """Read an answer for every message; (errno, what) of those that failed."""
        failures: list[tuple[int, str]] = []
        while pending:
            try:
                data = sock.recv(RECV, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if failures:  # the kernel aborted the batch: what it said is all there is
                    break
                ready, _, _ = select.select([sock], [], [], REPLY_TIMEOUT)
                if not ready:
                    self._reset()
                    raise KernelError("nftables: no answer from the kernel to a transaction") from None
                continue
            except OSError as e:
                self._reset()
                raise KernelError(f"nftables: reading the kernel's answer failed: {e}") from None
            for mtype, _, seq, _, start, _ in _messages(data):
                if mtype != NLMSG_ERROR:
                    continue
                code = _errno(data, start)
                if seq == begin and code:
                    failures.append((code, "starting the transaction"))
                    pending.clear()
                elif seq in pending:
                    m = pending.pop(seq)
                    if code:
                        failures.append((code, m.what))
        return failures

    # reading --------------------------------------------------------------------------------
    def dump(self, kind: int, family: int, body: bytes = b"") -> list[tuple[int, dict[int, bytes]]]:
        """(family, attributes) of every object the kernel answers a dump request with; a request
        whose object does not exist (ENOENT) answers []. Interrupted dumps (the ruleset changed
        meanwhile) are asked again."""
        for _ in range(5):
            out, interrupted = self._request(kind, NLM_F_REQUEST | NLM_F_DUMP, family, body)
            if not interrupted:
                return out
        raise KernelError("nftables: the ruleset kept changing while it was read")

    def get(self, kind: int, family: int, body: bytes) -> dict[int, bytes] | None:
        """One object (a table by name), or None when it does not exist."""
        out, _ = self._request(kind, NLM_F_REQUEST | NLM_F_ACK, family, body)
        return out[0][1] if out else None

    def _request(self, kind: int, flags: int, family: int, body: bytes) -> tuple[list[Any], bool]:
        with self._lock:
            sock = self._socket()
            seq = self._next()
            try:
                sock.send(_frame(kind, flags, seq, family, body))
            except OSError as e:
                self._reset()
                raise KernelError(f"nftables: asking the kernel failed: {e}") from None
            out: list[tuple[int, dict[int, bytes]]] = []
            interrupted = False
            while True:
                ready, _, _ = select.select([sock], [], [], REPLY_TIMEOUT)
                if not ready:
                    self._reset()
                    raise KernelError("nftables: no answer from the kernel")
                try:
                    data = sock.recv(RECV)
                except OSError as e:
                    self._reset()
                    raise KernelError(f"nftables: reading the kernel's answer failed: {e}") from None
                for mtype, mflags, mseq, family_, start, end in _messages(data):
                    if mseq != seq:
                        continue  # a late answer to an earlier request
                    if mtype == NLMSG_DONE:
                        return out, interrupted
                    if mtype == NLMSG_ERROR:
                        code = _errno(data, start)
                        if code in (0, errno.ENOENT):
                            return (out if code == 0 else []), interrupted
                        raise KernelError(f"nftables: reading failed: {os.strerror(code)}")
                    interrupted = interrupted or bool(mflags & NLM_F_DUMP_INTR)
                    out.append((family_, nftwire.attributes(data, start + NFGEN.size, end)))

    # by name only -----------------------------------------------------------------------------
    def tables(self) -> set[tuple[str, str]]:
        """(family, name) of every table in the namespace: names only, nothing of their contents."""
        return {
            (nftwire.FAMILY_NAMES.get(f, str(f)), nftwire.name_of(a.get(1))) for f, a in self.dump(nftwire.GETTABLE, 0)
        }

    def chain_rules(self, family: str, table: str, chain: str) -> list[tuple[int, str | None]] | None:
        """(handle, comment) of each rule of one chain, in order; None when the chain is not there."""
        fam, t = nftwire.FAMILIES[family], nftwire.attr(1, nftwire.text(table))
        if self.get(nftwire.GETCHAIN, fam, t + nftwire.attr(3, nftwire.text(chain))) is None:
            return None
        out = []
        for _, a in self.dump(nftwire.GETRULE, fam, t + nftwire.attr(2, nftwire.text(chain))):
            handle = struct.unpack(">Q", a[3])[0] if len(a.get(3, b"")) == 8 else 0
            out.append((handle, nftwire.rule_comment(a)))
        return out
