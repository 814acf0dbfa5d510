"""Links and addresses through netlink. Small, idempotent operations.

What a container's start and end need (a link by name, a veth on a bridge, deleting a link,
up and down) goes through rtnl.py's requests on a socket of our own, about four times faster
than pyroute2's generic messages; the rest (dumps of links, routes, addresses; bridges) through
pyroute2. Each thread has its own socket of each, opened once, so the adapter is safe to call
from any thread. Errors are matched by errno, never by message text.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from pyroute2.iproute.linux import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE, RTMGRP_LINK

from ..domain.errors import Conflict, KernelError
from ..domain.model import IPInterface, Taken
from ..domain.naming import is_valid_ifname
from . import rtevents
from .interfaces import LinkInfo
from .rtnl import Rtnl, RtnlError

log = logging.getLogger(__name__)

IFA_F_NODAD = 0x02
RTN_MULTICAST = 5
_ROUTE_TYPES = {6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw"}
BRIDGE_KEEP = 10.0  # seconds create_veth uses a bridge's index and MTU as read (see Netlink._bridges)
_GONE = (errno.ENODEV, errno.ENOENT, errno.EADDRNOTAVAIL, errno.ESRCH)


def _info(msg: Any) -> LinkInfo:
    return LinkInfo(
        name=msg.get("ifname"),
        index=msg["index"],
        kind=msg.get(("linkinfo", "kind")) or "",
        mtu=msg.get("mtu"),
        master=msg.get("master"),
        mac=msg.get("address") or "",
    )


def _lookup(ipr: IPRoute, name: str) -> LinkInfo | None:
    """One targeted RTM_GETLINK (link_lookup would dump every link)."""
    try:
        return _info(ipr.link("get", ifname=name)[0])
    except NetlinkError as e:
        if e.code in _GONE:
            return None
        raise


class Netlink:
    """The host network namespace as pybridge sees it (or a named one, for tests: the socket is
    opened in it, the calling thread never switches namespace)."""

    def __init__(self, netns: str | None = None):
        self.netns = netns
        self._local = threading.local()
        # bridge name -> (index, MTU, when read): create_veth's lookup of the bridge, kept for
        # BRIDGE_KEEP seconds. Every RTM_GETLINK waits for the kernel's RTNL lock, which the
        # engine holds in turn while containers start (measured here: p99 46 ms, max 108 ms
        # during 30 starts, 0.05 ms idle); a burst on one network needs the lookup once.
        self._bridges: dict[str, tuple[int, int, float]] = {}
        self._bridges_lock = threading.Lock()

    @contextmanager
    def _ipr(self) -> Iterator[IPRoute]:
        """This thread's netlink socket, opened once (opening costs about 1 ms). A socket that
        fails with anything but a netlink error reply is closed and reopened next time."""
        ipr = getattr(self._local, "ipr", None)
        if ipr is None:
            ipr = IPRoute(netns=self.netns, flags=0) if self.netns else IPRoute()
            self._local.ipr = ipr
        try:
            yield ipr
        except NetlinkError:
            raise
        except Exception:
            self._local.ipr = None
            ipr.close()
            raise

    @contextmanager
    def _rtnl(self) -> Iterator[Rtnl]:
        """This thread's socket for the frequent requests (rtnl.py); closed and reopened next
        time after anything but the kernel's refusal of a request."""
        rt = getattr(self._local, "rtnl", None)
        if rt is None:
            rt = Rtnl(self.netns)
            self._local.rtnl = rt
        try:
            yield rt
        except RtnlError:
            raise
        except OSError:  # (the socket itself failed, or timed out)
            self._local.rtnl = None
            rt.close()
            raise

    def link(self, name: str) -> LinkInfo | None:
        with self._rtnl() as rt:
            return rt.link(name)

    def links(self) -> list[LinkInfo]:
        with self._ipr() as ipr:
            return [_info(m) for m in ipr.get_links()]

    def ensure_bridge(self, name: str, mtu: int | None, mac: str) -> bool:
        """Create the bridge if missing and bring it up. True when this call created it.
        An existing link of another kind is a conflict, reported before anything changes."""
        try:
            with self._ipr() as ipr:
                info = _lookup(ipr, name)
                created = False
                if info is None:
                    ipr.link("add", ifname=name, kind="bridge", address=mac, **({"mtu": mtu} if mtu else {}))
                    created = True
                    info = _lookup(ipr, name)
                    if info is None:
                        raise KernelError(f"bridge {name} was made and is not there")
                elif info.kind != "bridge":
                    raise Conflict(f"a {info.kind or 'non-bridge'} link named {name!r} already exists")
                elif mtu and info.mtu != mtu:
                    ipr.link("set", index=info.index, mtu=mtu)
                ipr.link("set", index=info.index, state="up")
                self._forget_bridge(name)
                return created
        except NetlinkError as e:
            raise KernelError(f"create bridge {name}: {e}") from e

    def ensure_addresses(self, name: str, addresses: Iterable[IPInterface]) -> None:
        try:
            with self._ipr() as ipr:
                info = _lookup(ipr, name)
                if info is None:
                    raise KernelError(f"link {name} does not exist")
                for a in addresses:
                    flags = IFA_F_NODAD if a.version == 6 else 0
                    try:
                        ipr.addr("add", index=info.index, address=str(a.ip), prefixlen=a.network.prefixlen, flags=flags)
                    except NetlinkError as e:
                        if e.code != errno.EEXIST:
                            raise
        except NetlinkError as e:
            raise KernelError(f"add addresses to {name}: {e}") from e

    def addresses(self, name: str) -> set[str]:
        """The addresses on a link, as 'ip/prefixlen' (empty when the link is missing)."""
        with self._ipr() as ipr:
            info = _lookup(ipr, name)
            if info is None:
                return set()
            return {f"{a.get('address')}/{a['prefixlen']}" for a in ipr.get_addr(index=info.index)}

    def remove_addresses(self, name: str, addresses: Iterable[IPInterface]) -> None:
        """Idempotent: a missing link or address is not an error."""
        with self._ipr() as ipr:
            info = _lookup(ipr, name)
            if info is None:
                return
            for a in addresses:
                try:
                    ipr.addr("del", index=info.index, address=str(a.ip), prefixlen=a.network.prefixlen)
                except NetlinkError as e:
                    if e.code not in _GONE:
                        raise KernelError(f"remove address {a} from {name}: {e}") from e

    def delete_link(self, name: str) -> bool:
        """Delete a link by name. False when it was already gone."""
        self._forget_bridge(name)
        with self._rtnl() as rt:
            info = rt.link(name)
            if info is None:
                return False
            try:
                rt.delete(info.index)
            except RtnlError as e:
                if e.errno in _GONE:
                    return False
                raise KernelError(f"delete link {name}: {e}") from e
            return True

    def set_link_up(self, name: str, up: bool) -> bool:
        """Bring a link up or down. False when it is gone."""
        with self._rtnl() as rt:
            info = rt.link(name)
            if info is None:
                return False
            try:
                rt.set_up(info.index, up)
            except RtnlError as e:
                if e.errno in _GONE:
                    return False
                raise KernelError(f"set link {name} {'up' if up else 'down'}: {e}") from e
            return True

    def _forget_bridge(self, name: str) -> None:
        with self._bridges_lock:
            self._bridges.pop(name, None)

    def _bridge(self, rt: Rtnl, name: str, fresh: bool) -> tuple[int, int]:
        """The bridge's index and MTU: as read within BRIDGE_KEEP seconds, or read now."""
        now = time.monotonic()
        with self._bridges_lock:
            kept = self._bridges.get(name)
        if kept is not None and not fresh and now - kept[2] < BRIDGE_KEEP:
            return kept[0], kept[1]
        br = rt.link(name)
        if br is None:
            self._forget_bridge(name)
            raise KernelError(f"bridge {name} does not exist")
        with self._bridges_lock:
            self._bridges[name] = (br.index, br.mtu, now)
        return br.index, br.mtu

    def create_veth(self, host: str, peer: str, bridge: str, mtu: int | None, mac: str) -> None:
        """A veth pair with the host end up on the bridge and the peer (for the container)
        carrying the endpoint's MAC. Leftovers of an earlier attempt are replaced. The bridge's
        index may be one read a moment ago: where that bridge is gone (the kernel refuses the
        master, and makes nothing), it is read again and the pair made once more."""
        try:
            with self._rtnl() as rt:
                for fresh in (False, True):
                    index, bridge_mtu = self._bridge(rt, bridge, fresh)
                    try:
                        rt.add_veth(host, peer, index, mtu or bridge_mtu, mac)
                        return
                    except RtnlError as e:
                        if e.errno == errno.EEXIST:
                            for name in (host, peer):
                                old = rt.link(name)
                                if old is not None:
                                    rt.delete(old.index)
                            rt.add_veth(host, peer, index, mtu or bridge_mtu, mac)
                            return
                        if fresh or e.errno not in (errno.EINVAL, errno.ENODEV, errno.EOPNOTSUPP):
                            raise
        except (RtnlError, ValueError) as e:
            self.delete_link(host)
            raise KernelError(f"create veth {host}<->{peer} on {bridge}: {e}") from e

    def set_hairpin(self, name: str) -> None:
        """The bridge port's hairpin mode: a container reaching its own published port through
        a host address is DNATed back to itself, and the bridge must send that out the port it
        came in. Not part of create_veth: the first request after a veth joins a bridge of a
        thousand ports waits ~2 ms for the kernel's work on it (tests/e2e, scripts/bench.py
        --scale), and only a container with published ports needs it."""
        try:
            with self._rtnl() as rt:
                link = rt.link(name)
                if link is None:
                    raise KernelError(f"hairpin on {name}: no such link")
                rt.hairpin(link.index)
        except (RtnlError, ValueError) as e:
            raise KernelError(f"hairpin on {name}: {e}") from e

    def delete_link_by_index(self, index: int, name: str) -> bool:
        """Delete the link with this index only if it still has this name (indexes are not
        reused soon, so a link re-created under the same name is never hit)."""
        with self._rtnl() as rt:
            try:
                info = rt.link_by_index(index)
                if info is None or info.name != name:
                    return False
                rt.delete(index)
            except RtnlError as e:
                if e.errno in _GONE:
                    return False
                raise KernelError(f"delete link {name}: {e}") from e
            return True

    def host_networks(self) -> list[Taken]:
        """Every route in every table (but default routes and multicast) as a range that new
        subnets must not overlap, with a description naming it."""
        taken = []
        with self._ipr() as ipr:
            names = {m["index"]: m.get("ifname") for m in ipr.get_links()}
            for r in ipr.get_routes(table=None):
                if r["dst_len"] == 0 or r["type"] == RTN_MULTICAST or not r.get("dst"):
                    continue
                net = ipaddress.ip_network(f"{r.get('dst')}/{r['dst_len']}", strict=False)
                table = r.get("table")
                oif = r.get("oif")
                where = f"dev {names.get(oif, oif)}" if oif else _ROUTE_TYPES.get(r["type"], f"type {r['type']}")
                where += f", table {table}" if table not in (254, None) else ""
                taken.append(Taken(net, f"host route {net} ({where})"))
        return taken

    def foreign_bridges(self, own: Iterable[str]) -> list[str]:
        """The bridges on the host that are not in `own` and carry no route through a gateway
        (a bridge that does is an uplink: the way out for our networks too). Docker's, libvirt's
        and LXD's bridges, and a user's bridge with no gateway behind it, are foreign."""
        own = set(own)
        try:
            with self._ipr() as ipr:
                bridges = {
                    m["index"]: m.get("ifname") for m in ipr.get_links() if m.get(("linkinfo", "kind")) == "bridge"
                }
                uplinks = set()
                for r in ipr.get_routes(table=None):
                    hops = r.get("multipath") or []
                    if r["dst_len"] == 0 or r.get("gateway") or hops:
                        uplinks.add(r.get("oif"))
                        uplinks.update(h.get("oif") for h in hops)
        except NetlinkError as e:
            raise KernelError(f"list bridges and routes: {e}") from e
        out = []
        for index, name in sorted(bridges.items(), key=lambda kv: str(kv[1])):
            if name in own or index in uplinks:
                continue
            if not is_valid_ifname(name):
                log.warning("bridge %r has a name pybridge cannot write into a rule; it is not isolated", name)
                continue
            out.append(name)
        return out

    def watch_links(self, on_change: Callable[[], None]) -> None:
        """Block on netlink events, calling on_change() once the subscription is in place (to
        catch up) and again whenever what foreign_bridges() reports could have changed: a bridge
        made or removed, a route through a gateway added or withdrawn. The many other events (a
        container start brings some thirty) are skipped after reading two fields of them
        (plugin/kernel/rtevents.py). Run it on a thread of its own."""
        ipr = IPRoute(netns=self.netns, flags=0) if self.netns else IPRoute()
        try:
            ipr.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
            sock = socket.socket(fileno=os.dup(ipr.fileno()))
            sock.setblocking(True)  # the descriptor is shared: pyroute2 made it non-blocking
        except BaseException:
            ipr.close()
            raise
        try:
            seen = {link.index for link in self.links() if link.kind == "bridge"}
            on_change()
            while True:
                try:
                    data = sock.recv(1 << 16)
                except OSError as e:
                    if e.errno != errno.ENOBUFS:
                        raise
                    on_change()  # events were lost: look again
                    continue
                relevant = False
                for event in rtevents.events(data):
                    if isinstance(event, rtevents.GatewayRouteEvent):
                        relevant = True
                    elif event.kind == "bridge" and (event.removed or event.index not in seen):
                        relevant = True
                        (seen.discard if event.removed else seen.add)(event.index)
                if relevant:
                    on_change()
        finally:
            sock.close()
            ipr.close()
