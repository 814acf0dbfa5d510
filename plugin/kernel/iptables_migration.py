"""Removing what the iptables adapter of versions before the nftables one (issue 9) left: its
chains in the raw, filter and nat tables (named <PREFIX>-<NAME>) and every jump into them, in
both families, in one iptables-restore --noflush per family. Runs at every start (nothing to do
once they are gone) and at uninstall. Those versions' adapter lives on in tests/legacy_iptables,
where the upgrade tests use it to make what it left.
"""

from __future__ import annotations

import shutil
import threading

from . import commands
from .commands import line, safe

TABLES = ("raw", "filter", "nat")
Saved = dict[str, dict[str, list[tuple[str, ...]]]]  # table -> chain -> rules (tokens after "-A CHAIN")


def chains(prefix: str) -> dict[str, list[str]]:
    """The old adapter's chains per table."""
    return {
        "raw": [f"{prefix}-PREROUTING", f"{prefix}-DNS"],
        "filter": [f"{prefix}-ISOLATE", f"{prefix}-EGRESS", f"{prefix}-FORWARD"],
        "nat": [f"{prefix}-POSTROUTING", f"{prefix}-DNAT"],
    }


def parse_saved(saved: str) -> Saved:
    """iptables-save's output, as tables of chains of rules."""
    tables: Saved = {}
    table = None
    for text in saved.splitlines():
        if text.startswith("*"):
            table = text[1:].strip()
            tables.setdefault(table, {})
        elif table is None:
            continue
        elif text.startswith(":"):
            tables[table].setdefault(text[1:].split()[0], [])
        elif text.startswith("-A "):
            parts = text.split()
            tables[table].setdefault(parts[1], []).append(tuple(parts[2:]))
    return tables


def removal_text(prefix: str, tables: Saved) -> str:
    """Remove every jump into the old chains, then flush and delete them (declaring a chain in
    iptables-restore input flushes it, and creates it where it is missing)."""
    own = {c for names in chains(prefix).values() for c in names}
    out = []
    for table in TABLES:
        names = chains(prefix)[table]
        lines = [f"*{table}"] + [f":{safe(name)} - [0:0]" for name in names]
        for chain, rules in tables.get(table, {}).items():
            if chain in own:
                continue
            lines += [
                line(("-D", chain, *r))
                for r in rules
                if len(r) >= 2 and r[-2] in ("-j", "-g") and r[-1] in own and all(commands.is_safe(t) for t in r)
            ]
        lines += [line(("-X", name)) for name in names]
        lines.append("COMMIT")
        out.append("\n".join(lines) + "\n")
    return "".join(out)


class OldIptablesChains:
    """The old chains of one instance (its chain prefix), where the tools are installed."""

    def __init__(self, prefix: str, netns: str | None = None):
        self.prefix = prefix
        self._argv0 = ["ip", "netns", "exec", netns] if netns else []
        self._lock = threading.Lock()
        self._tools = {4: ("iptables-save", "iptables-restore"), 6: ("ip6tables-save", "ip6tables-restore")}

    def _run(self, argv: list[str], stdin: str | None = None) -> str:
        return commands.run(self._argv0 + argv, stdin, name=argv[0])

    def remove_all(self) -> None:
        """Delete the old jumps and chains, if any are there."""
        with self._lock:
            for version in (4, 6):
                save, restore = self._tools[version]
                if not (shutil.which(save) and shutil.which(restore)):
                    continue
                saved = self._run([save])
                if f":{self.prefix}-" not in saved:
                    continue
                self._run([restore, "--noflush", "-w"], removal_text(self.prefix, parse_saved(saved)))
