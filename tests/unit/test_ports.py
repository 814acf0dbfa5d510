"""Published ports: parsing dockerd's portmap and assigning host ports, all or nothing."""

import pytest

from plugin.domain.errors import Conflict, InvalidRequest
from plugin.domain.ports import EPHEMERAL, PortBinding, PortRequest, assign, parse_portmap


def pm(**kw):
    item = {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}
    item.update(kw)
    return item


def test_parse_protocols_host_ip_and_ranges():
    reqs = parse_portmap(
        [
            pm(),
            pm(Proto=17, Port=53, HostPort=0, HostPortEnd=0),
            pm(Proto=132, HostIP="127.0.0.1", HostPort=9000, HostPortEnd=9005),
        ]
    )
    assert [(r.proto, r.container_port, r.host_ip, r.host_port, r.host_port_end) for r in reqs] == [
        ("tcp", 80, "", 8080, 8080),
        ("udp", 53, "", 0, 0),
        ("sctp", 80, "127.0.0.1", 9000, 9005),
    ]
    assert parse_portmap([pm()], default_host_ip="10.0.0.5")[0].host_ip == "10.0.0.5"


@pytest.mark.parametrize(
    "item",
    [
        pm(Proto=1),
        pm(Port=0),
        pm(HostPort=70000),
        pm(HostIP="nope"),
        pm(HostPort="80"),
        "x",
        pm(HostPort=90, HostPortEnd=80),
    ],
)
def test_bad_portmap_entries_are_refused(item):
    with pytest.raises(InvalidRequest):
        parse_portmap([item])


def test_assign_picks_free_ports_and_refuses_taken_ones():
    held = [PortBinding("tcp", 80, "", 8080)]
    with pytest.raises(Conflict, match="0.0.0.0:8080/tcp is already published"):
        assign(parse_portmap([pm()]), held)
    # another protocol, or a range with room, is fine
    got = assign(parse_portmap([pm(Proto=17), pm(HostPort=8080, HostPortEnd=8082)]), held)
    assert [(b.proto, b.host_port) for b in got] == [("udp", 8080), ("tcp", 8081)]
    picked = assign(parse_portmap([pm(HostPort=0, HostPortEnd=0), pm(Port=81, HostPort=0, HostPortEnd=0)]), held)
    assert EPHEMERAL[0] <= picked[0].host_port < picked[1].host_port <= EPHEMERAL[1]


def test_families_are_separate_namespaces_for_host_ports():
    v4, v6 = assign(parse_portmap([pm(HostIP="0.0.0.0"), pm(HostIP="::")]), [])
    assert (v4.family, v4.host_port, str(v4)) == (4, 8080, "0.0.0.0:8080/tcp")
    assert (v6.family, v6.host_port, str(v6)) == (6, 8080, "[::]:8080/tcp")
    with pytest.raises(Conflict, match=r"\[::\]:8080/tcp"):
        assign(parse_portmap([pm(HostIP="::")]), [v6])
    with pytest.raises(Conflict):
        assign(parse_portmap([pm()]), [v6])  # "" means both families


def test_specific_host_ips_do_not_clash_with_each_other():
    held = [PortBinding("tcp", 80, "10.0.0.1", 8080)]
    assert assign(parse_portmap([pm(HostIP="10.0.0.2")]), held)[0].host_port == 8080
    with pytest.raises(Conflict):
        assign(parse_portmap([pm()]), held)  # all addresses includes 10.0.0.1


def test_host_port_assignment_is_linear(monkeypatch):
    """Issue 8, item 9: -P with 1,000 exposed ports took 24.5 s under the store lock (each request
    rescanned the range and compared every candidate with every binding). The work is counted,
    not timed: at most a few comparisons per request and per binding already held."""
    import plugin.domain.ports as ports

    n, held_n = 1000, 2000
    budget = 4 * (n + held_n)
    calls = {"n": 0}
    real = ports._clash

    def counting(*args):
        calls["n"] += 1
        if calls["n"] > budget:
            raise AssertionError(f"more than {budget} clash checks for {n} requests and {held_n} held")
        return real(*args)

    monkeypatch.setattr(ports, "_clash", counting)
    held = [PortBinding("tcp", 80, "", 49153 + i, 0) for i in range(0, 2 * held_n, 2)]
    requests = [PortRequest("tcp", 10000 + i, "", 0, 0) for i in range(n)]
    out = assign(requests, held)
    assert len({b.host_port for b in out}) == n
    assert not {b.host_port for b in out} & {b.host_port for b in held}
    ranged = assign([PortRequest("udp", 53, "", 30000, 30999) for _ in range(n)], [])
    assert sorted(b.host_port for b in ranged) == list(range(30000, 31000))


def test_split_routed_keeps_host_ports_only_for_the_nat_families():
    from plugin.domain.ports import split_routed

    both = PortRequest("tcp", 80, "", 8080, 8080, 0)
    v6 = PortRequest("tcp", 443, "", 8443, 8443, 6)
    assert split_routed([both, v6], {4, 6}, frozenset()) == ([both, v6], [])
    nat, direct = split_routed([both, v6], {4, 6}, frozenset({6}))
    assert nat == [PortRequest("tcp", 80, "", 8080, 8080, 4)]
    assert direct == [PortBinding("tcp", 80, "", 0, 6), PortBinding("tcp", 443, "", 0, 6)]
    nat, direct = split_routed([both, both], {4}, frozenset({4, 6}))
    assert nat == [] and direct == [PortBinding("tcp", 80, "", 0, 4)], "once, whatever was asked twice"
