"""Parsing the kernel's nftables notifications (plugin/kernel/nftevents.py): messages built
here byte by byte as nf_tables.h lays them out; anything malformed is skipped, never raised.
tests/integration/test_nft.py reads the real kernel's."""

from __future__ import annotations

import struct

from hypothesis import given, settings, strategies as st

from plugin.kernel.nftevents import Change, Generation, parse


def attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def message(kind: int, family: int, *attrs: bytes, subsystem: int = 10) -> bytes:
    body = struct.pack("=BBH", family, 0, 0) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), subsystem << 8 | kind, 0, 0, 0) + body


def test_a_transaction_is_its_changes_then_the_generation_naming_the_process():
    data = (
        message(0, 1, attr(1, b"pybridge\0"))
        + message(3, 1, attr(1, b"pybridge\0"), attr(3, b"forward\0"))
        + message(8, 2, attr(1, b"filter\0"), attr(2, b"FORWARD\0"))
        + message(14, 1, attr(1, b"pybridge\0"), attr(2, b"bridges\0"))
        + message(15, 0, attr(1, struct.pack("=I", 7)), attr(2, struct.pack("=I", 99)), attr(3, b"nft\0"))
    )
    assert parse(data) == [
        Change("add", "table", "inet", "pybridge"),
        Change("add", "chain", "inet", "pybridge", "forward"),
        Change("delete", "rule", "ip", "filter", "FORWARD"),
        Change("delete", "element", "inet", "pybridge"),
        Generation("nft"),
    ]


def test_other_subsystems_and_unknown_messages_are_skipped():
    data = (
        message(0, 1, attr(1, b"t\0"), subsystem=1) + message(99, 1, attr(1, b"t\0")) + message(2, 10, attr(1, b"t6\0"))
    )
    assert parse(data) == [Change("delete", "table", "ip6", "t6")]


def test_a_truncated_message_ends_the_parse_and_what_came_before_stands():
    whole = message(0, 1, attr(1, b"first\0"))
    cut = message(2, 1, attr(1, b"second\0"))[:-3]
    assert parse(whole + cut) == [Change("add", "table", "inet", "first")]
    bad_attr = message(0, 1, struct.pack("=HH", 200, 1) + b"x\0\0\0")  # attribute longer than its message
    assert parse(bad_attr) == [Change("add", "table", "inet", "")]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_parse_without_raising(data):
    assert isinstance(parse(data), list)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.sampled_from([0, 1, 2, 10, 200]), st.binary(max_size=40)), max_size=6))
def test_well_framed_messages_with_any_attributes_parse_without_raising(parts):
    data = b"".join(message(kind, family, attr(1, value), attr(3, value[::-1])) for kind, family, value in parts)
    assert len(parse(data)) <= len(parts)
