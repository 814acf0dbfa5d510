"""Many datagrams per system call on one UDP socket: recvmmsg(2) and sendmmsg(2) through ctypes.

Why: under load, the DNS listener's thread spent most of its time in one recvfrom and one
sendto per query, each a system call and a release and retake of the GIL. A batch takes up to
`count` queries in one call (blocking for the first only, MSG_WAITFORONE) and sends every reply
answered from the cache in one more. Python's socket module has no binding for these calls;
ctypes is in the standard library, and ctypes calls release the GIL as recvfrom does.

The buffers: `count` slots of `size` bytes, each with room for the sender's address; a few
at first, doubled (up to `most`) while batches come full, so that the hundreds of listeners of
a host with hundreds of networks hold kilobytes, not megabytes. 1,232 bytes a slot: the UDP
size DNS agreed on (DNS flag day 2020); a longer query is cut there, as recvfrom(4096) cut it at
4,096 before. A reply goes back to the address of the slot its query came in (nothing is copied
or decoded for it); `peer()` decodes an address only for the queries that leave the hot path.
Not thread-safe: one batch belongs to one listener thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import sys
from typing import Callable

MSG_WAITFORONE = 0x10000
SOCKADDR_SIZE = 28  # sockaddr_in6, the larger of the two


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _OutIovec(ctypes.Structure):
    # base as c_char_p: a reply (bytes) is assigned as is, the structure keeping it alive
    _fields_ = [("base", ctypes.c_char_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


_libc: ctypes.CDLL | None = None


def _calls() -> tuple[Callable[..., int], Callable[..., int]]:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    recv, send = _libc.recvmmsg, _libc.sendmmsg
    recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    recv.restype = send.restype = ctypes.c_int
    return recv, send


def available() -> bool:
    """Whether this libc has the calls (glibc and musl do)."""
    try:
        _calls()
        return True
    except (OSError, AttributeError):
        return False


class DatagramBatch:
    def __init__(self, sock: socket.socket, most: int = 32, size: int = 1232, start: int = 2):
        self.sock, self.size, self.most = sock, size, most
        self._recvmmsg, self._sendmmsg = _calls()
        self._queued = 0
        self._moved: list[int] = []
        self._sources: dict[bytes, str] = {}  # a sender's raw address -> as text
        self._slots(min(start, most))

    def _slots(self, count: int) -> None:
        """(Re)make the buffers for `count` datagrams: a listener that is seldom asked keeps a
        few (a host may have hundreds of networks, each with its listener)."""
        size = self.size
        self.count = count
        self._bufs = (ctypes.c_char * (size * count))()
        self._names = (ctypes.c_char * (SOCKADDR_SIZE * count))()
        self._in_iov = (_Iovec * count)()
        self._in = (_Mmsghdr * count)()
        self._out_iov = (_OutIovec * count)()
        self._out = (_Mmsghdr * count)()
        self._filled = count  # slots the last receive filled (their headers are reset)
        self._full = False  # the last receive filled every slot
        buf, names = ctypes.addressof(self._bufs), ctypes.addressof(self._names)
        for i in range(count):
            self._in_iov[i].base, self._in_iov[i].len = buf + i * size, size
            self._in[i].hdr.name = names + i * SOCKADDR_SIZE
            self._in[i].hdr.iov = ctypes.addressof(self._in_iov[i])
            self._in[i].hdr.iovlen = 1
            self._out[i].hdr.iov = ctypes.addressof(self._out_iov[i])
            self._out[i].hdr.iovlen = 1
            self._out[i].hdr.name = self._in[i].hdr.name  # (reply k usually answers query k)
        self._buf, self._name = buf, names
        self._in_at, self._out_at = ctypes.addressof(self._in), ctypes.addressof(self._out)

    def receive(self) -> int:
        """Wait for one datagram or more; how many were taken (at most `count`). OSError as
        recvfrom raises it. A batch that came full doubles the slots (up to `most`) for the
        next: the replies to this one are sent by then."""
        if self._full and self.count < self.most and not self._queued:
            self._slots(min(self.count * 2, self.most))
        slots = self._in
        for i in range(self._filled):
            hdr = slots[i].hdr
            hdr.namelen = SOCKADDR_SIZE
            hdr.flags = 0
        n = self._recvmmsg(self.sock.fileno(), self._in_at, self.count, MSG_WAITFORONE, None)
        if n < 0:
            e = ctypes.get_errno()
            self._filled, self._full = 0, False
            raise OSError(e, os.strerror(e))
        self._filled = n
        self._full = n == self.count
        return n

    def data(self, i: int) -> bytes:
        return ctypes.string_at(self._buf + i * self.size, self._in[i].len)

    def truncated(self, i: int) -> bool:
        return bool(self._in[i].hdr.flags & socket.MSG_TRUNC)

    def source(self, i: int) -> str:
        """The sender's address, as text."""
        at = i * SOCKADDR_SIZE
        raw: bytes = self._names[at : at + 24]  # type: ignore[assignment]  # (a c_char array's slice is bytes)
        text = self._sources.get(raw)
        if text is None:
            if len(self._sources) > 4096:
                self._sources.clear()
            text = self._sources[raw] = self._decode(raw)
        return text

    @staticmethod
    def _decode(raw: bytes) -> str:
        family = int.from_bytes(raw[:2], sys.byteorder)
        if family == socket.AF_INET:
            return socket.inet_ntop(socket.AF_INET, raw[4:8])
        if family == socket.AF_INET6:
            return socket.inet_ntop(socket.AF_INET6, raw[8:24])
        return ""

    def peer(self, i: int) -> tuple:
        """The sender as sendto takes it: (address, port) or, for IPv6, with flow and scope."""
        raw = ctypes.string_at(self._name + i * SOCKADDR_SIZE, self._in[i].hdr.namelen)
        address, port = self.source(i), int.from_bytes(raw[2:4], "big")
        if int.from_bytes(raw[:2], sys.byteorder) == socket.AF_INET6 and len(raw) >= 28:
            return (address, port, int.from_bytes(raw[4:8], "big"), int.from_bytes(raw[24:28], sys.byteorder))
        return (address, port)

    def reply(self, i: int, payload: bytes) -> None:
        """Queue a reply to the sender of datagram i (sent by flush, before the next receive)."""
        k = self._queued
        self._queued = k + 1
        out, query = self._out[k].hdr, self._in[i].hdr
        if k != i:  # (a query before it got no reply here: the header points elsewhere until flush)
            out.name = query.name
            self._moved.append(k)
        out.namelen = query.namelen
        iov = self._out_iov[k]
        iov.base = payload
        iov.len = len(payload)

    def flush(self) -> int:
        """Send the queued replies; how many went. One that the kernel refuses is skipped (as
        a failed sendto would be)."""
        total, start, queued = 0, 0, self._queued
        fd = self.sock.fileno()
        while start < queued:
            n = self._sendmmsg(fd, self._out_at + start * ctypes.sizeof(_Mmsghdr), queued - start, 0)
            if n <= 0:
                start += 1  # that one failed: the rest still go
                continue
            total += n
            start += n
        for k in self._moved:
            self._out[k].hdr.name = self._in[k].hdr.name
        self._moved.clear()
        self._queued = 0
        return total
