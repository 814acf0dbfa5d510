"""The one static iptables rule pybridge needs, per backend and family.

dockerd sets the iptables FORWARD policy to DROP, and a packet must be accepted by every base
chain on the forward hook, ours in nftables and iptables' FORWARD alike. So iptables' FORWARD
holds one rule of ours, the same whatever the state: accept what our nftables chain marked. It
sits right after the jump to DOCKER-USER, so an administrator's rules there still come first,
and it is written with each backend whose filter table could drop what we accept (a DROP
policy, or rules): iptables-nft (nftables' `ip filter` table), iptables-legacy
(/proc/net/ip_tables_names), or both. With no such table (a dockerd with "iptables": false and
nothing else), nothing is needed and nothing is written.
"""

from __future__ import annotations

import shutil
from typing import Callable

from ..domain.errors import KernelError
from . import commands
from .commands import safe

TOOLS = {
    ("nft", 4): "iptables-nft",
    ("nft", 6): "ip6tables-nft",
    ("legacy", 4): "iptables-legacy",
    ("legacy", 6): "ip6tables-legacy",
}
NAMES_FILE = {4: "/proc/net/ip_tables_names", 6: "/proc/net/ip6_tables_names"}


class ForwardAccept:
    def __init__(self, prefix: str, mark: int, argv0: list[str], nft_tables: Callable[[], set[tuple[str, str]]]):
        self.prefix = prefix
        self.spec = (
            "-m",
            "mark",
            "--mark",
            f"{mark:#x}/{mark:#x}",
            "-m",
            "comment",
            "--comment",
            safe(prefix),
            "-j",
            "ACCEPT",
        )
        self._argv0 = argv0
        self._nft_tables = nft_tables

    def _run(self, argv: list[str]) -> str:
        return commands.run(self._argv0 + argv, name=" ".join(argv[:4]))

    def _legacy_tables(self, version: int) -> bool:
        try:
            cmd = ["cat", NAMES_FILE[version]]
            text = self._run(cmd) if self._argv0 else open(NAMES_FILE[version]).read()
        except (OSError, KernelError):
            return False
        return "filter" in text.split()

    def legacy_active(self) -> bool:
        return any(self._legacy_tables(v) for v in (4, 6))

    def _found(self, legacy_only: bool = False) -> list[tuple[str, int, bool, list[tuple[str, ...]]]]:
        """(backend, family, needed, FORWARD's rules) of every filter table there is. Our rule
        is needed where FORWARD could drop what we accept: a DROP policy, or any rule that is
        not ours."""
        found = []
        nft = set() if legacy_only else self._nft_tables()
        for v in (4, 6):
            if ("ip" if v == 4 else "ip6", "filter") in nft:
                found.append(("nft", v))
            if self._legacy_tables(v):
                found.append(("legacy", v))
        out = []
        for backend, v in found:
            tool = TOOLS[(backend, v)]
            if not shutil.which(tool):
                continue
            policy, rules = self._forward(tool)
            out.append((backend, v, policy != "ACCEPT" or any(r != self.spec for r in rules), rules))
        return out

    def backends(self, legacy_only: bool = False) -> list[tuple[str, int, list[tuple[str, ...]]]]:
        """(backend, family, FORWARD's rules) where our rule is needed."""
        return [(b, v, rules) for b, v, needed, rules in self._found(legacy_only) if needed]

    def _forward(self, tool: str) -> tuple[str, list[tuple[str, ...]]]:
        """FORWARD's policy and rules."""
        policy, rules = "ACCEPT", []
        for text in self._run([tool, "-w", "-S", "FORWARD"]).splitlines():
            words = text.split()
            if words[:2] == ["-A", "FORWARD"]:
                rules.append(tuple(words[2:]))
            elif words[:2] == ["-P", "FORWARD"] and len(words) > 2:
                policy = words[2]
        return policy, rules

    def _placement(self, rules: list[tuple[str, ...]]) -> tuple[bool, int]:
        """(in place, the 1-based position it belongs at): once, after DOCKER-USER's jump."""
        after = rules.index(("-j", "DOCKER-USER")) + 1 if ("-j", "DOCKER-USER") in rules else 0
        at = [i for i, r in enumerate(rules) if r == self.spec]
        ok = len(at) == 1 and at[0] >= after
        return ok, after + 1

    def problems(self, legacy_only: bool = False) -> list[str]:
        out = []
        for backend, v, needed, rules in self._found(legacy_only):
            if not needed:
                if self.spec in rules:
                    out.append(f"static rule in {TOOLS[(backend, v)]} FORWARD is no longer needed")
                continue
            ok, _ = self._placement(rules)
            if not ok:
                state = "missing" if self.spec not in rules else "misplaced or doubled"
                out.append(f"static rule in {TOOLS[(backend, v)]} FORWARD is {state}")
        return out

    def ensure(self) -> None:
        """Our rule once, in place, where it is needed; gone from a FORWARD that no longer needs
        it (its policy back to ACCEPT and nothing else in it: dockerd gone, or "iptables": false)."""
        for backend, v, needed, rules in self._found():
            tool = TOOLS[(backend, v)]
            if not needed:
                for _ in range(rules.count(self.spec)):
                    self._run([tool, "-w", "-D", "FORWARD", *self.spec])
                continue
            ok, _ = self._placement(rules)
            if ok:
                continue
            for _ in range(rules.count(self.spec)):
                self._run([tool, "-w", "-D", "FORWARD", *self.spec])
            rules = [r for r in rules if r != self.spec]
            _, position = self._placement(rules)
            self._run([tool, "-w", "-I", "FORWARD", str(position), *self.spec])

    def remove(self) -> None:
        nft = self._nft_tables()
        for (backend, v), tool in TOOLS.items():
            present = (("ip" if v == 4 else "ip6", "filter") in nft) if backend == "nft" else self._legacy_tables(v)
            if not present or not shutil.which(tool):
                continue
            for _ in range(self._forward(tool)[1].count(self.spec)):
                self._run([tool, "-w", "-D", "FORWARD", *self.spec])
