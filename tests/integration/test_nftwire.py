"""pybridge's own nf_tables encoding (plugin.kernel.nftwire) against nft's, in the kernel: the
same JSON commands loaded by a current `nft -j -f` (1.1: tests/integration/newer_nft.py) into one namespace and by the adapter into
another must leave the same bytes in the kernel (every rule's expressions, every set's
declaration, every element), and each side must read the other's table as its own."""

import ipaddress
import json
import subprocess

import pytest

from plugin.domain.errors import KernelError
from plugin.domain.model import Endpoint, Network, Subnet
from plugin.domain.ports import PortBinding
from plugin.kernel import nftrules, nftwire
from plugin.kernel.nft import SET_TYPES, NftFirewall
from plugin.kernel.nftsocket import NftSocket

from .conftest import run
from .newer_nft import nft_in

NET = Network(
    id="b" * 64,
    bridge="pw-br1",
    ipv6=True,
    internal=False,
    routed=frozenset({6}),
    unprotected=frozenset({4}),
    trusted=("eth3", "vxlan.1"),
    subnets=(
        Subnet(ipaddress.ip_network("10.200.19.0/24"), ipaddress.ip_interface("10.200.19.1/24")),
        Subnet(ipaddress.ip_network("fd70:6201:19::/64"), ipaddress.ip_interface("fd70:6201:19::1/64")),
    ),
)
INTERNAL = Network(
    id="c" * 64,
    bridge="pw-br2",
    internal=True,
    icc=False,
    subnets=(Subnet(ipaddress.ip_network("10.200.20.0/24"), ipaddress.ip_interface("10.200.20.1/24")),),
)
EP = Endpoint(
    id="e" * 64,
    network_id=NET.id,
    host_ifname="pwh1",
    container_ifname="pwc1",
    mac="02:00:00:00:00:19",
    address4=ipaddress.ip_interface("10.200.19.2/24"),
    address6=ipaddress.ip_interface("fd70:6201:19::2/64"),
    ports=(
        PortBinding("tcp", 80, "", 8080),
        PortBinding("udp", 53, "127.0.0.1", 5353, 4),
        PortBinding("sctp", 9, "::1", 9009, 6),
    ),
)
ELEMENTS = nftrules.merge(
    nftrules.desired([NET, INTERNAL], [EP], ["docker0", "virbr0"]),
    nftrules.vxlan_elements(4789, [(4096, "203.0.113.7"), (70000, "203.0.113.8"), (4097, "2001:db8::7")]),
)


@pytest.fixture
def pair(netns):
    other = netns + "b"
    subprocess.run(["ip", "netns", "add", other], check=True)
    yield netns, other
    subprocess.run(["ip", "netns", "del", other], check=False)


def kernel_view(ns, table="pbtw"):
    """Everything the kernel holds of one table, as raw as it gives it."""
    from plugin.kernel.nft import _in_netns

    s = NftSocket("pbtw-read", opener=lambda fn: _in_netns(ns, fn))
    by_table = nftwire.attr(1, nftwire.text(table))
    try:
        chains = sorted(
            (c.name, c.base)
            for c in (
                nftwire.decode_chain(b)
                for _, b in s.dump(nftwire.GETCHAIN, 1, by_table)
                if nftwire.name_of(b.get(1)) == table
            )
        )
        rules = [
            (
                nftwire.name_of(b.get(2)),
                [
                    (nftwire.name_of(nftwire.attributes(e).get(1)), nftwire.attributes(e).get(2))
                    for e in nftwire.attribute_list(b[4])
                ],
                nftwire.rule_comment(b),
            )
            for _, b in s.dump(nftwire.GETRULE, 1, by_table)
        ]
        sets, elements = {}, {}
        for _, b in s.dump(nftwire.GETSET, 1, by_table):
            name = nftwire.name_of(b.get(2))
            # and a typeof set's user data, which says how nft shows its key (other sets' user
            # data differs between nft versions: 1.1 adds empty descriptions when it loads JSON)
            typeof = b.get(13) if SET_TYPES[name].typeof else None
            sets[name] = (*(nftwire.number(b.get(k)) for k in (3, 4, 5, 6, 7)), typeof)
            raw = set()
            for _, e in s.dump(nftwire.GETSETELEM, 1, by_table + nftwire.attr(2, nftwire.text(name))):
                raw.update(nftwire.attribute_list(e.get(3, b"")))
            elements[name] = raw
        return chains, rules, sets, elements
    finally:
        s.close()


def load_with_nft(ns: str) -> list[dict]:
    """Our whole table for ELEMENTS, loaded by nft itself into the namespace; the commands."""
    commands = nftrules.full("pbtw", nftrules.DEFAULT_MARK, ELEMENTS)
    res = nft_in(ns, "-j", "-f", "-", text=json.dumps({"nftables": commands}))  # 1.0.6 has no typeof in JSON
    assert res.returncode == 0, res.stderr
    return commands


