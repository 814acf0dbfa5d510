"""The iptables adapter of earlier versions (see this package): whole-chain batches through
iptables-restore --noflush.

Uses the same iptables binaries (and so the same nft/legacy backend) as dockerd on the host.
Never one process per rule: a sync is at most one iptables-save and one iptables-restore per
family. What goes in is rendered by plugin.kernel.rules, token by token checked.
"""

from __future__ import annotations

import logging
import shutil
import threading
from typing import Iterable

from plugin.domain.errors import KernelError
from plugin.domain.model import Endpoint, Network
from plugin.kernel import commands

from . import rules

log = logging.getLogger(__name__)


class IptablesFirewall:
    def __init__(self, prefix: str, netns: str | None = None):
        self.prefix = prefix
        self._argv0 = ["ip", "netns", "exec", netns] if netns else []
        self._lock = threading.Lock()
        self._tools = {4: ("iptables-save", "iptables-restore"), 6: ("ip6tables-save", "ip6tables-restore")}
        self._applied: dict[tuple[int, str], str] = {}  # (family, table) -> text this process last wrote

    def _run(self, argv: list[str], stdin: str | None = None) -> str:
        return commands.run(self._argv0 + argv, stdin, name=argv[0])

    def _available(self, version: int) -> bool:
        return all(shutil.which(t) for t in self._tools[version])

    def supports(self, version: int) -> bool:
        """Whether this address family can be filtered (its iptables tools are installed)."""
        return self._available(version)

    def save(self, version: int) -> str:
        save, _ = self._tools[version]
        return self._run([save]) if self._available(version) else ""

    def sync(
        self,
        networks: Iterable[Network],
        endpoints: Iterable[Endpoint] = (),
        foreign: Iterable[str] = (),
        check_jumps: bool = True,
    ) -> None:
        """Make our chains hold exactly the rules for these networks, the ports their endpoints
        publish and the bridges that are not ours, in both families.

        Rewriting chains that hold rules costs the kernel 15-25 ms per family and table. A
        checking sync (network changes, restore, healing) reads the tables back, puts our jumps
        where they belong and rewrites every table. An unchecked sync (endpoint changes) writes
        only the tables whose rules differ from what this process last wrote."""
        networks, endpoints, foreign = list(networks), list(endpoints), list(foreign)
        with self._lock:
            for version in (4, 6):
                if not self._available(version):
                    if version == 4:
                        raise KernelError("iptables-restore is not installed")
                    continue
                wanted = rules.render(self.prefix, networks, version, endpoints, foreign)
                fixes: dict = {}
                if check_jumps:
                    fixes, _ = rules.jump_fixes(self.prefix, rules.parse_saved(self.save(version)))
                plain = {t: rules.table_text(self.prefix, t, wanted[t]) for t in rules.TABLES}
                write = [t for t in rules.TABLES if check_jumps or self._applied.get((version, t)) != plain[t]]
                if not write:
                    continue
                text = "".join(rules.table_text(self.prefix, t, wanted[t], fixes.get(t, [])) for t in write)
                for t in write:
                    self._applied.pop((version, t), None)
                self._run([self._tools[version][1], "--noflush", "-w"], text)
                self._applied.update({(version, t): plain[t] for t in write})

    def drift(
        self, networks: Iterable[Network], endpoints: Iterable[Endpoint] = (), foreign: Iterable[str] = ()
    ) -> list[str]:
        """Differences between our chains and jumps in the kernel and the rules for this state."""
        networks, endpoints, foreign = list(networks), list(endpoints), list(foreign)
        problems = []
        with self._lock:
            for version in (4, 6):
                if not self._available(version):
                    continue
                tables = rules.parse_saved(self.save(version))
                wanted = rules.render(self.prefix, networks, version, endpoints, foreign)
                problems += [f"IPv{version}: {p}" for p in rules.drift(self.prefix, wanted, tables)]
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
                for table in rules.TABLES:
                    self._applied.pop((version, table), None)
                self._run(
                    [self._tools[version][1], "--noflush", "-w"],
                    rules.removal_text(self.prefix, rules.parse_saved(saved)),
                )
