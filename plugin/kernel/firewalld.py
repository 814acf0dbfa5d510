"""firewalld (nftables backend) keeps its own `inet firewalld` table, whose forward and input
chains end in a reject for what no zone allows: our networks' traffic and their DNS queries to
their gateways, unless those bridges were in an accepting zone. As with iptables' FORWARD
(plugin.kernel.xtables), pybridge puts one rule first in each of those two chains, the same
whatever the state: accept what our own chains marked. firewalld rebuilds its table on every
reload; the kernel's nftables notifications tell us, and healing puts the rules back.

Why not firewalld's D-Bus API (a zone for our bridges, as Docker does): a managed plugin sees
the system bus only through a mount of /run/dbus, and a mount whose source is missing keeps the
plugin from starting on every host without D-Bus.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TABLE = {"family": "inet", "name": "firewalld"}
CHAINS = ("filter_FORWARD", "filter_INPUT")

# (handle, comment) of a chain's rules in order, or None without the chain
ChainRules = Callable[[str, str, str], "list[tuple[int, str | None]] | None"]


class FirewalldAccept:
    """Reads firewalld's chains as handles and comments only (nothing of their rules is
    decoded), and writes our rule by nftrules' JSON commands (run_commands)."""

    def __init__(
        self,
        prefix: str,
        mark: int,
        run_commands: Callable[[list[dict[str, Any]]], None],
        tables: Callable[[], set[tuple[str, str]]],
        chain_rules: ChainRules,
    ):
        self.comment = prefix
        self.mark = mark
        self._run = run_commands
        self._tables = tables
        self._chain_rules = chain_rules

    def _expr(self) -> list[dict[str, Any]]:
        return [
            {"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, self.mark]}, "right": self.mark}},
            {"accept": None},
        ]

    def _chains(self) -> dict[str, list[tuple[int, str | None]]]:
        """firewalld's chains of ours to care about -> (handle, comment) of their rules; {} when
        firewalld is not there."""
        if (TABLE["family"], TABLE["name"]) not in self._tables():
            return {}
        out = {}
        for chain in CHAINS:
            rules = self._chain_rules(TABLE["family"], TABLE["name"], chain)
            if rules is not None:
                out[chain] = rules
        return out

    def _ours(self, rules: list[tuple[int, str | None]]) -> list[int]:
        return [handle for handle, comment in rules if comment == self.comment]

    def _in_place(self, rules: list[tuple[int, str | None]]) -> bool:
        ours = self._ours(rules)
        return len(ours) == 1 and rules[0][0] == ours[0]

    def problems(self) -> list[str]:
        out = []
        for chain, rules in self._chains().items():
            if not self._in_place(rules):
                state = "missing" if not self._ours(rules) else "misplaced or doubled"
                out.append(f"rule in firewalld's {chain} is {state}")
        return out

    def ensure(self) -> None:
        cmds = []
        for chain, rules in self._chains().items():
            if self._in_place(rules):
                continue
            cmds += [self._delete(chain, h) for h in self._ours(rules)]
            cmds.append(
                {
                    "insert": {
                        "rule": {
                            "family": TABLE["family"],
                            "table": TABLE["name"],
                            "chain": chain,
                            "expr": self._expr(),
                            "comment": self.comment,
                        }
                    }
                }
            )
        self._run(cmds)

    @staticmethod
    def _delete(chain: str, handle: int) -> dict[str, Any]:
        return {
            "delete": {"rule": {"family": TABLE["family"], "table": TABLE["name"], "chain": chain, "handle": handle}}
        }

    def remove(self) -> None:
        cmds = []
        for chain, rules in self._chains().items():
            cmds += [self._delete(chain, h) for h in self._ours(rules)]
        self._run(cmds)
