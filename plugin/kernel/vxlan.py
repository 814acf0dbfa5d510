"""VXLAN devices of cluster networks, and the forwarding entries that reach remote containers.

No flooding and no learning (neither the device nor its bridge port learns): each remote
container is one forwarding entry on the VXLAN device
(its MAC -> the underlay address of its host), one on the bridge (its MAC -> the VXLAN port) and
one neighbour entry (its IP -> its MAC) that the device answers ARP and neighbour solicitations
from, locally ("proxy"). So broadcasts never leave the host, and nothing is learned from what a
remote host sends.
"""

from __future__ import annotations

import errno
import ipaddress
from typing import Any, Callable

from pyroute2.iproute.linux import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import NTF_MASTER, NUD_NOARP, NUD_PERMANENT

from ..domain.errors import Conflict, KernelError
from ..domain.naming import is_valid_ifname

_GONE = (errno.ENODEV, errno.ENOENT, errno.ESRCH)
NTF_SELF = 0x02


class Vxlan:
    def __init__(self, netns: str | None = None):
        self.netns = netns

    def _ipr(self) -> IPRoute:
        return IPRoute(netns=self.netns, flags=0) if self.netns else IPRoute()

    def underlay(self, address: str) -> tuple[str, int] | None:
        """(link name, MTU) of the link that holds address, or None."""
        with self._ipr() as ipr:
            for a in ipr.get_addr():
                if a.get("IFA_ADDRESS") == address or a.get("IFA_LOCAL") == address:
                    link = ipr.link("get", index=a["index"])[0]
                    return link.get("ifname"), link.get("mtu")
        return None

    def ensure_vxlan(self, name: str, vni: int, local: str, port: int, mtu: int, bridge: str) -> bool:
        """The device, on the bridge, up, with this MTU. True when it was made now."""
        if not is_valid_ifname(name):
            raise KernelError(f"invalid VXLAN device name {name!r}")
        ipaddress.ip_address(local)
        with self._ipr() as ipr:
            try:
                found = ipr.link("get", ifname=name)[0]
            except NetlinkError as e:
                if e.code not in _GONE:
                    raise KernelError(f"look up {name}: {e}") from e
                found = None
            created = False
            if found is not None:
                kind = found.get(("linkinfo", "kind"))
                have = found.get(("linkinfo", "data", "IFLA_VXLAN_ID"))
                if kind != "vxlan" or have != vni:
                    raise Conflict(f"a link named {name} exists and is not VXLAN {vni}")
            else:
                # the local address must be there (VXLAN never starts without its path, e.g. a
                # WireGuard device that did not come up), but the device is not bound to the link
                # that holds it: bound, the kernel deletes it, and its entries, with that link (a
                # userspace WireGuard's TUN device goes with its process), and nothing here needs
                # the binding (no multicast: every destination is a static entry)
                if self.underlay(local) is None:
                    raise KernelError(f"no link holds the underlay address {local}")
                try:
                    ipr.link(
                        "add",
                        ifname=name,
                        kind="vxlan",
                        vxlan_id=vni,
                        vxlan_local=local,
                        vxlan_port=port,
                        vxlan_learning=0,
                        vxlan_proxy=1,
                        mtu=mtu,
                    )
                except NetlinkError as e:
                    if e.code == errno.EEXIST:
                        raise Conflict(
                            f"VXLAN {vni} (port {port}) already exists on this host under another name"
                        ) from e
                    raise KernelError(f"create VXLAN {name} (VNI {vni}): {e}") from e
                created = True
            try:
                br = ipr.link_lookup(ifname=bridge)
                if not br:
                    raise KernelError(f"bridge {bridge} of VXLAN {name} is missing")
                index = ipr.link_lookup(ifname=name)[0]
                ipr.link("set", index=index, master=br[0], mtu=mtu, state="up")
                # the bridge learns nothing from what arrives over VXLAN: a frame from another
                # host with a local container's (or the gateway's) source MAC would move that
                # MAC onto the VXLAN port and cut it off; remote MACs are static entries
                ipr.brport("set", index=index, learning=0)
            except NetlinkError as e:
                raise KernelError(f"attach VXLAN {name} to {bridge}: {e}") from e
            return created

    def peers(self, name: str) -> dict[str, tuple[str, frozenset[str]]]:
        """mac -> (remote host, addresses) as programmed on the device."""
        with self._ipr() as ipr:
            index = self._index(ipr, name)
            if index is None:
                return {}
            return self._read(ipr, index)

    @staticmethod
    def _index(ipr: IPRoute, name: str) -> int | None:
        found = ipr.link_lookup(ifname=name)
        return found[0] if found else None

    @staticmethod
    def _read(ipr: IPRoute, index: int) -> dict[str, tuple[str, frozenset[str]]]:
        own = ipr.link("get", index=index)[0].get("address")
        out: dict[str, tuple[str, set[str]]] = {}
        for m in ipr.fdb("dump", ifindex=index):
            mac, dst = m.get("NDA_LLADDR"), m.get("NDA_DST")
            if m["flags"] & NTF_SELF and dst and mac and mac != own and mac != "00:00:00:00:00:00":
                out[mac] = (dst, set())
        for m in ipr.neigh("dump", ifindex=index):
            mac, ip = m.get("NDA_LLADDR"), m.get("NDA_DST")
            if mac in out and ip:
                out[mac][1].add(ip)
        return {mac: (dst, frozenset(ips)) for mac, (dst, ips) in out.items()}

    def set_peers(self, name: str, bridge: str, peers: dict[str, tuple[str, frozenset[str]]]) -> None:
        """Make the device's remote entries exactly `peers` (mac -> (host, addresses)): what is
        missing is added, what changed replaced, what is no longer there removed."""
        with self._ipr() as ipr:
            index = self._index(ipr, name)
            br = ipr.link_lookup(ifname=bridge)
            if index is None or not br:
                raise KernelError(f"VXLAN {name} or its bridge {bridge} is missing")
            self._reconcile(ipr, name, index, br[0], self._read(ipr, index), peers)

    def update_peers(
        self,
        name: str,
        bridge: str,
        peers: dict[str, tuple[str, frozenset[str]]],
        have: dict[str, tuple[str, frozenset[str]]],
    ) -> None:
        """Only some MACs' entries: `have` is what is programmed for them (what the caller set
        before), `peers` what they should be now (a MAC of `have` not in it goes). Reads nothing
        from the kernel: reading every entry back took most of the time at thousands of peers."""
        with self._ipr() as ipr:
            index = self._index(ipr, name)
            br = ipr.link_lookup(ifname=bridge)
            if index is None or not br:
                raise KernelError(f"VXLAN {name} or its bridge {bridge} is missing")
            self._reconcile(ipr, name, index, br[0], have, peers)

    def _reconcile(
        self,
        ipr: IPRoute,
        name: str,
        index: int,
        bridge_index: int,
        have: dict[str, tuple[str, frozenset[str]]],
        peers: dict[str, tuple[str, frozenset[str]]],
    ) -> None:
        """The entries `have` made those of `peers`."""
        refused: list[str] = []
        for mac, (host, ips) in have.items():
            want = peers.get(mac)
            if want is not None and want[0] == host:
                for ip in ips - want[1]:
                    self._quiet(ipr.neigh, "del", ifindex=index, dst=ip, lladdr=mac)
                continue
            self._quiet(ipr.fdb, "del", ifindex=index, lladdr=mac, dst=host)
            self._quiet(ipr.fdb, "del", ifindex=index, lladdr=mac, master=bridge_index, flags=NTF_MASTER)
            for ip in ips:
                self._quiet(ipr.neigh, "del", ifindex=index, dst=ip, lladdr=mac)
        for mac, (host, ips) in peers.items():
            try:
                if have.get(mac, ("",))[0] != host:
                    ipr.fdb("append", ifindex=index, lladdr=mac, dst=host, state=NUD_PERMANENT)
                    # static, not permanent: a permanent bridge entry means "this host's
                    # own MAC", and the bridge would deliver the frames to itself. Added,
                    # never replaced: an entry the bridge has (its own MAC, a local
                    # container's) stays where it is
                    if not self._add_bridge_entry(ipr, index, bridge_index, mac):
                        self._quiet(ipr.fdb, "del", ifindex=index, lladdr=mac, dst=host)
                        refused.append(mac)
                        continue
                for ip in ips - (have[mac][1] if mac in have and have[mac][0] == host else frozenset()):
                    ipr.neigh("replace", ifindex=index, dst=ip, lladdr=mac, state=NUD_PERMANENT)
            except NetlinkError as e:
                raise KernelError(f"VXLAN {name}: entry {mac} via {host}: {e}") from e
        if refused:
            raise KernelError(
                f"VXLAN {name}: {', '.join(refused)} not taken from other hosts: the bridge "
                "has them on a port of its own (its MAC, a container here)"
            )

    @staticmethod
    def _add_bridge_entry(ipr: IPRoute, index: int, bridge: int, mac: str) -> bool:
        """False when the bridge has the MAC on another port (its own, a local container's)."""
        try:
            ipr.fdb("add", ifindex=index, lladdr=mac, master=bridge, flags=NTF_MASTER, state=NUD_NOARP)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
            return any(
                m.get("NDA_LLADDR") == mac and m["flags"] & NTF_MASTER  # ours already
                for m in ipr.fdb("dump", ifindex=index)
            )
        return True

    @staticmethod
    def _quiet(fn: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except NetlinkError as e:
            if e.code not in _GONE:
                raise KernelError(f"remove a VXLAN entry: {e}") from e
