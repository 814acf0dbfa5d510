"""IPAM: pure allocator and pool carving (property tests), and the service over a real SQLite store."""

import ipaddress

import pytest
from hypothesis import given, settings, strategies as st

from plugin.domain.errors import Conflict, Exhausted, InvalidRequest, NotFound
from plugin.ipam.allocator import pick_address, usable_range
from plugin.domain.model import Taken
from plugin.ipam.pools import PoolSpec, find_free_subnet, parse_pool_specs
from plugin.ipam.service import IpamService
from plugin.store.db import Store

GW = {"RequestAddressType": "com.docker.network.gateway"}


def taken_from(values):
    ordered = sorted(values)
    return lambda start: (v for v in ordered if v >= start)


@given(st.integers(0, 60), st.sets(st.integers(0, 63)), st.integers(-1, 63))
def test_pick_address_returns_a_free_address_in_range_or_none(lo, taken, cursor):
    hi = 63
    got = pick_address(lo, hi, cursor, taken_from(taken))
    free = set(range(lo, hi + 1)) - taken
    if not free:
        assert got is None
    else:
        assert got in free
        after = sorted(a for a in free if a > cursor)
        assert got == (after[0] if after else min(free))  # round-robin from the cursor


@settings(max_examples=50)
@given(st.lists(st.sampled_from(["alloc", "release"]), min_size=1, max_size=60))
def test_allocation_sequence_never_duplicates_and_does_not_reuse_at_once(ops):
    lo, hi, cursor, held = 1, 14, -1, []
    for op in ops:
        if op == "release" and held:
            held.pop(0)
            continue
        got = pick_address(lo, hi, cursor, taken_from(held))
        if len(held) == hi - lo + 1:
            assert got is None
            continue
        assert got not in held
        if cursor >= lo and any(a not in held for a in range(cursor + 1, hi + 1)):
            assert got > cursor  # a just-released lower address is not reused first
        held.append(got)
        cursor = got


@given(st.lists(st.integers(0, 255), max_size=30))
def test_find_free_subnet_never_overlaps_anything_taken(third_octets):
    taken = [Taken(ipaddress.ip_network(f"10.207.{o}.0/24"), "x") for o in third_octets]
    taken.append(Taken(ipaddress.ip_network("10.207.128.0/17"), "big"))
    got = find_free_subnet([PoolSpec(ipaddress.ip_network("10.207.0.0/16"), 24)], taken)
    if got is not None:
        assert not any(t.network.overlaps(got) for t in taken)
        assert got.prefixlen == 24 and got.subnet_of(ipaddress.ip_network("10.207.0.0/16"))
    else:
        assert len(set(third_octets) | set(range(128, 256))) == 256


def test_usable_range_excludes_network_broadcast_and_v6_anycast():
    assert usable_range(ipaddress.ip_network("10.0.0.0/30")) == (
        int(ipaddress.ip_address("10.0.0.1")),
        int(ipaddress.ip_address("10.0.0.2")),
    )
    lo, _ = usable_range(ipaddress.ip_network("fd70::/64"))
    assert lo == int(ipaddress.ip_address("fd70::1"))


@pytest.mark.parametrize("text", ["10.0.0.0/8", "10.0.0.0/8:33", "bogus:24", "fd00::/48:24"])
def test_bad_pool_specs_are_config_errors(text):
    from plugin.domain.errors import ConfigError

    with pytest.raises(ConfigError):
        parse_pool_specs(text, 4)


@pytest.fixture
def ipam(tmp_path):
    store = Store(tmp_path / "s.db").open()
    routes = [Taken(ipaddress.ip_network("10.207.0.0/24"), "host route 10.207.0.0/24 (dev eth9)")]
    yield IpamService(
        store, lambda: routes, parse_pool_specs("10.207.0.0/16:24", 4), parse_pool_specs("fd70:6201:ff00::/40:64", 6)
    )
    store.close()


def test_auto_pools_skip_host_routes_and_held_pools(ipam):
    a = ipam.request_pool("", "", "", False)
    b = ipam.request_pool("", "", "", False)
    assert a["Pool"] == "10.207.1.0/24" and b["Pool"] == "10.207.2.0/24"
    ipam.release_pool(a["PoolID"])
    assert ipam.request_pool("", "", "", False)["Pool"] == "10.207.1.0/24"


def test_explicit_overlap_names_the_conflict(ipam):
    ipam.request_pool("", "10.200.0.0/16", "", False)
    with pytest.raises(Conflict, match=r"10.200.5.0/24 overlaps pool 10.200.0.0/16 already held by pybridge"):
        ipam.request_pool("", "10.200.5.0/24", "", False)
    with pytest.raises(Conflict, match=r"overlaps host route 10.207.0.0/24 \(dev eth9\)"):
        ipam.request_pool("", "10.207.0.0/16", "", False)


