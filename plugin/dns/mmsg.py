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
4,096 before. A reply goes back to the address of the slot its query came in (the address is
neither copied nor decoded for it); `peer()` decodes an address only for the queries that leave the hot path.
Not thread-safe: one batch belongs to one listener thread.

The headers are read and written through memoryviews and struct, not ctypes' field objects (a
ctypes field access makes an object each time: 0.6-0.8 us a query for its data and reply, of
about 3 us of Python in all): the lengths and address sizes of a batch come out in one unpack,
and a reply is copied into a slot of its own buffer (one too long for a slot is pointed to).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import struct
import sys
from typing import Callable

MSG_WAITFORONE = 0x10000
SOCKADDR_SIZE = 28  # sockaddr_in6, the larger of the two
# where struct mmsghdr's fields are (x86-64 and arm64: 64 bytes, checked against ctypes below)
_MMSG, _NAMELEN_AT, _FLAGS_AT, _LEN_AT = 64, 8, 48, 56
_HEAD = struct.Struct("=QI")  # msg_name, msg_namelen
_IOV = struct.Struct("=QQ")  # iov_base, iov_len


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


assert (ctypes.sizeof(_Mmsghdr), _Msghdr.namelen.offset, _Msghdr.flags.offset, _Mmsghdr.len.offset) == (
    _MMSG,
    _NAMELEN_AT,
    _FLAGS_AT,
    _LEN_AT,
), "struct mmsghdr is laid out otherwise here"


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
        self._outbuf = (ctypes.c_char * (size * count))()
        self._filled = 0  # slots the last receive filled
        self._full = False  # the last receive filled every slot
        self._meta: tuple[int, ...] = ()  # (address size, length) of each slot, as last received
        self._metas = struct.Struct("=" + f"{_NAMELEN_AT}xI{_LEN_AT - _NAMELEN_AT - 4}xI4x" * count)
        self._long: list[bytes] = []  # replies too long for a slot, kept until sent
        buf, names = ctypes.addressof(self._bufs), ctypes.addressof(self._names)
        for i in range(count):
            self._in_iov[i].base, self._in_iov[i].len = buf + i * size, size
            self._in[i].hdr.name = names + i * SOCKADDR_SIZE
            self._in[i].hdr.iov = ctypes.addressof(self._in_iov[i])
            self._in[i].hdr.iovlen = 1
            self._in[i].hdr.namelen = SOCKADDR_SIZE
            self._out[i].hdr.iov = ctypes.addressof(self._out_iov[i])
            self._out[i].hdr.iovlen = 1
        self._buf, self._name = buf, names
        self._in_at, self._out_at = ctypes.addressof(self._in), ctypes.addressof(self._out)
        self._outbuf_at = ctypes.addressof(self._outbuf)
        self._in_mv = memoryview(self._in).cast("B")  # (ctypes arrays are buffers)
        self._fresh = bytes(self._in_mv)  # the headers before a receive: every slot's sizes as new
        self._out_mv = memoryview(self._out).cast("B")
        self._out_iov_mv = memoryview(self._out_iov).cast("B")
        self._buf_mv = memoryview(self._bufs).cast("B")
        self._names_mv = memoryview(self._names).cast("B")
        self._outbuf_mv = memoryview(self._outbuf).cast("B")

    def receive(self) -> int:
        """Wait for one datagram or more; how many were taken (at most `count`). OSError as
        recvfrom raises it. A batch that came full doubles the slots (up to `most`) for the
        next: the replies to this one are sent by then."""
        if self._full and self.count < self.most and not self._queued:
            self._slots(min(self.count * 2, self.most))
        if self._filled:
            self._in_mv[: self._filled * _MMSG] = self._fresh[: self._filled * _MMSG]
        n = self._recvmmsg(self.sock.fileno(), self._in_at, self.count, MSG_WAITFORONE, None)
        if n < 0:
            e = ctypes.get_errno()
            self._filled, self._full = 0, False
            raise OSError(e, os.strerror(e))
        self._filled = n
        self._full = n == self.count
        self._meta = self._metas.unpack_from(self._in_mv)
        return n

    def items(self) -> list[tuple[str, bytes]]:
        """(sender's address as text, datagram) of each datagram the last receive took."""
        meta, size, buf, names, sources = self._meta, self.size, self._buf_mv, self._names_mv, self._sources
        out = []
        for i in range(self._filled):
            at = i * SOCKADDR_SIZE
            raw = names[at : at + 24].tobytes()
            text = sources.get(raw)
            if text is None:
                text = self.source(i)
            at = i * size
            out.append((text, buf[at : at + meta[2 * i + 1]].tobytes()))
        return out

    def data(self, i: int) -> bytes:
        at = i * self.size
        return self._buf_mv[at : at + self._meta[2 * i + 1]].tobytes()

    def truncated(self, i: int) -> bool:
        flags = int.from_bytes(self._in_mv[i * _MMSG + _FLAGS_AT : i * _MMSG + _FLAGS_AT + 4], sys.byteorder)
        return bool(flags & socket.MSG_TRUNC)

    def source(self, i: int) -> str:
        """The sender's address, as text."""
        at = i * SOCKADDR_SIZE
        raw = self._names_mv[at : at + 24].tobytes()
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
        raw = ctypes.string_at(self._name + i * SOCKADDR_SIZE, self._meta[2 * i])
        address, port = self.source(i), int.from_bytes(raw[2:4], "big")
        if int.from_bytes(raw[:2], sys.byteorder) == socket.AF_INET6 and len(raw) >= 28:
            return (address, port, int.from_bytes(raw[4:8], "big"), int.from_bytes(raw[24:28], sys.byteorder))
        return (address, port)

    def reply(self, i: int, payload: bytes) -> None:
        """Queue a reply to the sender of datagram i (sent by flush, before the next receive)."""
        k = self._queued
        self._queued = k + 1
        _HEAD.pack_into(self._out_mv, k * _MMSG, self._name + i * SOCKADDR_SIZE, self._meta[2 * i])
        length = len(payload)
        if length <= self.size:
            at = k * self.size
            self._outbuf_mv[at : at + length] = payload
            _IOV.pack_into(self._out_iov_mv, k * 16, self._outbuf_at + at, length)
        else:  # (pointed to where it is; kept alive until flush)
            self._long.append(payload)
            address = ctypes.cast(ctypes.c_char_p(payload), ctypes.c_void_p).value or 0
            _IOV.pack_into(self._out_iov_mv, k * 16, address, length)

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
        self._long.clear()
        self._queued = 0
        return total
