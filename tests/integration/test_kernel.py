"""Netlink and firewall adapters against a real kernel, in a namespace of the test's own."""

import ipaddress
import json

import pytest

from plugin.domain.errors import Conflict, KernelError
from plugin.domain.model import Network, Subnet
from tests.legacy_iptables import IptablesFirewall
from plugin.kernel.netlink import Netlink

from .conftest import run


def links(netns):
    return {l["ifname"]: l for l in json.loads(run(netns, "ip", "-j", "-d", "link", "show"))}


def addrs(netns, dev):
    out = json.loads(run(netns, "ip", "-j", "addr", "show", "dev", dev))[0]["addr_info"]
    return {f"{a['local']}/{a['prefixlen']}" for a in out if a.get("scope") == "global"}


def test_bridge_addresses_and_veth(netns):
    nl = Netlink(netns)
    assert nl.ensure_bridge("pt-br1", 1400, "02:aa:bb:cc:dd:ee") is True
    assert nl.ensure_bridge("pt-br1", 1400, "02:aa:bb:cc:dd:ee") is False
    gw4, gw6 = ipaddress.ip_interface("10.200.9.1/24"), ipaddress.ip_interface("fd70:6201:9::1/64")
    nl.ensure_addresses("pt-br1", [gw4, gw6])
    nl.ensure_addresses("pt-br1", [gw4, gw6])
    assert addrs(netns, "pt-br1") == {"10.200.9.1/24", "fd70:6201:9::1/64"}
    nl.create_veth("pth1", "ptc1", "pt-br1", None, "02:42:0a:c8:09:02")
    ls = links(netns)
    assert ls["pt-br1"]["mtu"] == 1400 and ls["pt-br1"]["address"] == "02:aa:bb:cc:dd:ee"
    assert ls["pth1"]["master"] == "pt-br1" and ls["pth1"]["mtu"] == 1400
    assert ls["ptc1"]["address"] == "02:42:0a:c8:09:02"
    assert ls["pth1"]["linkinfo"]["info_slave_data"]["hairpin"] is False  # (only with published ports)
    nl.set_hairpin("pth1")
    assert links(netns)["pth1"]["linkinfo"]["info_slave_data"]["hairpin"] is True
    with pytest.raises(KernelError, match="no such link"):
        nl.set_hairpin("pthnone")
    info = nl.link("pth1")  # (rtnl.py's reading of a link, against ip's)
    assert (info.name, info.index, info.kind, info.mtu, info.mac) == (
        "pth1",
        ls["pth1"]["ifindex"],
        "veth",
        1400,
        ls["pth1"]["address"],
    )
    assert info.master == ls["pt-br1"]["ifindex"] and nl.link("pt-br1").master is None
    assert nl.link("pt-none") is None and nl.link("x" * 16) is None and nl.link("a/b") is None
    assert ls["pt-br1"]["address"] == "02:aa:bb:cc:dd:ee"  # a port does not change the bridge MAC
    nl.create_veth("pth1", "ptc1", "pt-br1", None, "02:42:0a:c8:09:03")  # leftovers are replaced
    assert links(netns)["ptc1"]["address"] == "02:42:0a:c8:09:03"
    assert "UP" in links(netns)["pth1"]["flags"]
    assert nl.set_link_up("pth1", False) is True and "UP" not in links(netns)["pth1"]["flags"]  # off the wire
    assert nl.set_link_up("pt-gone", False) is False
    routes = {t.network for t in nl.host_networks()}
    assert ipaddress.ip_network("10.200.9.0/24") in routes
    assert nl.delete_link("pth1") is True
    assert nl.delete_link("pth1") is False and "ptc1" not in links(netns)
    nl.remove_addresses("pt-br1", [gw4])
    nl.remove_addresses("pt-br1", [gw4])
    assert addrs(netns, "pt-br1") == {"fd70:6201:9::1/64"}
    assert nl.delete_link("pt-br1") is True
    assert nl.delete_link("pt-br1") is False
    nl.remove_addresses("pt-br1", [gw6])  # a missing link is fine too


