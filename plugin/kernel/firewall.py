"""The iptables adapter: whole-chain batches through iptables-restore --noflush.

Uses the same iptables binaries (and so the same nft/legacy backend) as dockerd on the host.
Never one process per rule: a sync is one iptables-save and one iptables-restore per family.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from typing import Iterable

from ..domain.errors import KernelError
from ..domain.model import Endpoint, Network
from . import rules

log = logging.getLogger(__name__)

TIMEOUT = 20


class IptablesFirewall:
    def __init__(self, prefix: str, netns: str | None = None):
        self.prefix = prefix
        self._argv0 = ["ip", "netns", "exec", netns] if netns else []
        self._lock = threading.Lock()
        self._tools = {4: ("iptables-save", "iptables-restore"), 6: ("ip6tables-save", "ip6tables-restore")}
        self._applied: dict[int, str] = {}   # the text last applied per family, by this process

    def _run(self, argv: list[str], stdin: str | None = None) -> str:
        try:
            res = subprocess.run(self._argv0 + argv, input=stdin, capture_output=True, text=True, timeout=TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise KernelError(f"{argv[0]}: {e}") from e
        if res.returncode != 0:
            raise KernelError(f"{argv[0]} failed: {res.stderr.strip() or res.returncode}")
        return res.stdout

    def _available(self, version: int) -> bool:
        return all(shutil.which(t) for t in self._tools[version])

    def supports(self, version: int) -> bool:
        """Whether this address family can be filtered (its iptables tools are installed)."""
        return self._available(version)

    def save(self, version: int) -> str:
        save, _ = self._tools[version]
        return self._run([save]) if self._available(version) else ""

    def sync(self, networks: Iterable[Network], endpoints: Iterable[Endpoint] = (),
             check_jumps: bool = True) -> None:
        """Make our chains hold exactly the rules for these networks and the ports their
        endpoints publish, in both families.

        Rewriting chains that hold rules costs the kernel 15-25 ms per family. A checking sync
        (network changes, restore) reads the tables back, restores missing jumps and rewrites
        every family, which also repairs edits made to our chains from outside. An unchecked
        sync (endpoint changes) skips a family whose rules this process already applied."""
        networks, endpoints = list(networks), list(endpoints)
        with self._lock:
            for version in (4, 6):
                if not self._available(version):
                    if version == 4:
                        raise KernelError("iptables-restore is not installed")
                    continue
                wanted_rules = rules.render(self.prefix, networks, version, endpoints)
                missing: list = []
                if check_jumps:
                    saved = self.save(version)
                    present = rules.present_jumps(self.prefix, saved)
                    wanted = rules.jumps(self.prefix, docker_user=rules.has_docker_user(saved))
                    missing = [j for j in wanted if j not in present]
                text = rules.restore_text(self.prefix, wanted_rules, missing)
                if not check_jumps and self._applied.get(version) == text:
                    continue
                self._applied.pop(version, None)
                self._run([self._tools[version][1], "--noflush", "-w"], text)
                self._applied[version] = rules.restore_text(self.prefix, wanted_rules, [])

    def drift(self, networks: Iterable[Network], endpoints: Iterable[Endpoint] = ()) -> list[str]:
        """Differences between our chains in the kernel and the rules for this state."""
        networks, endpoints = list(networks), list(endpoints)
        problems = []
        with self._lock:
            for version in (4, 6):
                if not self._available(version):
                    continue
                saved = self.save(version)
                wanted = rules.render(self.prefix, networks, version, endpoints)
                problems += [f"IPv{version}: {p}" for p in
                             rules.drift(self.prefix, wanted, saved, rules.has_docker_user(saved))]
        return problems

    def remove_all(self) -> None:
        """Delete our jumps and chains (uninstall, tests)."""
        with self._lock:
            for version in (4, 6):
                if not self._available(version):
                    continue
                saved = self.save(version)
                if f":{self.prefix}-" not in saved:
                    continue
                text = rules.removal_text(self.prefix, rules.present_jumps(self.prefix, saved))
                self._applied.pop(version, None)
                self._run([self._tools[version][1], "--noflush", "-w"], text)
