"""Driver services over contract-enforcing fakes: each operation completes or leaves nothing,
teardown is idempotent, restore converges."""

import ipaddress

import pytest

from plugin.domain.errors import Conflict, InvalidRequest, KernelError, NotFound
from plugin.domain.options import IpamDataSpec

from ..fakes import FakeLink

NID = "ab" * 32
EID = "cd" * 32


def create(services, nid=NID, subnet="10.200.1.0/24", generic=None, **kw):
    gw = str(ipaddress.ip_network(subnet).network_address + 1) + "/" + subnet.split("/")[1]
    services.networks.create(
        nid,
        generic or {},
        ipv6=kw.get("ipv6", False),
        internal=kw.get("internal", False),
        ipv4_data=[IpamDataSpec(pool=subnet, gateway=gw)],
        ipv6_data=kw.get("v6", []),
    )


def state(services):
    with services.store.reading() as tx:
        return tx.networks.all(), tx.networks.endpoints()


def test_create_network_makes_bridge_address_rules_and_record(fake_services):
    create(fake_services)
    nl, fw = fake_services.netlink, fake_services.firewall
    br = nl.devices[f"pt-{NID[:12]}"]
    assert br.kind == "bridge" and br.up and br.addresses == {"10.200.1.1/24"}
    assert br.mac.startswith("02:")
    br = f"pt-{NID[:12]}"
    assert set(fw.all_rules()) == {
        f"bridges: {br}",
        f"self: {br} . {br}",
        f"icc: {br}",
        f"masq: {br}",
        "gateways4: 10.200.1.1",
        f"dns_ok4: {br} . 10.200.1.1",
    }
    assert fw.syncs == 0 and fw.changes == 1  # elements added, nothing rewritten
    assert [n.id for n in state(fake_services)[0]] == [NID]


@pytest.mark.parametrize("step", ["ensure_bridge", "ensure_addresses", "firewall"])
def test_a_failure_at_any_step_of_create_leaves_nothing(fake_services, step):
    nl, fw = fake_services.netlink, fake_services.firewall
    if step == "firewall":
        fw.fail = True
    else:
        nl.fail_on.add(step)
    with pytest.raises(KernelError):
        create(fake_services)
    fw.fail = False
    assert nl.devices == {}
    assert state(fake_services) == ([], [])
    assert fw.drift([]) == [] and fw.all_rules() == []


def test_invalid_input_is_refused_before_any_side_effect(fake_services):
    nl = fake_services.netlink
    with pytest.raises(InvalidRequest, match="mtu"):
        create(fake_services, generic={"com.docker.network.driver.mtu": "9x"})
    with pytest.raises(InvalidRequest, match="gateway 10.9.9.9 is outside subnet 10.200.1.0/24"):
        fake_services.networks.create(
            NID, {}, ipv6=False, internal=False, ipv4_data=[IpamDataSpec("10.200.1.0/24", "10.9.9.9/24")], ipv6_data=[]
        )
    assert nl.calls == [] and nl.devices == {}


def test_existing_non_bridge_link_with_the_name_is_a_conflict(fake_services):
    nl = fake_services.netlink
    nl.devices["mybr"] = FakeLink("mybr", "veth")
    with pytest.raises(Conflict, match="a veth link named 'mybr' already exists"):
        create(fake_services, generic={"com.docker.network.bridge.name": "mybr"})
    assert nl.devices["mybr"].kind == "veth" and state(fake_services) == ([], [])


def test_a_users_own_bridge_is_used_but_never_deleted(fake_services):
    nl = fake_services.netlink
    nl.devices["userbr"] = FakeLink("userbr", "bridge", addresses={"192.168.77.1/24"})
    create(fake_services, generic={"com.docker.network.bridge.name": "userbr"})
    assert nl.devices["userbr"].addresses == {"192.168.77.1/24", "10.200.1.1/24"}
    fake_services.networks.delete(NID)
    assert nl.devices["userbr"].addresses == {"192.168.77.1/24"}


def test_two_networks_cannot_share_a_bridge_name(fake_services):
    create(fake_services, generic={"com.docker.network.bridge.name": "shared"})
    with pytest.raises(Conflict, match="bridge shared is already used by network"):
        create(
            fake_services, nid="ef" * 32, subnet="10.200.2.0/24", generic={"com.docker.network.bridge.name": "shared"}
        )
    assert fake_services.netlink.devices["shared"].addresses == {"10.200.1.1/24"}


