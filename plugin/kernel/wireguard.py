"""The host's WireGuard device, for cluster mode's encrypted underlay.

Kernel WireGuard when the kernel has it (Linux 5.6 and later build it in or as a module);
otherwise wireguard-go, the userspace implementation, on a TUN device, when it is installed (the
plugin's rootfs has it). Either way the device is configured with `wg` from wireguard-tools, which
speaks to both; every value reaches it as one argv item of a checked form (a key is 32 bytes in
base64, an endpoint an address and a port), never through a shell. Private keys reach `wg` as a
file path or on its standard input, never in argv (which other users may read in /proc).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import subprocess
import time

from pyroute2.iproute.linux import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..domain.errors import KernelError
from ..domain.naming import is_valid_ifname
from . import commands
from .interfaces import TunnelPeer, check_key

_GONE = (errno.ENODEV, errno.ENOENT)
USERSPACE_SOCKETS = "/var/run/wireguard"


class WireGuard:
    def __init__(self, userspace: str = "wireguard-go"):
        self.userspace = userspace  # the userspace implementation's program, when the kernel has none

    # --- keys
    def make_key(self, path: str) -> None:
        """A new private key in `path` (mode 0600, written whole or not at all)."""
        key = commands.run(["wg", "genkey"]).strip()
        check_key(key, "generated key")
        tmp = f"{path}.new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, (key + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    def public_key(self, path: str) -> str:
        """The public key of the private key in `path`."""
        with open(path) as f:
            private = f.read().strip()
        check_key(private, f"private key in {path}")
        return check_key(commands.run(["wg", "pubkey"], stdin=private + "\n").strip(), "public key")

    # --- the device
    def ensure(self, name: str, key_file: str, port: int, address: str, mtu: int) -> str:
        """The device `name` up, with this private key, port, address (ADDRESS/PREFIX) and MTU.
        Returns "kernel" or "userspace": what carries it."""
        if not is_valid_ifname(name):
            raise KernelError(f"invalid WireGuard device name {name!r}")
        iface = ipaddress.ip_interface(address)
        kind = self._make(name)
        self._wg(["set", name, "listen-port", str(int(port)), "private-key", key_file])
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=name)[0]
            have = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index)}
            for a, plen in have - {(str(iface.ip), iface.network.prefixlen)}:
                ipr.addr("del", index=index, address=a, prefixlen=plen)
            if (str(iface.ip), iface.network.prefixlen) not in have:
                ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            ipr.link("set", index=index, mtu=mtu, state="up")
        return kind

    def _make(self, name: str) -> str:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            if found:
                kind = ipr.link("get", index=found[0])[0].get(("linkinfo", "kind"))
                if kind == "wireguard":
                    return "kernel"
                if kind == "tun" and os.path.exists(f"{USERSPACE_SOCKETS}/{name}.sock"):
                    return "userspace"
                raise KernelError(f"a link named {name} exists and is not WireGuard")
            try:
                ipr.link("add", ifname=name, kind="wireguard")
                return "kernel"
            except NetlinkError as e:
                if e.code not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENODEV):
                    raise KernelError(f"create WireGuard device {name}: {e}") from e
        # no WireGuard in this kernel: the userspace implementation, which backgrounds itself
        # once its device and control socket are there
        try:
            res = subprocess.run(
                [self.userspace, name],
                capture_output=True,
                text=True,
                timeout=commands.TIMEOUT,
                env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise KernelError(
                f"this kernel has no WireGuard and {self.userspace} (the userspace one) did not start: {e}"
            ) from e
        if res.returncode != 0:
            raise KernelError(f"{self.userspace} {name} failed: {res.stderr.strip()[-300:] or res.returncode}")
        for _ in range(100):
            if os.path.exists(f"{USERSPACE_SOCKETS}/{name}.sock"):
                return "userspace"
            time.sleep(0.05)
        raise KernelError(f"{self.userspace} made no control socket for {name}")

    def set_key(self, name: str, key_file: str) -> None:
        self._wg(["set", name, "private-key", key_file])

    def peers(self, name: str) -> dict[str, TunnelPeer]:
        """The device's peers as configured (key -> peer)."""
        out: dict[str, TunnelPeer] = {}
        lines = self._wg(["show", name, "dump"]).splitlines()
        for line in lines[1:]:  # the first line is the device's own
            fields = line.split("\t")
            if len(fields) < 4:
                continue
            key, endpoint, allowed = fields[0], fields[2], fields[3]
            host, _, port = endpoint.rpartition(":")
            address = allowed.split(",")[0].split("/")[0]
            try:
                out[key] = TunnelPeer(key, host.strip("[]"), int(port), address)
            except ValueError:
                out[key] = TunnelPeer(key, "", 0, address)
        return out

    def set_peers(self, name: str, peers: dict[str, TunnelPeer]) -> None:
        """The device's peers := `peers` (key -> peer): the rest removed, changed ones set."""
        want = {k: p.check() for k, p in peers.items()}
        have = self.peers(name)
        args: list[str] = []
        for key in have:
            if key not in want:
                args += ["peer", check_key(key, "peer key"), "remove"]
        for key, p in want.items():
            if have.get(key) != p:
                endpoint = f"[{p.endpoint}]:{p.port}" if ":" in p.endpoint else f"{p.endpoint}:{p.port}"
                allowed = f"{p.allowed}/{32 if ':' not in p.allowed else 128}"
                args += ["peer", key, "endpoint", endpoint, "allowed-ips", allowed, "persistent-keepalive", "25"]
        if args:
            self._wg(["set", name, *args])

    def delete(self, name: str) -> None:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            if found:
                try:
                    ipr.link("del", index=found[0])
                except NetlinkError as e:
                    if e.code not in _GONE:
                        raise KernelError(f"delete WireGuard device {name}: {e}") from e

    def exists(self, name: str) -> bool:
        with IPRoute() as ipr:
            return bool(ipr.link_lookup(ifname=name))

    @staticmethod
    def _wg(args: list[str]) -> str:
        return commands.run(["wg", *args], name=f"wg {args[0]}")