def test_ip_range_must_be_inside_the_subnet(ipam):
    with pytest.raises(InvalidRequest, match="ip-range 10.9.0.0/25 is outside subnet 10.200.0.0/24"):
        ipam.request_pool("", "10.200.0.0/24", "10.9.0.0/25", False)
    with pytest.raises(InvalidRequest, match="needs --subnet"):
        ipam.request_pool("", "", "10.9.0.0/25", False)


def test_addresses_gateway_static_dynamic_release_and_exhaustion(ipam):
    pool = ipam.request_pool("", "10.200.0.0/29", "", False)
    pid = pool["PoolID"]
    assert ipam.request_address(pid, "", GW) == "10.200.0.1/29"
    assert ipam.request_address(pid, "10.200.0.4", {}) == "10.200.0.4/29"
    with pytest.raises(Conflict, match="10.200.0.4 is already in use in pool 10.200.0.0/29"):
        ipam.request_address(pid, "10.200.0.4", {})
    got = [ipam.request_address(pid, "", {}) for _ in range(4)]
    assert got == ["10.200.0.2/29", "10.200.0.3/29", "10.200.0.5/29", "10.200.0.6/29"]
    with pytest.raises(Exhausted, match="no free address left in pool 10.200.0.0/29"):
        ipam.request_address(pid, "", {})
    ipam.release_address(pid, "10.200.0.3")
    ipam.release_address(pid, "10.200.0.3")  # idempotent
    assert ipam.request_address(pid, "", {}) == "10.200.0.3/29"
    with pytest.raises(InvalidRequest, match="broadcast"):
        ipam.request_address(pid, "10.200.0.7", {})
    with pytest.raises(InvalidRequest, match="outside pool"):
        ipam.request_address(pid, "10.9.9.9", {})
    with pytest.raises(NotFound):
        ipam.request_address("nope", "", {})


def test_released_address_is_not_reused_at_once(ipam):
    pid = ipam.request_pool("", "10.200.0.0/24", "", False)["PoolID"]
    a = ipam.request_address(pid, "", {})
    ipam.release_address(pid, a.split("/")[0])
    assert ipam.request_address(pid, "", {}) != a


def test_ipv6_pools_and_addresses(ipam):
    pool = ipam.request_pool("", "", "", True)
    assert pool["Pool"] == "fd70:6201:ff00::/64"
    assert ipam.request_address(pool["PoolID"], "", GW) == "fd70:6201:ff00::1/64"
    assert ipam.request_address(pool["PoolID"], "", {}) == "fd70:6201:ff00::2/64"


def test_sixteen_thousand_leases_in_one_pool(ipam):
    """Allocation keeps working at scale (its speed is measured by scripts/bench.py)."""
    pid = ipam.request_pool("", "10.200.0.0/18", "", False)["PoolID"]
    for _ in range(16000):
        ipam.request_address(pid, "", {})
    with ipam._store.reading() as tx:
        assert len(tx.leases.all(pid)) == 16000


# Addresses that come back: a container that restarts by itself gets its previous address.

NAME = "com.docker.network.endpoint.name"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def restarts(tmp_path):
    store = Store(tmp_path / "r.db").open()
    clock = Clock()
    service = IpamService(
        store,
        lambda: [],
        parse_pool_specs("10.207.0.0/16:24", 4),
        parse_pool_specs("fd70:6201:ff00::/40:64", 6),
        clock=clock,
    )
    yield service, store, clock
    store.close()


def _pool(service, subnet="10.200.0.0/24"):
    pid = service.request_pool("", subnet, "", False)["PoolID"]
    service.request_address(pid, "", GW)
    return pid


def test_a_named_container_gets_its_address_back_and_others_step_over_it(restarts):
    service, store, clock = restarts
    clock.now += 3600  # long after the start: only names count
    pid = _pool(service)
    web = service.request_address(pid, "", {NAME: "web"})
    db = service.request_address(pid, "", {NAME: "db"})
    assert (web, db) == ("10.200.0.2/24", "10.200.0.3/24")
    service.remember([("a" * 64, "web", "10.200.0.2"), ("b" * 64, "db", "10.200.0.3")])
    service.release_address(pid, "10.200.0.2")
    service.release_address(pid, "10.200.0.3")
    # a new container neither takes a waiting address nor reuses one at once
    assert service.request_address(pid, "", {NAME: "new"}) == "10.200.0.4/24"
    assert service.request_address(pid, "", {NAME: "db"}) == "10.200.0.3/24"
    assert service.request_address(pid, "", {NAME: "web"}) == "10.200.0.2/24"
    assert service.request_address(pid, "", {}) == "10.200.0.5/24"