def test_endpoint_lifecycle_and_idempotent_teardown(fake_services):
    create(fake_services)
    eps, nl = fake_services.endpoints, fake_services.netlink
    resp = eps.create(NID, EID, address="10.200.1.2/24", address6="", mac="")
    assert resp == {"Interface": {"MacAddress": "02:42:0a:c8:01:02"}}
    assert eps.create(NID, EID, address="10.200.1.2/24", address6="", mac="") == resp  # retried call
    host, peer = f"pth{EID[:12]}", f"ptc{EID[:12]}"
    assert nl.devices[host].master == f"pt-{NID[:12]}" and nl.devices[peer].mac == "02:42:0a:c8:01:02"
    join = eps.join(NID, EID, "/var/run/docker/netns/x")
    assert join["Gateway"] == "10.200.1.1" and join["InterfaceName"]["SrcName"] == peer
    eps.leave(NID, EID)
    eps.delete(NID, EID)
    eps.delete(NID, EID)
    assert host not in nl.devices and peer not in nl.devices and state(fake_services)[1] == []


def test_endpoint_failure_leaves_nothing(fake_services):
    create(fake_services)
    nl = fake_services.netlink
    nl.fail_on.add("create_veth")
    with pytest.raises(KernelError):
        fake_services.endpoints.create(NID, EID, address="10.200.1.2/24", address6="", mac="")
    assert [n for n in nl.devices if n.startswith("pth")] == [] and state(fake_services)[1] == []


def test_endpoint_address_outside_the_network_is_refused(fake_services):
    create(fake_services)
    with pytest.raises(InvalidRequest, match="outside the subnets"):
        fake_services.endpoints.create(NID, EID, address="10.9.9.9/24", address6="", mac="")
    with pytest.raises(NotFound):
        fake_services.endpoints.join(NID, EID, "")


def test_delete_network_removes_its_endpoints_bridge_and_rules(fake_services):
    create(fake_services)
    fake_services.endpoints.create(NID, EID, address="10.200.1.2/24", address6="", mac="")
    fake_services.networks.delete(NID)
    fake_services.networks.delete(NID)
    assert fake_services.netlink.devices == {}
    assert fake_services.firewall.all_rules() == []
    assert state(fake_services) == ([], [])


def test_restore_recreates_bridges_and_removes_orphans_it_owns(fake_services):
    create(fake_services)
    fake_services.endpoints.create(NID, EID, address="10.200.1.2/24", address6="", mac="")
    nl = fake_services.netlink
    nl.devices.pop(f"pt-{NID[:12]}")  # bridge lost (e.g. a reboot)
    nl.devices["pt-000000000000"] = FakeLink("pt-000000000000", "bridge")  # ours, no record
    nl.devices["pthdeadbeef0000"] = FakeLink("pthdeadbeef0000", "veth")  # ours, no record
    nl.devices["docker0"] = FakeLink("docker0", "bridge")  # not ours
    fake_services.firewall.kernel = None  # our table deleted
    report = fake_services.reconciler.restore()
    assert report.errors == []
    assert sorted(report.removed_links) == ["pt-000000000000", "pthdeadbeef0000"]
    assert nl.devices[f"pt-{NID[:12]}"].addresses == {"10.200.1.1/24"}
    assert "docker0" in nl.devices and f"pth{EID[:12]}" in nl.devices
    assert fake_services.firewall.all_rules()
    again = fake_services.reconciler.restore()
    assert again.removed_links == [] and again.errors == []


def test_internal_and_icc_off_render_drop_rules(fake_services):
    create(fake_services, internal=True, generic={"com.docker.network.bridge.enable_icc": "false"})
    fw = fake_services.firewall
    br = f"pt-{NID[:12]}"
    assert fw.elements("internal") == {br: None}  # nothing in or out, not even replies
    assert fw.elements("icc") == {}  # nor between its own containers
    assert fw.elements("masq") == {}


def test_an_isolated_internal_network_puts_no_gateway_on_its_bridge_even_if_one_was_reserved(fake_services):
    """gateway_mode_ipv4=isolated (Docker 28): dockerd 28+ reserves no gateway (GwAllocCheck);
    an older dockerd reserves one anyway and it stays unused. Join names no gateway."""
    create(fake_services, internal=True, generic={"com.docker.network.bridge.gateway_mode_ipv4": "isolated"})
    br = f"pt-{NID[:12]}"
    assert fake_services.netlink.addresses(br) == set()
    fake_services.endpoints.create(NID, EID, address="10.200.1.2/24", address6="", mac="")
    join = fake_services.endpoints.join(NID, EID, "/var/run/docker/netns/x")
    assert not join.get("Gateway")
    with pytest.raises(InvalidRequest, match="only for an --internal network"):
        create(
            fake_services,
            nid="b" * 64,
            subnet="10.200.2.0/24",
            generic={"com.docker.network.bridge.gateway_mode_ipv4": "isolated"},
        )
    assert f"pt-{'b' * 12}" not in fake_services.netlink.devices  # refused before any side effect


