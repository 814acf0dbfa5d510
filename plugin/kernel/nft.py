"""The nftables firewall adapter: pybridge's own `inet` table, programmed as data.

Every change is one libnftables JSON transaction of a few elements, whatever else the table or the
host holds. What must live in iptables is one static rule per backend and family
(plugin.kernel.xtables), and firewalld's table gets two (plugin.kernel.firewalld). Healing
listens to the kernel's nftables notifications (nftevents) instead of polling: only another process's change to our table, or to
the chains holding those rules, leads to a check, and the check reads our table alone.

libnftables runs in this process (NftLibrary), through one context made when the adapter is:
its netlink socket is opened then, once, and libnftables select()s on it, which aborts the
process if its descriptor is >= 1024 (moby#52886). Made at the plugin's start, it gets a low one
and keeps it (measured: batches, errors and a 60,000-element listing with 1,100 descriptors open
afterwards). Should the process already hold 900 descriptors when the adapter is made, the
transactions go to a helper process instead (NftHelper, plugin.kernel.nfthelper). In process a
transaction costs ~0.04 ms of IPC-free work; through the helper a wake-up of another CPU, up to
1 ms on these machines.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Iterable

from ..domain.errors import KernelError
from ..domain.model import Endpoint, Network
from . import nftevents, nftrules
from .firewalld import FirewalldAccept
from .interfaces import FirewallCounters
from .nfthelper import load_nftables
from .xtables import ForwardAccept

log = logging.getLogger(__name__)

TIMEOUT = 20
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


FD_LIMIT = 900
CLONE_NEWNET = 0x40000000


@functools.lru_cache(maxsize=1)
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _set_comm(name: bytes) -> bytes:
    """Name the calling thread (what the kernel's notifications name as the process behind a change); the old name."""
    old = ctypes.create_string_buffer(16)
    _libc().prctl(16, old, 0, 0, 0)                 # PR_GET_NAME
    _libc().prctl(15, name[:15], 0, 0, 0)            # PR_SET_NAME
    return old.value


class NftLibrary:
    """libnftables in this process: one context, its socket opened once when it is made (in the
    namespace `netns`, when given: _in_netns)."""

    def __init__(self, name: str, netns: str | None = None):
        self.name = name[:15]
        self._lock = threading.Lock()
        if netns is None:
            self._ctx = self._make()
        else:
            try:
                self._ctx = _in_netns(netns, self._make)
            except (OSError, ImportError) as e:
                raise KernelError(f"nftables in namespace {netns}: {e}") from None

    @staticmethod
    def _make():
        ctx = load_nftables().Nftables()
        ctx.set_json_output(True)
        ctx.set_handle_output(True)
        return ctx

    def run(self, commands: list[dict]) -> list[dict]:
        if not commands:
            return []
        with self._lock:
            old = _set_comm(self.name.encode())
            try:
                rc, out, err = self._ctx.json_cmd({"nftables": commands})
            finally:
                _set_comm(old)
        if rc != 0:
            raise KernelError(f"nftables: {(err or '').strip() or rc}")
        return [o for o in (out or {}).get("nftables", []) if "metainfo" not in o]

    def stop(self) -> None:
        return None


def _runner(name: str, netns: str | None, argv0: list[str], python: str | None):
    """libnftables in this process while it holds few descriptors, else the helper process."""
    if len(os.listdir("/proc/self/fd")) < FD_LIMIT:
        try:
            return NftLibrary(name, netns)
        except (ImportError, OSError, KernelError) as e:
            log.warning("libnftables in process unavailable (%s): using the helper process", e)
    return NftHelper(name, argv0, python)


class NftHelper:
    """The helper process and its pipe; restarted when it dies."""

    def __init__(self, name: str, argv0: list[str], python: str | None = None):
        self.name = name[:15]
        self._argv0 = argv0
        self._python = python or sys.executable
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
        try:
            return subprocess.Popen(self._argv0 + [self._python, "-m", "plugin.kernel.nfthelper", self.name],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    text=True, env=env, close_fds=True)
        except OSError as e:
            raise KernelError(f"cannot start the nftables helper: {e}") from e

    def stop(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._proc.kill()
                self._proc.wait()
                self._proc = None

    def run(self, commands: list[dict]) -> list[dict]:
        """One transaction; its output objects (for list commands)."""
        if not commands:
            return []
        line = json.dumps({"nftables": commands}) + "\n"
        with self._lock:
            for attempt in (1, 2):
                if self._proc is None or self._proc.poll() is not None:
                    self._proc = self._start()
                try:
                    self._proc.stdin.write(line)
                    self._proc.stdin.flush()
                    answer = self._proc.stdout.readline()
                except (BrokenPipeError, OSError, ValueError):
                    answer = ""
                if answer:
                    break
                self._proc.kill()
                self._proc.wait()
                self._proc = None
                if attempt == 2:
                    raise KernelError("the nftables helper died running a transaction")
        res = json.loads(answer)
        if res["rc"] != 0:
            raise KernelError(f"nftables: {res['err'] or res['rc']}")
        out = res.get("out") or {}
        return [o for o in out.get("nftables", []) if "metainfo" not in o]


class NftFirewall:
    def __init__(self, prefix: str, mark: int = nftrules.DEFAULT_MARK, netns: str | None = None,
                 python: str | None = None, migrate: Callable[[], None] | None = None):
        self.prefix = prefix
        self.table = nftrules.table_name(prefix)
        self.mark = mark
        self.netns = netns
        self._argv0 = ["ip", "netns", "exec", netns] if netns else []
        self.nft = _runner(f"{self.table}-nft", netns, self._argv0, python)
        self.forward = ForwardAccept(prefix, mark, self._argv0, self._nft_tables)
        self.firewalld = FirewalldAccept(prefix, mark, self.nft.run, self._nft_tables)
        self._migrate = migrate    # removes the chains an older pybridge kept in iptables
        self._migrated = False
        self._closed = threading.Event()
        self._monitors: list[socket.socket] = []     # the watch's notification sockets
        self._counters = FirewallCounters()
        self._count_lock = threading.Lock()
        self._vxlan: nftrules.Elements = {}     # cluster mode's VXLAN filter, set by set_vxlan_peers

    # FirewallPort ------------------------------------------------------------------------

    def supports(self, version: int) -> bool:
        return version in (4, 6)    # one inet table filters both families

    def sync(self, networks: Iterable[Network], endpoints: Iterable[Endpoint] = (),
             foreign: Iterable[str] = ()) -> None:
        """Replace our whole table in one transaction, and put the static iptables rule in place."""
        self._change(nftrules.full(self.table, self.mark,
                                   nftrules.merge(nftrules.desired(networks, endpoints, foreign), self._vxlan)))
        self.forward.ensure()
        self.firewalld.ensure()
        if not self._migrated and self._migrate is not None:
            self._migrate()
        self._migrated = True

    def add_network(self, network: Network) -> None:
        self._change(nftrules.add_network(self.table, network))

    def remove_network(self, network: Network, endpoints: Iterable[Endpoint] = ()) -> None:
        self._change(nftrules.remove_network(self.table, network, endpoints))

    def change_ports(self, network: Network, before: Endpoint | None, after: Endpoint | None) -> None:
        self._change(nftrules.change_ports(self.table, network, before, after))

    def set_foreign(self, foreign: Iterable[str], own: Iterable[str] = ()) -> None:
        self._change(nftrules.set_foreign(self.table, foreign, own))

    def set_vxlan_peers(self, port: int, peers: Iterable[str]) -> None:
        """Cluster mode: VXLAN on `port` only from `peers` (port 0: no filter). Kept, and put back
        by every sync."""
        elements = nftrules.vxlan_elements(port, peers)
        self._change(nftrules.set_vxlan(self.table, elements))
        self._vxlan = elements

    def drift(self, networks: Iterable[Network], endpoints: Iterable[Endpoint] = (),
              foreign: Iterable[str] = ()) -> list[str]:
        problems = nftrules.drift(self.mark, nftrules.merge(nftrules.desired(networks, endpoints, foreign),
                                                            self._vxlan), self.listing())
        return problems + self.forward.problems() + self.firewalld.problems()

    def listing(self) -> nftrules.Listed:
        try:
            objects = self.nft.run([{"list": {"table": {"family": nftrules.FAMILY, "name": self.table}}}])
        except KernelError as e:
            if "No such file" in str(e) or "does not exist" in str(e):
                return nftrules.Listed()
            raise
        return nftrules.parse_listing(objects)

    def remove_all(self) -> None:
        """Delete our table and the static rules (uninstall, tests)."""
        tbl = {"family": nftrules.FAMILY, "name": self.table}
        self.nft.run([{"add": {"table": dict(tbl)}}, {"delete": {"table": dict(tbl)}}])
        self.forward.remove()
        self.firewalld.remove()
        if self._migrate is not None:
            self._migrate()

    def counters(self) -> FirewallCounters:
        with self._count_lock:
            return self._counters

    def watch(self, on_change: Callable[[], None], legacy_every: float = 2.0) -> None:
        """Call on_change when another process changed our table, or the iptables chain that
        holds our static rule; blocks (run it in a thread). The legacy iptables backend sends no
        events: where it holds a filter table, our rule there is checked every legacy_every s."""
        Monitor(self, on_change, legacy_every).run()

    def close(self) -> None:
        """Stop the helper (if any) and every monitor (tests, shutdown)."""
        self._closed.set()
        # each watch sees _closed within a second and closes its socket
        self.nft.stop()

    # ---------------------------------------------------------------------------------------

    def _change(self, commands: list[dict]) -> None:
        """One change transaction, counted with its duration (for the metrics)."""
        started = time.perf_counter()
        ok = False
        try:
            self.nft.run(commands)
            ok = True
        finally:
            took = time.perf_counter() - started
            with self._count_lock:
                c = self._counters
                self._counters = FirewallCounters(c.changes + 1, c.failures + (not ok), c.seconds + took)

    def _nft_tables(self) -> set[tuple[str, str]]:
        return {(o["table"]["family"], o["table"]["name"]) for o in self.nft.run([{"list": {"tables": None}}])
                if "table" in o}


def _in_netns(netns: str | None, fn):
    """fn() in the network namespace netns (by a thread that enters it for that alone)."""
    if netns is None:
        return fn()
    out: list = []

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc().setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            out.append((True, fn()))
        except Exception as e:      # handed to the caller's thread
            out.append((False, e))
    t = threading.Thread(target=run)
    t.start()
    t.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value


class Monitor:
    """Follows the kernel's nftables notifications (plugin/kernel/nftevents.py) and tells which
    transactions matter to us: those of another process that touched our table, the iptables
    chain of our static rule or firewalld's chains of our rules."""

    def __init__(self, fw: NftFirewall, on_change: Callable[[], None], legacy_every: float):
        self.fw = fw
        self.on_change = on_change
        self.legacy_every = legacy_every

    def touches(self, change: nftevents.Change) -> bool:
        """Whether one change is to our table, to the iptables filter table or its FORWARD chain
        (where the static rule lives), or to firewalld's table being made or its forward and
        input chains (where firewalld's rules of ours live)."""
        if change.family == nftrules.FAMILY and change.table == self.fw.table:
            return True
        if change.family == "inet" and change.table == "firewalld":
            return change.kind == "table" or change.chain in ("filter_FORWARD", "filter_INPUT")
        return change.family in ("ip", "ip6") and change.table == "filter" and \
            (change.kind == "table" or change.chain == "FORWARD")

    def run(self) -> None:
        if self.fw._closed.is_set():
            return
        sock = _in_netns(self.fw.netns, nftevents.open_socket)
        self.fw._monitors.append(sock)
        try:
            self.on_change()       # whatever happened while nobody listened
            touched, due = False, False
            last_legacy = time.monotonic()
            while not self.fw._closed.is_set():
                timeout = 0.05 if due else min(1.0, max(0.0, self.legacy_every - (time.monotonic() - last_legacy)))
                ready, _, _ = select.select([sock], [], [], timeout)
                if ready:
                    try:
                        data = sock.recv(1 << 20)
                    except OSError as e:
                        if self.fw._closed.is_set():
                            return
                        if e.errno != errno.ENOBUFS:
                            raise KernelError(f"nftables notifications: {e}") from None
                        due = True         # notifications were lost: check
                        continue
                    if not data:
                        if self.fw._closed.is_set():
                            return
                        raise KernelError("nftables notifications stopped")
                    for event in nftevents.parse(data):
                        if isinstance(event, nftevents.Generation):
                            due = due or (touched and event.process != self.fw.nft.name)
                            touched = False
                        else:
                            touched = touched or self.touches(event)
                    continue
                if due:            # a burst is over: check once
                    due = False
                    self.on_change()
                if time.monotonic() - last_legacy >= self.legacy_every:
                    last_legacy = time.monotonic()
                    if self.fw.forward.legacy_active() and self.fw.forward.problems(legacy_only=True):
                        self.on_change()
        finally:
            self.fw._monitors.remove(sock)
            sock.close()
