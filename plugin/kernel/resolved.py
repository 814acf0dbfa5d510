"""Container names from the host (issue 11): each network's DNS registered with systemd-resolved
for its bridge, the network's name as a routing-only domain, the way LXD does it for its bridges.
`getent hosts web.app`, `ping web.app`, `curl http://web.app/` on the host then ask the DNS of
network app, through resolved, for exactly the names under app; nothing else is routed there.

resolved's D-Bus API (org.freedesktop.resolve1.Manager): SetLinkDNS, SetLinkDomains (routing
only), SetLinkDefaultRoute false, LLMNR/mDNS/DNSSEC off for the link. jeepney speaks D-Bus (pure
Python, no libdbus). The calls run on a thread of their own: a plugin call never waits for the
bus. Every desired link is applied again every RESYNC seconds, so a restarted resolved (which
forgets what it was told) gets it back; a link that goes away takes its settings with it.
Where no bus or no resolved answers, nothing happens (logged once).

It also reads resolved's own DNS servers (its DNS property, global and per link, or FallbackDNS
when there are none), for the DNS's upstreams where the host's resolv.conf names resolved's stub:
the stub routes pybridge's suffix back to pybridge. Servers on pybridge's own links are left out,
and so is any server that is an address of the very link it is set for: a bridge whose own
address serves its DNS is pybridge's (another instance's) or a driver's like it, never an upstream.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)

RESYNC = 30.0
STUBS = ("127.0.0.53", "127.0.0.54")  # resolved's own listeners, never an upstream
TIMEOUT = 2.0
Links = dict[str, tuple[tuple[str, ...], str]]  # bridge -> (DNS server addresses, domain)


class ResolvedLinks:
    def __init__(
        self,
        bus_address: str,
        link_index: Callable[[str], int | None],
        link_addresses: Callable[[int], set[str]],
    ):
        self.bus_address = bus_address
        self.link_index = link_index
        self.link_addresses = link_addresses  # ifindex -> its addresses, without prefix length
        self._desired: Links = {}
        self._applied: dict[str, tuple[Any, ...]] = {}  # bridge -> (ifindex, servers, domain) as last told
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._complained = False
        self.applied_count = 0  # links configured since start (tests, metrics)
        self._servers: tuple[str, ...] = ()
        self._servers_wanted = False
        self.on_servers: Callable[[], None] = lambda: None  # the servers read changed

    def servers(self) -> tuple[str, ...]:
        """resolved's DNS servers as last read (none before the first read, which this asks for)."""
        if not self._servers_wanted:
            self._servers_wanted = True
            self._wake.set()
            self._start()
        return self._servers

    # HostDnsPort -----------------------------------------------------------------------------

    def publish(self, links: Links) -> None:
        """The links and servers there should be; applied soon after, on the thread."""
        with self._lock:
            self._desired = dict(links)
        self._wake.set()
        self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pybridge-resolved", daemon=True)
                self._thread.start()

    # ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            woken = self._wake.wait(RESYNC)
            self._wake.clear()
            try:
                self._apply(again=not woken)
            except Exception as e:  # no bus, no resolved, refused: try again later
                if not self._complained:
                    log.info(
                        "host name resolution through systemd-resolved unavailable (%s); "
                        "`pybridge hosts` gives the names to /etc/hosts instead",
                        e,
                    )
                    self._complained = True
                self._applied.clear()

    def _apply(self, again: bool) -> None:
        with self._lock:
            desired = dict(self._desired)
        if not desired and not self._servers_wanted:
            self._applied = {k: v for k, v in self._applied.items() if k in desired}
            return
        if not os.path.exists(self.bus_address.split("unix:path=", 1)[-1].split(",", 1)[0]):
            raise OSError(f"no D-Bus socket at {self.bus_address}")
        from jeepney.io.blocking import open_dbus_connection

        with open_dbus_connection(bus=self.bus_address, auth_timeout=TIMEOUT) as conn:
            for bridge, (servers, domain) in sorted(desired.items()):
                index = self.link_index(bridge)
                if index is None:
                    continue
                state = (index, servers, domain)
                if not again and self._applied.get(bridge) == state:
                    continue
                self._configure(conn, index, servers, domain)
                self._applied[bridge] = state
                self.applied_count += 1
            if self._servers_wanted:
                ours = {i for i in map(self.link_index, desired) if i is not None}
                found = self._read_servers(
                    conn, ours, {a for servers, _ in desired.values() for a in servers}, self.link_addresses
                )
                if found != self._servers:
                    self._servers = found
                    log.info("DNS upstreams from systemd-resolved: %s", ", ".join(found) or "none")
                    try:
                        self.on_servers()
                    except Exception:
                        log.exception("new DNS upstreams from systemd-resolved")
        if self._complained:
            log.info("host name resolution through systemd-resolved: registered %d networks", len(desired))
            self._complained = False
        self._applied = {k: v for k, v in self._applied.items() if k in desired}

    @staticmethod
    def _read_servers(
        conn: Any, our_links: set[int], our_addresses: set[str], link_addresses: Callable[[int], set[str]]
    ) -> tuple[str, ...]:
        """resolved's servers, global then per link (FallbackDNS when it has none), without those
        of pybridge's links or addresses, link-local ones (they need a scope), its stubs, and a
        link's own address set as that link's server."""
        from jeepney import DBusAddress
        from jeepney.wrappers import Properties, unwrap_msg

        manager = Properties(
            DBusAddress(
                "/org/freedesktop/resolve1",
                bus_name="org.freedesktop.resolve1",
                interface="org.freedesktop.resolve1.Manager",
            )
        )
        out: list[str] = []
        on_link: dict[int, set[str]] = {}

        def own(index: int, ip: str) -> bool:
            if index <= 0:  # a global server: on no link
                return False
            if index not in on_link:
                on_link[index] = link_addresses(index)
            return ip in on_link[index]

        for prop in ("DNS", "FallbackDNS"):
            ((signature, entries),) = unwrap_msg(conn.send_and_get_reply(manager.get(prop), timeout=TIMEOUT))
            if signature != "a(iiay)" or not isinstance(entries, list):
                continue
            for entry in entries:
                try:
                    index, family, raw = entry
                    ip = ipaddress.ip_address(bytes(raw))
                    if not isinstance(index, int):
                        raise TypeError(index)
                except (TypeError, ValueError):
                    continue
                if (
                    index in our_links
                    or str(ip) in our_addresses
                    or ip.is_link_local
                    or str(ip) in STUBS
                    or ip.is_unspecified
                    or ip.is_multicast
                    or family not in (2, 10)
                    or str(ip) in out
                    or own(index, str(ip))
                ):
                    continue
                out.append(str(ip))
            if out:
                break
        return tuple(out)

    @staticmethod
    def _configure(conn: Any, index: int, servers: tuple[str, ...], domain: str) -> None:
        from jeepney import DBusAddress, new_method_call
        from jeepney.wrappers import unwrap_msg

        manager = DBusAddress(
            "/org/freedesktop/resolve1",
            bus_name="org.freedesktop.resolve1",
            interface="org.freedesktop.resolve1.Manager",
        )
        addresses = [(2 if a.version == 4 else 10, a.packed) for a in map(ipaddress.ip_address, servers)]
        calls = [
            ("SetLinkDNS", "ia(iay)", (index, addresses)),
            ("SetLinkDomains", "ia(sb)", (index, [(domain, True)])),
            ("SetLinkDefaultRoute", "ib", (index, False)),
            ("SetLinkLLMNR", "is", (index, "no")),
            ("SetLinkMulticastDNS", "is", (index, "no")),
            ("SetLinkDNSSEC", "is", (index, "no")),
        ]
        for method, signature, body in calls:
            unwrap_msg(conn.send_and_get_reply(new_method_call(manager, method, signature, body), timeout=TIMEOUT))
