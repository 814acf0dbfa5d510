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