def test_a_non_bridge_link_is_not_taken_over(netns):
    run(netns, "ip", "link", "add", "pt-x", "type", "veth", "peer", "name", "pt-y")
    with pytest.raises(Conflict):
        Netlink(netns).ensure_bridge("pt-x", None, "02:00:00:00:00:01")
    assert links(netns)["pt-x"]["linkinfo"]["info_kind"] == "veth"


def saved(netns, tool="iptables-save"):
    return run(netns, tool)


def test_the_migration_removes_every_chain_and_jump_an_old_version_left_and_nothing_else(netns):
    """plugin/kernel/iptables_migration.py against what the old adapter (tests/legacy_iptables)
    writes, with a rule of someone else's in the same chains."""
    from plugin.kernel.iptables_migration import OldIptablesChains

    net = Network(
        id="a" * 64,
        bridge="pt-br1",
        subnets=(Subnet(ipaddress.ip_network("10.200.9.0/24")), Subnet(ipaddress.ip_network("fd70:6201:9::/64"))),
    )
    IptablesFirewall("PBTI", netns=netns).sync([net])
    run(netns, "iptables", "-A", "FORWARD", "-i", "other0", "-j", "ACCEPT")
    assert "PBTI-" in saved(netns) and "PBTI-" in saved(netns, "ip6tables-save")
    OldIptablesChains("PBTI", netns=netns).remove_all()
    OldIptablesChains("PBTI", netns=netns).remove_all()  # again: nothing to do
    assert "PBTI" not in saved(netns) and "PBTI" not in saved(netns, "ip6tables-save")
    assert "-A FORWARD -i other0 -j ACCEPT" in saved(netns)


# The tests below are of the old adapter itself (tests/legacy_iptables): what the upgrade
# tests rely on it to write.


def test_firewall_sync_is_whole_chain_and_idempotent(netns):
    fw = IptablesFirewall("PBTI", netns=netns)
    net = Network(
        id="a" * 64,
        bridge="pt-br1",
        subnets=(Subnet(ipaddress.ip_network("10.200.9.0/24")), Subnet(ipaddress.ip_network("fd70:6201:9::/64"))),
    )
    fw.sync([net])
    fw.sync([net])
    v4 = saved(netns)
    assert v4.count("-A FORWARD -j PBTI-FORWARD") == 1
    assert v4.count("-A POSTROUTING -j PBTI-POSTROUTING") == 1
    assert "-A PBTI-FORWARD -i pt-br1 -o pt-br1 -j ACCEPT" in v4
    assert "-A PBTI-POSTROUTING -s 10.200.9.0/24 ! -o pt-br1 -j MASQUERADE" in v4
    assert "-A PBTI-POSTROUTING -s fd70:6201:9::/64 ! -o pt-br1 -j MASQUERADE" in saved(netns, "ip6tables-save")
    # a rule added to our chain from outside is dropped by the next checking sync (the chain is ours)
    run(netns, "iptables", "-A", "PBTI-FORWARD", "-i", "stray", "-j", "ACCEPT")
    fw.sync([net])
    assert "stray" not in saved(netns)
    # jumps deleted from outside come back when a sync checks them
    run(netns, "iptables", "-D", "FORWARD", "-j", "PBTI-FORWARD")
    fw.sync([net, Network(id="c" * 64, bridge="pt-br9", subnets=())], check_jumps=False)
    fw.sync([net], check_jumps=False)
    assert "-A FORWARD -j PBTI-FORWARD" not in saved(netns)
    fw.sync([net])
    assert saved(netns).count("-A FORWARD -j PBTI-FORWARD") == 1
    fw.sync([])
    assert "pt-br1" not in saved(netns)
    fw.remove_all()
    fw.remove_all()
    assert "PBTI" not in saved(netns) and "PBTI" not in saved(netns, "ip6tables-save")


def chain(netns, name, table="filter"):
    return [
        l for l in saved(netns).split(f"*{table}")[1].split("COMMIT")[0].splitlines() if l.startswith(f"-A {name} ")
    ]


