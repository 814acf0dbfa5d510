"""The kernel adapters and their fakes implement the same interfaces (plugin/kernel/interfaces.py):
every method of each Protocol, with the same parameters, on both the real adapter and the fake
that the logic tests use in its place."""

from __future__ import annotations

import inspect

import pytest

from plugin.kernel.interfaces import FirewallPort, HostDnsPort, NetlinkPort, SysctlPort
from plugin.kernel.netlink import Netlink
from plugin.kernel.nft import NftFirewall
from plugin.kernel.resolved import ResolvedLinks
from plugin.kernel.sysctl import Sysctl
from plugin.cluster.etcd import EtcdKV
from plugin.cluster.interfaces import ClusterKVPort
from plugin.kernel.interfaces import OverlayPort, TunnelPort
from plugin.kernel.vxlan import Vxlan
from plugin.kernel.wireguard import WireGuard
from plugin.cluster.tunnel import Encrypted, Plain, UnderlayPath
from plugin.cluster.service import ClusterService
from plugin.dns.service import DnsService
from plugin.cluster.claims import EtcdClaims
from plugin.cluster.networks import ClusterNetworks
from plugin.ipam.claims import AddressClaims, LocalClaims
from plugin.driver.ports import ClusterView, DnsPort, LocalOnly, NetworkHooks, ReaperPort
from plugin.driver.reaper import Reaper
from tests.fakes import (
    FakeFirewall,
    FakeHostDns,
    FakeKV,
    FakeKVUser,
    FakeNetlink,
    FakeOverlay,
    FakeSysctl,
    FakeWireGuard,
)

PAIRS = [
    (NetlinkPort, Netlink),
    (NetlinkPort, FakeNetlink),
    (FirewallPort, NftFirewall),
    (FirewallPort, FakeFirewall),
    (SysctlPort, Sysctl),
    (SysctlPort, FakeSysctl),
    (HostDnsPort, ResolvedLinks),
    (HostDnsPort, FakeHostDns),
    (OverlayPort, Vxlan),
    (OverlayPort, FakeOverlay),
    (TunnelPort, WireGuard),
    (TunnelPort, FakeWireGuard),
    (UnderlayPath, Plain),
    (UnderlayPath, Encrypted),
    (ClusterKVPort, EtcdKV),
    (ClusterKVPort, FakeKV),
    (ClusterKVPort, FakeKVUser),
    # the services beside the driver, as the driver sees them (plugin/driver/ports.py)
    (DnsPort, DnsService),
    (ClusterView, ClusterService),
    (ReaperPort, Reaper),
    (NetworkHooks, ClusterNetworks),
    (NetworkHooks, LocalOnly),
    # IPAM's claim strategies, one per pool
    (AddressClaims, LocalClaims),
    (AddressClaims, EtcdClaims),
]


def _methods(protocol) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(fn) for name, fn in vars(protocol).items() if callable(fn) and not name.startswith("_")
    }


def _shape(sig: inspect.Signature) -> list[tuple[str, str, bool]]:
    """Parameter names, kinds and whether each has a default (annotations aside)."""
    return [(p.name, str(p.kind), p.default is not inspect.Parameter.empty) for p in sig.parameters.values()]


@pytest.mark.parametrize("protocol,impl", PAIRS, ids=lambda x: x.__name__)
def test_implements_every_method_with_the_same_parameters(protocol, impl):
    methods = _methods(protocol)
    assert methods, protocol
    for name, sig in methods.items():
        assert callable(getattr(impl, name, None)), f"{impl.__name__} lacks {protocol.__name__}.{name}"
        assert _shape(inspect.signature(getattr(impl, name))) == _shape(sig), (
            f"{impl.__name__}.{name}{inspect.signature(getattr(impl, name))} differs from {protocol.__name__}.{name}{sig}"
        )


@pytest.mark.parametrize("protocol,impl", [(ClusterView, ClusterService)], ids=lambda x: x.__name__)
def test_implements_every_property(protocol, impl):
    for name, member in vars(protocol).items():
        if isinstance(member, property):
            assert isinstance(getattr(impl, name, None), property), f"{impl.__name__} lacks property {name}"


def test_a_missing_method_is_caught():
    class Partial:
        def get(self, *parts): ...

    with pytest.raises(AssertionError):
        test_implements_every_method_with_the_same_parameters(SysctlPort, Partial)
