"""Sysctls through a /proc/sys mount (the host's is bind-mounted writable into the plugin)."""

from __future__ import annotations

import logging
import os

from ..domain.errors import KernelError

log = logging.getLogger(__name__)


class Sysctl:
    def __init__(self, root: str = "/proc/sys"):
        self.root = root

    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def get(self, *parts: str) -> str | None:
        try:
            with open(self._path(*parts)) as f:
                return f.read().strip()
        except FileNotFoundError:
            return None

    def ensure(self, value: str, *parts: str) -> None:
        """Write only when the value differs (read before write)."""
        current = self.get(*parts)
        if current is None or current == value:
            return
        try:
            with open(self._path(*parts), "w") as f:
                f.write(value)
        except OSError as e:
            raise KernelError(f"set {'/'.join(parts)}={value}: {e}") from e

    def enable_ipv6(self, ifname: str) -> None:
        self.ensure("0", "net", "ipv6", "conf", ifname, "disable_ipv6")

    def enable_ipv6_forwarding(self) -> None:
        """Turn on IPv6 forwarding without breaking hosts configured by router advertisements:
        forwarding makes the kernel ignore RAs on interfaces with accept_ra=1, so those are
        moved to accept_ra=2 (accept RAs even when forwarding) first."""
        if self.get("net", "ipv6", "conf", "all", "forwarding") in (None, "1"):
            return
        try:
            names = os.listdir(self._path("net", "ipv6", "conf"))
        except OSError as e:
            raise KernelError(f"list IPv6 interfaces: {e}") from e
        for ifname in names:
            if ifname not in ("all", "default") and self.get("net", "ipv6", "conf", ifname, "accept_ra") == "1":
                self.ensure("2", "net", "ipv6", "conf", ifname, "accept_ra")
                log.info("accept_ra=2 on %s so that it keeps its router advertisements", ifname)
        self.ensure("1", "net", "ipv6", "conf", "all", "forwarding")
        log.info("IPv6 forwarding enabled for a pybridge IPv6 network")