def test_firewall_jumps_from_docker_user_when_dockerd_made_it(netns):
    run(netns, "iptables", "-N", "DOCKER-USER")
    run(netns, "iptables", "-A", "DOCKER-USER", "-j", "RETURN")
    run(netns, "iptables", "-A", "FORWARD", "-j", "DOCKER-USER")
    fw = IptablesFirewall("PBTI", netns=netns)
    fw.sync([])
    fw.sync([])
    assert chain(netns, "DOCKER-USER") == ["-A DOCKER-USER -j PBTI-ISOLATE", "-A DOCKER-USER -j RETURN"]
    assert chain(netns, "FORWARD") == ["-A FORWARD -j DOCKER-USER", "-A FORWARD -j PBTI-FORWARD"]
    fw.remove_all()
    assert "PBTI" not in saved(netns) and "-A DOCKER-USER -j RETURN" in saved(netns)


def test_administrators_docker_user_rules_stay_first_and_order_is_repaired(netns):
    """Issue 8, item 6: our filter chain, full of ACCEPTs, was jumped to from position 1 of
    DOCKER-USER and of FORWARD, and after a reinstall sat ahead of DOCKER-USER itself."""
    run(netns, "iptables", "-N", "DOCKER-USER")
    run(netns, "iptables", "-A", "DOCKER-USER", "-j", "RETURN")
    # a reinstall on a host where dockerd was there first: our old jumps at position 1
    run(netns, "iptables", "-N", "PBTI-FORWARD")
    run(netns, "iptables", "-I", "FORWARD", "1", "-j", "PBTI-FORWARD")
    run(netns, "iptables", "-I", "FORWARD", "1", "-j", "DOCKER-USER")
    run(netns, "iptables", "-A", "FORWARD", "-o", "docker0", "-j", "ACCEPT")
    run(netns, "iptables", "-I", "FORWARD", "1", "-j", "PBTI-FORWARD")  # ahead of DOCKER-USER
    run(netns, "iptables", "-I", "DOCKER-USER", "1", "-j", "PBTI-FORWARD")  # the old layout
    run(netns, "iptables", "-I", "DOCKER-USER", "1", "-s", "203.0.113.9", "-j", "DROP")  # an admin's rule
    fw = IptablesFirewall("PBTI", netns=netns)
    net = Network(id="a" * 64, bridge="pt-br1", subnets=(Subnet(ipaddress.ip_network("10.200.9.0/24")),))
    assert any("misplaced" in p or "duplicate" in p for p in fw.drift([net]))
    assert any("stale jump -A DOCKER-USER -j PBTI-FORWARD" in p for p in fw.drift([net]))
    fw.sync([net])
    assert chain(netns, "DOCKER-USER") == [
        "-A DOCKER-USER -s 203.0.113.9/32 -j DROP",
        "-A DOCKER-USER -j PBTI-ISOLATE",
        "-A DOCKER-USER -j RETURN",
    ]
    assert chain(netns, "FORWARD") == [
        "-A FORWARD -j DOCKER-USER",
        "-A FORWARD -j PBTI-FORWARD",
        "-A FORWARD -o docker0 -j ACCEPT",
    ]
    assert fw.drift([net]) == []
    # an administrator inserts another rule later; a sync (a heal, a restart) keeps it first
    run(netns, "iptables", "-I", "DOCKER-USER", "1", "-o", "pt-br1", "-j", "DROP")
    run(netns, "iptables", "-D", "FORWARD", "-j", "PBTI-FORWARD")
    fw.sync([net])
    assert chain(netns, "DOCKER-USER")[:2] == [
        "-A DOCKER-USER -o pt-br1 -j DROP",
        "-A DOCKER-USER -s 203.0.113.9/32 -j DROP",
    ]
    assert chain(netns, "FORWARD")[:2] == ["-A FORWARD -j DOCKER-USER", "-A FORWARD -j PBTI-FORWARD"]
    # our DOCKER-USER chain only ever drops: the ACCEPTs are all in the chain jumped to after it
    assert not any("ACCEPT" in r for r in chain(netns, "PBTI-ISOLATE") + chain(netns, "PBTI-EGRESS"))
    fw.remove_all()
    assert "PBTI" not in saved(netns)