def test_deferred_veth_deletion_happens_in_the_background(fake_services):
    from plugin.driver.reaper import Reaper

    create(fake_services)
    nl = fake_services.netlink
    fake_services.reaper = Reaper(nl, synchronous=False)
    fake_services.endpoints.create(NID, EID, address="10.200.1.2/24", address6="", mac="")
    fake_services.endpoints.delete(NID, EID)
    assert state(fake_services)[1] == []  # forgotten at once
    fake_services.reaper.drain()
    assert f"pth{EID[:12]}" not in nl.devices and f"ptc{EID[:12]}" not in nl.devices


def test_a_dual_stack_endpoint_that_is_not_the_ipv6_gateway_publishes_ipv4_only(fake_services):
    """dockerd 28+ sends no_proxy_6to4 when another endpoint of the container is its IPv6
    gateway; 29 calls ProgramExternalConnectivity again whenever the gateways change."""
    create(fake_services, ipv6=True, v6=[IpamDataSpec(pool="fd70:6201:ff00:1::/64", gateway="fd70:6201:ff00:1::1/64")])
    eps, fw = fake_services.endpoints, fake_services.firewall
    eps.create(NID, EID, address="10.200.1.2/24", address6="fd70:6201:ff00:1::2/64", mac="")
    portmap = [{"Proto": 6, "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}]
    eps.program(NID, EID, portmap)
    both = set(fw.all_rules())
    assert any(r.startswith("to6_any:") for r in both) and any(r.startswith("to4_any:") for r in both)
    eps.program(NID, EID, portmap, ipv6=False)
    rules = set(fw.all_rules())
    assert any(r.startswith("to4_any:") for r in rules) and not any(r.startswith("to6_any:") for r in rules)
    eps.program(NID, EID, portmap, ipv6=False)  # again, unchanged: nothing to do
    assert set(fw.all_rules()) == rules
    eps.program(NID, EID, portmap)  # the IPv6 gateway again
    assert set(fw.all_rules()) == both


def test_published_ports_are_rendered_and_restored_from_state(fake_services):
    create(fake_services)
    eps = fake_services.endpoints
    eps.create(NID, EID, address="10.200.1.2/24", address6="", mac="")
    eps.program(NID, EID, [{"Proto": 6, "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}])
    fw, sysctl = fake_services.firewall, fake_services.sysctl
    dnat = [
        "to4_any: tcp . 8080 : 10.200.1.2",
        "port4_any: tcp . 8080 : 80",
        f"published4: pt-{NID[:12]} . 10.200.1.2 . tcp . 80",
    ]
    assert set(dnat) <= set(fw.all_rules())
    sysctl.values.clear()
    fw.kernel = None  # our table deleted
    fake_services.reconciler.restore()
    assert set(dnat) <= set(fw.all_rules())
    assert sysctl.values[("net", "ipv4", "conf", f"pt-{NID[:12]}", "route_localnet")] == "1"
    eps.leave(NID, EID)
    assert not set(dnat) & set(fw.all_rules())


def test_the_bridge_port_is_in_hairpin_mode_once_the_container_publishes_a_port(fake_services):
    """A container reaching its own published port through a host address comes back through
    its own bridge port. The hairpin is set when ports are published, not in CreateEndpoint: at
    a thousand containers the first request after a veth joins the bridge waits for the kernel."""
    create(fake_services)
    eps, nl = fake_services.endpoints, fake_services.netlink
    eps.create(NID, EID, address="10.200.1.2/24", address6="", mac="")
    host = nl.devices[next(n for n, d in nl.devices.items() if d.kind == "veth" and d.master)]
    eps.program(NID, EID, [])
    assert host.hairpin is False, "no published port: no hairpin"
    eps.program(NID, EID, [{"Proto": 6, "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}])
    assert host.hairpin is True


def test_programming_again_without_ports_withdraws_the_earlier_ones(fake_services):
    create(fake_services)
    eps = fake_services.endpoints
    eps.create(NID, EID, address="10.200.1.2/24", address6="", mac="")
    eps.program(NID, EID, [{"Proto": 17, "Port": 53, "HostPort": 5353, "HostPortEnd": 5353}])
    fw = fake_services.firewall
    assert fw.elements("to4_any") == {("udp", 5353): "10.200.1.2"}
    changes = fw.changes
    eps.program(NID, EID, [])
    assert fw.elements("to4_any") == {} and fw.elements("published4") == {}
    assert fw.changes == changes + 1 and fw.syncs == 0  # elements withdrawn, nothing rewritten


def test_doctor_reports_differences_and_gc_repairs_them(fake_services):
    create(fake_services)
    nl = fake_services.netlink
    assert fake_services.doctor.examine()["problems"] == []
    nl.devices[f"pt-{NID[:12]}"].addresses.clear()
    nl.devices["pthorphan00000"] = FakeLink("pthorphan00000", "veth")
    fake_services.firewall.kernel = None  # our table deleted
    problems = fake_services.doctor.examine()["problems"]
    assert any("lacks address 10.200.1.1/24" in p for p in problems)
    assert any("pthorphan00000" in p for p in problems)
    assert any(p.startswith("firewall:") for p in problems)
    assert fake_services.doctor.heal_firewall() == ["table is missing"]
    assert fake_services.reconciler.restore().errors == []
    assert fake_services.doctor.examine()["problems"] == []


def test_leases_without_an_endpoint_are_reported_and_released_after_a_grace(fake_services):
    ipam = fake_services.ipam
    pool = ipam.request_pool("", "10.200.1.0/24", "", False)
    gw = ipam.request_address(pool["PoolID"], "", {"RequestAddressType": "com.docker.network.gateway"})
    create(fake_services)
    used = ipam.request_address(pool["PoolID"], "", {})
    fake_services.endpoints.create(NID, EID, address=used, address6="", mac="")
    leaked = ipam.request_address(pool["PoolID"], "", {})  # its ReleaseAddress never arrived
    assert fake_services.doctor.examine()["problems"] == []  # young: may be in flight
    problems = fake_services.doctor.examine(lease_grace=0)["problems"]
    assert problems == [f"lease {leaked.split('/')[0]} in pool {pool['PoolID']} has no endpoint"]
    report = fake_services.reconciler.restore(lease_grace=0)
    assert report.released_leases == [f"{leaked.split('/')[0]} ({pool['PoolID']})"]
    with fake_services.store.reading() as tx:
        held = {a for _, a, _ in tx.leases.all(pool["PoolID"])}
    import ipaddress

    assert held == {int(ipaddress.ip_interface(gw).ip), int(ipaddress.ip_interface(used).ip)}


@pytest.mark.parametrize(
    "name, why",
    [
        ("docker0", "Docker's"),
        ("docker_gwbridge", "Docker's"),
        ("br-0123456789ab", "Docker's"),
        ("pt-mine", "reserved"),
        ("pth0123456789a", "reserved"),
        ("ptc0123456789a", "reserved"),
    ],
)
def test_dockers_bridges_and_our_reserved_names_cannot_be_taken_over(fake_services, name, why):
    """Issue 8, item 7: adding our gateway to docker0 and dropping its traffic, or naming a bridge
    like one of our veths, is refused before anything is touched."""
    nl = fake_services.netlink
    nl.devices[name] = FakeLink(name, "bridge", addresses={"172.17.0.1/16"})
    with pytest.raises(InvalidRequest, match=why):
        create(fake_services, generic={"com.docker.network.bridge.name": name})
    assert nl.devices[name].addresses == {"172.17.0.1/16"} and nl.calls == []
    assert state(fake_services) == ([], [])


def test_any_other_existing_bridge_can_still_be_adopted(fake_services):
    for i, name in enumerate(["br-lan", "lxdbr0x", "virbr7"]):
        fake_services.netlink.devices[name] = FakeLink(name, "bridge")
        create(
            fake_services,
            nid=f"{i:02x}" * 32,
            subnet=f"10.200.{i + 1}.0/24",
            generic={"com.docker.network.bridge.name": name},
        )
    assert len(state(fake_services)[0]) == 3


def test_aux_address_reservations_stay_for_the_networks_life(fake_services):
    """Issue 8, item 8: libnetwork reserves --aux-address with a plain RequestAddress, so the lease
    looked like a container's with no endpoint, and gc/restore released it after the grace."""
    ipam = fake_services.ipam
    pool = ipam.request_pool("", "10.200.1.0/24", "", False)["PoolID"]
    gw = ipam.request_address(pool, "", {"RequestAddressType": "com.docker.network.gateway"})
    aux = ipam.request_address(pool, "10.200.1.5", {})
    fake_services.networks.create(
        NID,
        {},
        ipv6=False,
        internal=False,
        ipv6_data=[],
        ipv4_data=[IpamDataSpec(pool="10.200.1.0/24", gateway=gw, aux=(("router", aux),))],
    )
    assert fake_services.doctor.examine(lease_grace=0)["problems"] == []
    report = fake_services.reconciler.restore(lease_grace=0)
    assert report.released_leases == []
    with pytest.raises(Conflict, match="10.200.1.5 is already in use"):
        ipam.request_address(pool, "10.200.1.5", {})
    handed = {ipam.request_address(pool, "", {}) for _ in range(250)}
    assert "10.200.1.5/24" not in handed


def test_malformed_state_rows_are_skipped_and_reported_not_fatal(fake_services, tmp_path):
    """Issue 8, item 11: one unreadable row made restore raise, so the plugin never started."""
    import sqlite3

    good, bad = NID, "ef" * 32
    create(fake_services)
    create(fake_services, nid=bad, subnet="10.200.2.0/24")
    fake_services.endpoints.create(good, EID, address="10.200.1.2/24", address6="", mac="")
    db = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    db.execute("UPDATE networks SET doc = '{not json' WHERE id = ?", (bad,))
    db.execute("INSERT INTO endpoints VALUES ('x1', ?, '[]')", (good,))
    db.execute("INSERT INTO pools (id, space, subnet, ip_range, cursor) VALUES ('bad#1', 's', '10.0.0.0/33', '', 'zz')")
    db.execute("INSERT INTO leases VALUES ('bad#1', 'not-hex', 'dynamic', 0)")
    db.execute("INSERT INTO dns VALUES (?, 'app', 'garbage')", (good,))
    db.close()
    nl = fake_services.netlink
    nl.devices.clear()  # a reboot: the kernel forgot everything
    report = fake_services.reconciler.restore()
    assert f"pt-{good[:12]}" in nl.devices and f"pt-{bad[:12]}" not in nl.devices
    assert (report.networks, report.endpoints, report.errors) == (1, 1, [])
    assert len(report.unreadable_rows) == 5, report.unreadable_rows
    problems = fake_services.doctor.examine()["problems"]
    assert sum("unreadable" in p for p in problems) == 5, problems
    assert any(f"networks row {bad[:12]}" in p for p in problems)
    # the plugin keeps working around them, and dockerd can still remove the broken network
    fake_services.endpoints.create(good, "12" * 32, address="10.200.1.3/24", address6="", mac="")
    fake_services.networks.delete(bad)
    assert not any(f"networks row {bad[:12]}" in p for p in fake_services.doctor.examine()["problems"])


def test_ipv6_fails_closed_without_ip6tables(fake_services):
    """Issue 8, item 11: with ip6tables missing the firewall skipped IPv6, yet IPv6 forwarding was
    turned on, so IPv6 traffic was forwarded with no isolation at all."""
    fw, sysctl = fake_services.firewall, fake_services.sysctl
    fw.families = (4,)
    v6 = [IpamDataSpec(pool="fd70:6201:1::/64", gateway="fd70:6201:1::1/64")]
    with pytest.raises(InvalidRequest, match="cannot be filtered"):
        create(fake_services, ipv6=True, v6=v6)
    assert ("net", "ipv6", "conf", "all", "forwarding") not in sysctl.values
    assert fake_services.netlink.calls == [] and state(fake_services) == ([], [])
    create(fake_services)  # IPv4-only networks are fine
    fw.families = (4, 6)
    create(fake_services, nid="ef" * 32, subnet="10.200.2.0/24", ipv6=True, v6=v6)
    assert sysctl.values[("net", "ipv6", "conf", "all", "forwarding")] == "1"


def test_a_custom_named_bridge_docker_reports_cannot_be_adopted(fake_services):
    nl = fake_services.netlink
    nl.devices["mydockerbr"] = FakeLink("mydockerbr", "bridge")
    fake_services.networks.docker_bridges_seen({"docker0", "mydockerbr"})
    with pytest.raises(InvalidRequest, match="it is Docker's bridge"):
        create(fake_services, generic={"com.docker.network.bridge.name": "mydockerbr"})
    assert nl.calls == [] and state(fake_services) == ([], [])


def test_restore_still_writes_the_firewall_when_listing_bridges_fails(fake_services):
    create(fake_services)
    fw = fake_services.firewall
    fw.kernel = None  # our table deleted

    def broken(own):
        raise KernelError("list bridges and routes: injected")

    fake_services.netlink.foreign_bridges = broken
    report = fake_services.reconciler.restore()
    assert any(e.startswith("bridges: ") for e in report.errors)
    assert any(f"pt-{NID[:12]}" in r for r in fw.all_rules())


def test_endpoints_are_made_side_by_side_not_one_after_another(fake_services):
    """Issue 9, item 5: the veth pair of one endpoint was made under the store's lock, so every
    other call waited for it. Both calls must now be inside the kernel step at once."""
    import threading

    create(fake_services)
    nl = fake_services.netlink
    both_inside = threading.Barrier(2, timeout=5)
    real = nl.create_veth

    def meeting(*args, **kw):
        both_inside.wait()
        return real(*args, **kw)

    nl.create_veth = meeting
    errors = []

    def make(eid, address):
        try:
            fake_services.endpoints.create(NID, eid, address=address, address6="", mac="")
        except Exception as e:  # noqa: BLE001  (a broken barrier says the calls ran one by one)
            errors.append(e)

    threads = [
        threading.Thread(target=make, args=(eid, addr))
        for eid, addr in ((EID, "10.200.1.2/24"), ("ef" * 32, "10.200.1.3/24"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert sorted(e.id for e in state(fake_services)[1]) == sorted([EID, "ef" * 32])


def test_a_network_removed_while_its_endpoint_is_made_leaves_nothing(fake_services):
    create(fake_services)
    nl = fake_services.netlink
    real = nl.create_veth

    def and_meanwhile(*args, **kw):
        real(*args, **kw)
        fake_services.networks.delete(NID)  # dockerd would not; a crash-restart race could

    nl.create_veth = and_meanwhile
    with pytest.raises(NotFound, match="went away"):
        fake_services.endpoints.create(NID, EID, address="10.200.1.2/24", address6="", mac="")
    assert nl.devices == {} and state(fake_services) == ([], [])


def test_doctor_names_each_element_that_differs_and_healing_puts_it_back(fake_services):
    create(fake_services)
    eps, fw = fake_services.endpoints, fake_services.firewall
    eps.create(NID, EID, address="10.200.1.2/24", address6="", mac="")
    eps.program(NID, EID, [{"Proto": 6, "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}])
    del fw.kernel["sets"]["to4_any"][("tcp", 8080)]  # someone deleted one element
    fw.kernel["sets"]["foreign"]["stray0"] = None  # and added another
    problems = fake_services.doctor.examine()["problems"]
    assert "firewall: to4_any: element tcp . 8080 : 10.200.1.2 is missing" in problems
    assert "firewall: foreign: element stray0 is not in the state" in problems
    assert sorted(fake_services.doctor.heal_firewall()) == sorted(
        p.removeprefix("firewall: ") for p in problems if p.startswith("firewall: ")
    )
    assert fake_services.doctor.examine()["problems"] == []


def test_publishing_looks_up_only_the_ports_it_asks_for(fake_services, monkeypatch):
    """Issue 9: Program read and decoded every endpoint of the host to know which ports were
    held (46 ms with 10,000 published, 2 ms with none); it now asks the store's index about the
    ports it considers, and never lists the endpoints."""
    from plugin.store.repos import Networks

    create(fake_services, subnet="10.200.0.0/16")
    eps = fake_services.endpoints
    for k in range(3):
        eid = f"{k:064x}"
        eps.create(NID, eid, address=f"10.200.2.{k + 2}/16", address6="", mac="")
        eps.program(NID, eid, [{"Proto": 6, "Port": 80, "HostPort": 20000 + k}])
    eps.create(NID, EID, address="10.200.1.2/16", address6="", mac="")

    def refused(*a, **kw):
        raise AssertionError("Program listed every endpoint")

    monkeypatch.setattr(Networks, "endpoints", refused)
    with pytest.raises(Conflict, match="20001"):
        eps.program(NID, EID, [{"Proto": 6, "Port": 80, "HostPort": 20001}])
    eps.program(NID, EID, [{"Proto": 6, "Port": 80, "HostPort": 0}, {"Proto": 17, "Port": 53, "HostPort": 0}])
    first = [b.host_port for b in state_endpoint(fake_services, EID).ports]
    eps.program(NID, EID, [{"Proto": 6, "Port": 80, "HostPort": 0}, {"Proto": 17, "Port": 53, "HostPort": 0}])
    assert [b.host_port for b in state_endpoint(fake_services, EID).ports] == first, "programmed again: the same"
    eps.create(NID, "ef" * 32, address="10.200.1.3/16", address6="", mac="")
    eps.program(NID, "ef" * 32, [{"Proto": 6, "Port": 80, "HostPort": 0}])
    assert state_endpoint(fake_services, "ef" * 32).ports[0].host_port == first[0] + 1, (
        "the next one, not a probe from 49153"
    )


def state_endpoint(services, eid):
    with services.store.reading() as tx:
        return tx.networks.get_endpoint(eid)


def test_the_published_port_index_follows_the_endpoints_and_is_built_for_older_state(tmp_path):
    from plugin.domain.ports import PortBinding
    from plugin.store.db import Store
    from plugin.domain.model import Endpoint

    store = Store(tmp_path / "s.db").open()
    ep = Endpoint(
        id="e" * 64,
        network_id=NID,
        host_ifname="pth1",
        container_ifname="ptc1",
        mac="02:00:00:00:00:01",
        ports=(PortBinding("tcp", 80, "", 8080), PortBinding("udp", 53, "127.0.0.1", 5353, 4)),
    )
    with store.transaction() as tx:
        tx.networks.put_endpoint(ep)
        assert tx.networks.bindings_on("tcp", 8080) == [PortBinding("tcp", 80, "", 8080)]
        assert tx.networks.bindings_on("tcp", 8080, but=ep.id) == []
        tx.networks.put_endpoint(Endpoint(**{**ep.__dict__, "ports": ()}))
        assert tx.networks.bindings_on("tcp", 8080) == []
        tx.networks.put_endpoint(ep)
    with store.transaction() as tx:  # what a version before the index left: no rows in it
        tx._c.execute("DELETE FROM bindings")
        tx._c.execute("DELETE FROM meta WHERE key = 'bindings'")
        tx._c.execute("PRAGMA user_version = 2")  # the schema before the index
    store.close()
    store = Store(tmp_path / "s.db").open()
    with store.transaction() as tx:
        assert tx.networks.bindings_on("udp", 5353) == [PortBinding("udp", 53, "127.0.0.1", 5353, 4)]
        tx.networks.forget_rows(NID)
        assert tx.networks.bindings_on("udp", 5353) == []
    store.close()


V6 = [IpamDataSpec(pool="fd70:6201:ff00:1::/64", gateway="fd70:6201:ff00:1::1/64")]
MODE4, MODE6 = "com.docker.network.bridge.gateway_mode_ipv4", "com.docker.network.bridge.gateway_mode_ipv6"


def test_a_routed_family_publishes_the_container_port_at_its_address_with_no_host_port_and_no_nat(fake_services):
    """Issue 18: gateway_mode_ipv6=routed next to IPv4's nat (the common case): IPv6 gets no
    DNAT and no masquerade, only its container port opened; IPv4 is published as ever. Two
    containers may both publish port 80 on the routed family: no host port is taken."""
    create(fake_services, ipv6=True, v6=V6, generic={MODE6: "routed"})
    eps, fw, bridge = fake_services.endpoints, fake_services.firewall, f"pt-{NID[:12]}"
    assert fw.elements("routed6") == {bridge: None} and fw.elements("routed4") == {}
    assert fw.elements("masq") == {bridge: None}, "IPv4 still masqueraded (the post chain returns early for IPv6)"
    portmap = [{"Proto": 6, "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}]
    eps.create(NID, EID, address="10.200.1.2/24", address6="fd70:6201:ff00:1::2/64", mac="")
    eps.program(NID, EID, portmap)
    assert fw.elements("to4_any") == {("tcp", 8080): "10.200.1.2"} and fw.elements("to6_any") == {}
    assert fw.elements("published6") == {(bridge, "fd70:6201:ff00:1::2", "tcp", 80): None}
    other = "ef" * 32
    eps.create(NID, other, address="10.200.1.3/24", address6="fd70:6201:ff00:1::3/64", mac="")
    with pytest.raises(Conflict):  # IPv4's host port 8080 is taken
        eps.program(NID, other, portmap)
    eps.program(NID, other, [{"Proto": 6, "Port": 80, "HostIP": "::", "HostPort": 8080, "HostPortEnd": 8080}])
    assert (bridge, "fd70:6201:ff00:1::3", "tcp", 80) in fw.elements("published6"), "IPv6 only: no host port"
    with fake_services.store.reading() as tx:
        assert [str(b) for b in tx.networks.get_endpoint(other).ports] == ["80/tcp routed (IPv6)"]
        assert tx.networks.get(NID).routed == frozenset({6})  # and the state keeps the mode


def test_nat_unprotected_and_trusted_host_interfaces_are_elements_of_their_sets(fake_services):
    create(
        fake_services,
        generic={MODE4: "nat-unprotected", "com.docker.network.bridge.trusted_host_interfaces": "eth3:vxlan.1"},
    )
    fw, bridge = fake_services.firewall, f"pt-{NID[:12]}"
    assert fw.elements("unprotected4") == {bridge: None} and fw.elements("routed4") == {}
    assert fw.elements("trusted") == {("eth3", bridge): None, ("vxlan.1", bridge): None}
    fake_services.networks.delete(NID)
    assert fw.elements("unprotected4") == {} and fw.elements("trusted") == {}


@pytest.mark.parametrize(
    "generic, message",
    [
        ({MODE4: "route"}, "expected one of nat, nat-unprotected, routed, isolated"),
        ({MODE6: "isolated"}, "only for an --internal network"),
        ({"com.docker.network.bridge.trusted_host_interfaces": "eth0:"}, "'' is not an interface name"),
        ({"com.docker.network.bridge.trusted_host_interfaces": "eth0 eth1"}, "'eth0 eth1' is not an interface name"),
        ({"com.docker.network.bridge.trusted_host_interfaces": "@bridges"}, "'@bridges' is not an interface name"),
        ({"com.docker.network.bridge.trusted_host_interfaces": "a" * 16}, "is not an interface name"),
    ],
)
def test_bad_gateway_modes_and_trusted_interfaces_are_refused_with_nothing_made(fake_services, generic, message):
    with pytest.raises(InvalidRequest, match=message):
        create(fake_services, generic=generic)
    assert state(fake_services) == ([], []) and fake_services.firewall.elements("bridges") == {}


# Issue 20, item 4: fail closed while our table is gone.


def test_while_our_table_cannot_be_rewritten_loopback_ports_are_withheld_and_come_back_with_it(fake_services):
    """The raw chain drops 127.0.0.0/8 arriving from anything but lo; route_localnet on a bridge
    (for ports published on a loopback address) is safe only with it. Before: a table that could
    not be rewritten left route_localnet on, unprotected."""
    create(fake_services)
    eps = fake_services.endpoints
    eps.create(NID, EID, address="10.200.1.2/24", address6="", mac="")
    eps.program(NID, EID, [{"Proto": 6, "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}])
    fw, sysctl, doctor = fake_services.firewall, fake_services.sysctl, fake_services.doctor
    key = ("net", "ipv4", "conf", f"pt-{NID[:12]}", "route_localnet")
    assert sysctl.values[key] == "1"
    fw.kernel = None  # nft flush ruleset
    fw.fail = True  # and the rewrite fails (the injected fault)
    with pytest.raises(KernelError, match="injected firewall failure"):
        doctor.heal_firewall()
    assert sysctl.values[key] == "0"
    assert fake_services.lifecycle.exposed
    eps.create(NID, "ef" * 32, address="10.200.1.3/24", address6="", mac="")
    with pytest.raises(KernelError):  # a change needs the table: it fails,
        eps.program(NID, "ef" * 32, [{"Proto": 6, "Port": 81, "HostIP": "", "HostPort": 8081, "HostPortEnd": 8081}])
    assert sysctl.values[key] == "0"  # and turns nothing on
    fw.fail = False
    doctor.heal_firewall()
    assert fw.drift(*state(fake_services)) == []
    assert sysctl.values[key] == "1" and not fake_services.lifecycle.exposed


def test_an_element_missing_is_repaired_without_withholding_anything(fake_services):
    create(fake_services)
    eps = fake_services.endpoints
    eps.create(NID, EID, address="10.200.1.2/24", address6="", mac="")
    eps.program(NID, EID, [{"Proto": 6, "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}])
    fw, sysctl = fake_services.firewall, fake_services.sysctl
    fw.kernel["sets"]["masq"].clear()
    sysctl.values.clear()
    assert fake_services.doctor.heal_firewall() != []
    assert sysctl.values == {} and not fake_services.lifecycle.exposed


def test_healing_from_events_runs_whatever_the_legacy_poll_setting(tmp_path, monkeypatch):
    """PYBRIDGE_FIREWALL_CHECK=0 used to turn the whole firewall watch off: a `nft flush
    ruleset` then left the table, and its protections, gone for good. It governs only the
    iptables-legacy poll now."""
    import threading

    from plugin.config import load_settings
    from plugin.store.db import Store
    from plugin.wiring import build_services

    from ..fakes import FakeFirewall, FakeNetlink, FakeSysctl
    from ..waiting import wait_for

    settings = load_settings(
        {
            "PYBRIDGE_NAME": "pbtest",
            "PYBRIDGE_IFPREFIX": "pt",
            "PYBRIDGE_FIREWALL_CHECK": "0",
            "PYBRIDGE_METRICS": "off",
            "PYBRIDGE_DOCKER_SOCKET": str(tmp_path / "none.sock"),
        },
        state_dir=str(tmp_path),
        dns=False,
    )
    fw = FakeFirewall()
    watched = []
    done = threading.Event()

    def watch(on_change, legacy_every=2.0):
        watched.append(legacy_every)
        on_change()  # the monitor's first check: the table is healed
        done.wait(10)

    monkeypatch.setattr(fw, "watch", watch)
    store = Store(tmp_path / "state.db").open()
    services = build_services(
        settings, netlink=FakeNetlink(), firewall=fw, sysctl=FakeSysctl(), store=store, synchronous_teardown=True
    )
    monkeypatch.setattr(services.reconciler.bridges, "start", lambda: None)
    create(services)
    fw.kernel = None
    try:
        services.start_background()
        assert wait_for(lambda: watched == [0] and fw.kernel is not None, 10), watched
        assert fw.drift(*state(services)) == []
    finally:
        done.set()
        store.close()


def test_uninstall_keeps_a_users_bridge_a_network_adopted(fake_services):
    """Issue 20, item 5: the README says a bridge pybridge did not make is never deleted; the
    uninstall deleted every network's bridge, adopted ones too. It takes its address off and
    leaves the bridge; its own bridges and veths go."""
    nl = fake_services.netlink
    nl.devices["br-lan"] = FakeLink("br-lan", "bridge")
    create(fake_services, generic={"com.docker.network.bridge.name": "br-lan"})
    create(fake_services, nid="ef" * 32, subnet="10.200.2.0/24")
    fake_services.endpoints.create(NID, EID, address="10.200.1.2/24", address6="", mac="")
    assert nl.devices["br-lan"].addresses == {"10.200.1.1/24"}
    report = fake_services.reconciler.uninstall()
    assert report["errors"] == []
    assert "br-lan" in nl.devices and nl.devices["br-lan"].addresses == set()
    assert f"pt-{'ef' * 6}" not in nl.devices
    assert not [n for n in nl.devices if n.startswith("pt")], sorted(nl.devices)