def test_without_names_restarts_after_the_plugin_starts_get_the_waiting_addresses(restarts):
    service, store, clock = restarts
    pid = _pool(service)
    got = [service.request_address(pid, "", {}) for _ in range(3)]
    assert got == ["10.200.0.2/24", "10.200.0.3/24", "10.200.0.4/24"]
    service.remember([("a" * 64, "one", "10.200.0.2"), ("c" * 64, "three", "10.200.0.4")])
    for a in ("10.200.0.2", "10.200.0.3", "10.200.0.4"):
        service.release_address(pid, a)
    # dockerd restarted: a fresh plugin, inside its first two minutes
    fresh = IpamService(store, lambda: [], (), (), clock=clock)
    assert fresh.request_address(pid, "", {}) == "10.200.0.2/24"
    assert fresh.request_address(pid, "", {}) == "10.200.0.4/24"
    # nothing else is waiting: the cursor walks on (.3 had no owner that restarts)
    assert fresh.request_address(pid, "", {}) == "10.200.0.5/24"
    clock.now += 3600
    service.release_address(pid, "10.200.0.4")
    assert fresh.request_address(pid, "", {}) == "10.200.0.6/24"  # later: names only


def test_a_waiting_address_that_someone_took_is_never_handed_out_twice(restarts):
    service, store, clock = restarts
    pid = _pool(service)
    service.request_address(pid, "", {})
    service.remember([("a" * 64, "web", "10.200.0.2")])
    service.release_address(pid, "10.200.0.2")
    assert service.request_address(pid, "10.200.0.2", {}) == "10.200.0.2/24"  # --ip took it
    assert service.request_address(pid, "", {NAME: "web"}) == "10.200.0.3/24"
    assert service.request_address(pid, "", {}) == "10.200.0.4/24"


def test_remembered_addresses_are_not_reservations_when_the_pool_is_full(restarts):
    service, store, clock = restarts
    clock.now += 3600
    pid = _pool(service, "10.200.0.0/29")  # .1 gateway, .2-.6 usable
    for i in range(2, 7):
        service.request_address(pid, "", {NAME: f"c{i}"})
    service.remember([(f"{i:064x}", f"c{i}", f"10.200.0.{i}") for i in range(2, 7)])
    for i in range(2, 7):
        service.release_address(pid, f"10.200.0.{i}")
    got = {service.request_address(pid, "", {NAME: f"n{i}"}) for i in range(5)}
    assert got == {f"10.200.0.{i}/29" for i in range(2, 7)}
    with pytest.raises(Exhausted):
        service.request_address(pid, "", {NAME: "one-too-many"})


def test_owners_are_forgotten_when_removed_renamed_gone_or_the_pool_goes(restarts):
    service, store, clock = restarts
    pid = _pool(service)
    six = service.request_pool("", "fd70:6201:ff00:1::/64", "", True)["PoolID"]
    service.remember(
        [
            ("a" * 64, "web", "10.200.0.7"),
            ("a" * 64, "web", "fd70:6201:ff00:1::7"),
            ("b" * 64, "db", "10.200.0.8"),
            ("c" * 64, "x", "10.99.0.1"),
            ("d" * 64, "y", "bogus"),
        ]
    )
    with store.reading() as tx:
        assert [(p, n) for p, _, _, n in tx.containers.owners()] == [(pid, "web"), (pid, "db"), (six, "web")]
    service.remember([("a" * 64, "www", "10.200.0.9")])  # renamed, and moved
    service.remember([], gone=["b" * 64])
    with store.reading() as tx:
        assert sorted((str(ipaddress.ip_address(a)), n) for _, a, _, n in tx.containers.owners()) == [
            ("10.200.0.9", "www"),
            ("fd70:6201:ff00:1::7", "web"),
        ]
    service.remember([], existing=["e" * 64])  # a resync: 'a' is no more
    service.remember([("e" * 64, "e", "10.200.0.10")])
    service.release_pool(six)
    service.release_pool(pid)
    with store.reading() as tx:
        assert tx.containers.owners() == []


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["req", "named", "rel", "remember", "restart"]), st.integers(0, 5)), max_size=50)
)
def test_no_sequence_hands_one_address_to_two_holders(tmp_path_factory, ops):
    store = Store(tmp_path_factory.mktemp("p") / "s.db").open()
    clock = Clock()
    service = IpamService(store, lambda: [], (), (), clock=clock)
    pid = _pool(service, "10.200.0.0/29")
    held: list[str] = []
    for op, i in ops:
        if op in ("req", "named"):
            try:
                got = service.request_address(pid, "", {NAME: f"c{i}"} if op == "named" else {})
            except Exhausted:
                assert len(held) == 5
                continue
            assert got not in held
            held.append(got)
        elif op == "rel" and held:
            service.release_address(pid, held.pop(i % len(held)).split("/")[0])
        elif op == "remember":
            service.remember([(f"{i:064x}", f"c{i}", f"10.200.0.{i + 2}")])
        elif op == "restart":
            clock.now += 3600 if i % 2 else 0
            service = IpamService(store, lambda: [], (), (), clock=clock)
    with store.reading() as tx:
        assert sorted(f"{ipaddress.ip_address(a)}/29" for p, a, k in tx.leases.all(pid) if k == "dynamic") == sorted(
            held
        )
    store.close()