def test_loopback_guard_and_gateway_dns_rules_in_raw(netns):
    fw = IptablesFirewall("PBTI", netns=netns)
    net = Network(
        id="a" * 64,
        bridge="pt-br1",
        subnets=(Subnet(ipaddress.ip_network("10.200.9.0/24"), ipaddress.ip_interface("10.200.9.1/24")),),
    )
    fw.sync([net])
    raw = chain(netns, "PBTI-PREROUTING", "raw") + chain(netns, "PBTI-DNS", "raw")
    assert "-A PBTI-PREROUTING -d 127.0.0.0/8 ! -i lo -j DROP" in raw
    assert "-A PBTI-DNS -s 10.200.9.0/24 -d 10.200.9.1/32 -i pt-br1 -j RETURN" in raw
    assert raw[-1] == "-A PBTI-DNS -d 10.200.9.1/32 -j DROP"
    assert "-A PREROUTING -j PBTI-PREROUTING" in saved(netns)
    dnat = chain(netns, "PBTI-DNAT", "nat")
    assert "-A PBTI-DNAT -d 10.200.9.1/32 -p udp -m udp --dport 53 -j RETURN" in dnat
    fw.sync([])
    assert chain(netns, "PBTI-PREROUTING", "raw") == []
    fw.remove_all()
    assert "PBTI" not in saved(netns)


def test_firewall_keeps_other_rules(netns):
    run(netns, "iptables", "-A", "FORWARD", "-i", "other0", "-j", "ACCEPT")
    fw = IptablesFirewall("PBTI", netns=netns)
    fw.sync([Network(id="b" * 64, bridge="pt-br2", subnets=())])
    fw.remove_all()
    assert "-A FORWARD -i other0 -j ACCEPT" in saved(netns)


def test_delete_by_index_spares_a_link_recreated_under_the_same_name(netns):
    nl = Netlink(netns)
    nl.ensure_bridge("pt-br3", None, "02:00:00:00:00:03")
    nl.create_veth("pth3", "ptc3", "pt-br3", None, "02:42:0a:00:00:03")
    old = nl.link("pth3").index
    nl.create_veth("pth3", "ptc3", "pt-br3", None, "02:42:0a:00:00:04")  # same name, new link
    assert nl.delete_link_by_index(old, "pth3") is False
    assert "pth3" in links(netns)
    assert nl.delete_link_by_index(nl.link("pth3").index, "pth3") is True
    assert "pth3" not in links(netns)


def test_drift_is_empty_after_sync_and_names_outside_changes(netns):
    from plugin.domain.model import Endpoint
    from plugin.domain.ports import PortBinding

    run(netns, "iptables", "-N", "DOCKER-USER")
    fw = IptablesFirewall("PBTI", netns=netns)
    net = Network(
        id="a" * 64,
        bridge="pt-br1",
        subnets=(Subnet(ipaddress.ip_network("10.200.9.0/24")), Subnet(ipaddress.ip_network("fd70:6201:9::/64"))),
    )
    ep = Endpoint(
        id="e" * 64,
        network_id=net.id,
        host_ifname="pth1",
        container_ifname="ptc1",
        mac="02:00:00:00:00:09",
        address4=ipaddress.ip_interface("10.200.9.2/24"),
        address6=ipaddress.ip_interface("fd70:6201:9::2/64"),
        ports=(PortBinding("tcp", 80, "", 8080), PortBinding("udp", 53, "127.0.0.1", 5353, 4)),
    )
    fw.sync([net], [ep])
    assert fw.drift([net], [ep]) == []
    run(netns, "iptables", "-F", "PBTI-FORWARD")
    run(netns, "iptables", "-t", "nat", "-D", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "PBTI-DNAT")
    run(netns, "ip6tables", "-D", "FORWARD", "-j", "PBTI-FORWARD")
    run(netns, "iptables", "-I", "FORWARD", "1", "-j", "DOCKER-USER")
    run(netns, "iptables", "-D", "FORWARD", "-j", "PBTI-FORWARD")
    run(netns, "iptables", "-I", "FORWARD", "1", "-j", "PBTI-FORWARD")  # moved ahead of DOCKER-USER
    problems = fw.drift([net], [ep])
    assert any("IPv4: chain PBTI-FORWARD (filter) has 0 rules" in p for p in problems)
    assert any("IPv4: missing jump -A PREROUTING" in p for p in problems)
    assert any("IPv6: missing jump -A FORWARD -j PBTI-FORWARD" in p for p in problems)
    assert any("IPv4: misplaced jump -A FORWARD -j PBTI-FORWARD" in p for p in problems)
    fw.sync([net], [ep])
    assert fw.drift([net], [ep]) == []
    fw.remove_all()