def four_byte_fib_checks(exprs):
    """nft 1.1.4 and later compare `fib ... check` (present) as one byte, earlier ones as four, as
    pybridge does (1.1.3 shows the one-byte form as "missing/8"); both mean the same: the kernel
    zeroes the register before it stores 0 or 1."""
    out, prev = [], None
    for name, data in exprs:
        if (
            name == "cmp"
            and prev is not None
            and prev[0] == "fib"
            and nftwire.number(nftwire.attributes(prev[1]).get(3)) & nftwire.FIB_PRESENT
        ):
            a = nftwire.attributes(data)
            value = nftwire.attributes(a[3]).get(1, b"")
            if len(value) == 1:
                data = (
                    nftwire.attr(1, a[1]) + nftwire.attr(2, a[2]) + nftwire.attr(3, nftwire.attr(1, value + bytes(3)))
                )
        out.append((name, data))
        prev = (name, data)
    return out


def test_our_encoding_is_nfts_byte_for_byte(pair):
    ours, nfts = pair
    commands = load_with_nft(nfts)
    fw = NftFirewall("PBTW", netns=ours)
    try:
        fw._run(commands)
        a, b = kernel_view(nfts), kernel_view(ours)
        assert a[0] == b[0]  # chains, hooks, priorities
        assert len(a[1]) == len(b[1]) > 30
        for x, y in zip(a[1], b[1]):  # every rule, expression by expression
            assert (x[0], four_byte_fib_checks(x[1]), x[2]) == y
        assert a[2] == b[2]  # set declarations: flags, key type/length, data type/length
        assert a[3] == b[3] and sum(map(len, a[3].values())) > 20  # elements, byte for byte
        # nft reads ours as it reads its own (the user data it keeps for its sets too)
        assert (
            nft_in(ours, "list", "table", "inet", "pbtw").stdout == nft_in(nfts, "list", "table", "inet", "pbtw").stdout
        )
    finally:
        fw.close()


def test_we_read_nfts_table_as_we_read_ours(pair):
    _, nfts = pair
    load_with_nft(nfts)
    fw = NftFirewall("PBTW", netns=nfts)
    fw._foreign = ("docker0", "virbr0")  # what nft loaded (the adapter keeps its own set)
    try:
        assert fw.drift([NET, INTERNAL], [EP]) != []  # the VXLAN filter is not ours yet
        fw._vxlan = nftrules.vxlan_elements(
            4789, [(4096, "203.0.113.7"), (70000, "203.0.113.8"), (4097, "2001:db8::7")]
        )
        assert fw.drift([NET, INTERNAL], [EP]) == []
        assert (
            nft_in(
                nfts, "delete", "element", "inet", "pbtw", "published4", '{ "pw-br1" . 10.200.19.2 . tcp . 80 }'
            ).returncode
            == 0
        )
        assert fw.drift([NET, INTERNAL], [EP]) == ["published4: element pw-br1 . 10.200.19.2 . tcp . 80 is missing"]
    finally:
        fw.close()


def test_a_set_declared_otherwise_counts_as_missing(netns):
    """Someone replaced one of our sets by one of another type: its elements are not read as ours."""
    fw = NftFirewall("PBTW", netns=netns)
    try:
        run(netns, "nft", "add", "table", "inet", "pbtw")
        run(netns, "nft", "add", "set", "inet", "pbtw", "masq", "{ type ipv4_addr; elements = { 10.0.0.1 } }")
        problems = fw.drift([NET], [EP])
        assert "set masq is missing" in problems and not [p for p in problems if p.startswith("masq")]
        fw.sync([NET], [EP], [])
        assert fw.drift([NET], [EP]) == []
    finally:
        fw.close()


@pytest.mark.parametrize(
    "command, named",
    [
        (
            {"add": {"rule": {"family": "inet", "table": "pbtw", "chain": "raw", "expr": [{"counter": None}]}}},
            "counter",
        ),
        ({"add": {"element": {"family": "inet", "table": "pbtw", "name": "nosuch", "elem": ["x"]}}}, "nosuch"),
        ({"add": {"element": {"family": "inet", "table": "pbtw", "name": "bridges", "elem": ["a" * 16]}}}, "ifname"),
        ({"add": {"element": {"family": "inet", "table": "pbtw", "name": "gateways4", "elem": ["::1"]}}}, "ipv4_addr"),
        ({"add": {"flowtable": {"family": "inet", "table": "pbtw", "name": "f"}}}, "flowtable"),
    ],
)
def test_what_the_compiler_does_not_know_is_refused_by_name(command, named):
    with pytest.raises(KernelError, match=named):
        nftwire.Compiler(SET_TYPES).compile([command])
