"""recvmmsg/sendmmsg through ctypes (plugin/dns/mmsg.py), on loopback sockets of the test's own."""

from __future__ import annotations

import socket
import threading

import pytest

from plugin.dns.mmsg import DatagramBatch


@pytest.mark.parametrize("family, address", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_a_batch_takes_what_is_queued_and_answers_each_sender(family, address):
    server, clients = socket.socket(family, socket.SOCK_DGRAM), []
    try:
        server.bind((address, 0))
        batch = DatagramBatch(server, most=8, size=64)
        for k in range(5):
            c = socket.socket(family, socket.SOCK_DGRAM)
            clients.append(c)
            c.bind((address, 0))
            c.settimeout(5)
            c.sendto(b"q%d" % k + (b"x" * 100 if k == 4 else b""), server.getsockname())
        for silent in (2, None):  # a query left unanswered (the replies after it move up), then none
            got = 0
            while got < 5:  # (loopback delivers at once; a second receive takes any straggler)
                n = batch.receive()
                answered = 0
                for i in range(n):
                    data = batch.data(i)
                    k = int(data[1:2])
                    assert batch.source(i) == address
                    assert batch.peer(i)[:2] == clients[k].getsockname()[:2]
                    assert batch.truncated(i) == (k == 4) and len(data) == (64 if k == 4 else 2)
                    if k != silent:
                        batch.reply(i, b"r" + data[:2])
                        answered += 1
                assert batch.flush() == answered
                got += n
            for k, c in enumerate(clients):
                if k != silent:
                    assert c.recvfrom(100)[0] == b"rq%d" % k
                    c.sendto(b"q%d" % k + (b"x" * 100 if k == 4 else b""), server.getsockname())
            if silent is not None:
                clients[silent].sendto(b"q%d" % silent, server.getsockname())
    finally:
        for s in (server, *clients):
            s.close()


def test_shutdown_wakes_a_waiting_receive():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    batch, woke = DatagramBatch(server), threading.Event()

    def wait():
        batch.receive()
        woke.set()

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    try:
        server.shutdown(socket.SHUT_RDWR)
    except OSError:  # (ENOTCONN on UDP; the receivers are woken all the same)
        pass
    assert woke.wait(5), "the receive went on waiting"
    server.close()


def test_a_batch_grows_while_batches_come_full_and_no_further():
    server, client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        server.bind(("127.0.0.1", 0))
        client.bind(("127.0.0.1", 0))
        batch = DatagramBatch(server, most=8, start=2)
        assert batch.count == 2
        sizes = []
        for _ in range(4):
            for k in range(10):
                client.sendto(b"q%d" % k, server.getsockname())
            taken = 0
            while taken < 10:
                n = batch.receive()
                sizes.append(batch.count)
                for i in range(n):
                    batch.reply(i, b"r")
                batch.flush()
                taken += n
        assert sizes[0] == 2 and max(sizes) == 8 and batch.count == 8
    finally:
        server.close()
        client.close()


def test_replies_longer_than_a_slot_and_replies_out_of_order_reach_their_senders():
    """A reply is copied into a slot of the batch's own (size bytes); a longer one is sent from
    where it is. Replies queued in another order than their queries go to their own senders."""
    server, clients = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), []
    try:
        server.bind(("127.0.0.1", 0))
        batch = DatagramBatch(server, most=4, size=64, start=4)
        for k in range(3):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            clients.append(c)
            c.bind(("127.0.0.1", 0))
            c.settimeout(5)
            c.sendto(b"q%d" % k, server.getsockname())
        got: list[tuple[str, bytes]] = []
        while len(got) < 3:
            batch.receive()
            got += batch.items()
            assert {d for _, d in got} <= {b"q0", b"q1", b"q2"}
            for i, (source, data) in reversed(list(enumerate(batch.items()))):
                assert source == "127.0.0.1"
                batch.reply(i, data * 50 if data == b"q1" else b"r" + data)  # q1's: 100 bytes
            batch.flush()
        assert [c.recvfrom(200)[0] for c in clients] == [b"rq0", b"q1" * 50, b"rq2"]
    finally:
        for s in (server, *clients):
            s.close()