def test_watch_links_reports_bridges_and_gateway_routes_only(netns):
    import threading
    import time

    nl = Netlink(netns)
    calls = []
    threading.Thread(target=nl.watch_links, args=(lambda: calls.append(time.monotonic()),), daemon=True).start()

    def after(action, expect_call: bool) -> None:
        before = len(calls)
        action()
        if expect_call:
            deadline = time.monotonic() + 10
            while len(calls) == before and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(calls) > before, f"no call after {action.__doc__}"
        else:
            time.sleep(0.5)
            assert len(calls) == before, f"a call after {action.__doc__}"

    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:  # the catch-up call once subscribed
        time.sleep(0.02)
    assert calls

    def new_bridge():
        """a new bridge"""
        run(netns, "ip", "link", "add", "pt-wbr", "type", "bridge")
        run(netns, "ip", "addr", "add", "10.200.99.1/24", "dev", "pt-wbr")
        run(netns, "ip", "link", "set", "pt-wbr", "up")

    def veth_on_it():
        """a veth on the bridge, up, its carrier and routes (what a container start does)"""
        run(netns, "ip", "link", "add", "pth9", "type", "veth", "peer", "name", "ptc9")
        run(netns, "ip", "link", "set", "pth9", "master", "pt-wbr", "up")
        run(netns, "ip", "link", "set", "ptc9", "up")

    def gateway_route():
        """a default route through the bridge"""
        run(netns, "ip", "route", "add", "default", "via", "10.200.99.254", "dev", "pt-wbr")

    def gone():
        """the bridge removed"""
        run(netns, "ip", "link", "del", "pth9")
        run(netns, "ip", "link", "del", "pt-wbr")

    after(new_bridge, True)
    after(veth_on_it, False)
    after(gateway_route, True)
    after(gone, True)


def test_create_veth_reads_the_bridge_again_when_the_one_it_kept_is_gone(netns):
    """create_veth keeps a bridge's index for a few seconds (each lookup waits for the kernel's
    RTNL lock while containers start). A bridge deleted and made again by hand under the same
    name has a new index: the kernel refuses the old one as master, and the veth is made on the
    new bridge. A bridge that is simply gone is reported, and no veth is left."""
    nl = Netlink(netns)
    nl.ensure_bridge("pt-br4", None, "02:00:00:00:00:04")
    nl.create_veth("pth4", "ptc4", "pt-br4", None, "02:42:0a:00:00:05")
    old = links(netns)["pt-br4"]["ifindex"]
    run(netns, "ip", "link", "del", "pt-br4")  # (by hand: not through the adapter, which would forget it)
    run(netns, "ip", "link", "add", "pt-br4", "mtu", "1300", "type", "bridge")
    ls = links(netns)
    assert ls["pt-br4"]["ifindex"] != old
    nl.create_veth("pth5", "ptc5", "pt-br4", None, "02:42:0a:00:00:06")
    ls = links(netns)
    assert ls["pth5"]["master"] == "pt-br4" and ls["pth5"]["mtu"] == 1300
    run(netns, "ip", "link", "del", "pt-br4")
    with pytest.raises(KernelError, match="pt-br4 does not exist"):
        nl.create_veth("pth6", "ptc6", "pt-br4", None, "02:42:0a:00:00:07")
    assert not {"pth6", "ptc6"} & set(links(netns))
