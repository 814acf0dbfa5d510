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

from typing import Callable

TABLE = {"family": "inet", "name": "firewalld"}
CHAINS = ("filter_FORWARD", "filter_INPUT")


class FirewalldAccept:
    def __init__(self, prefix: str, mark: int, nft: Callable[[list[dict]], list[dict]],
                 tables: Callable[[], set[tuple[str, str]]]):
        self.comment = prefix
        self.mark = mark
        self._nft = nft
        self._tables = tables

    def _expr(self) -> list[dict]:
        return [{"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, self.mark]}, "right": self.mark}},
                {"accept": None}]

    def _chains(self) -> dict[str, list[dict]]:
        """firewalld's chains of ours to care about -> their rules; {} when firewalld is not there."""
        if (TABLE["family"], TABLE["name"]) not in self._tables():
            return {}
        out: dict[str, list[dict]] = {}
        for o in self._nft([{"list": {"table": dict(TABLE)}}]):
            if "chain" in o and o["chain"]["name"] in CHAINS:
                out.setdefault(o["chain"]["name"], [])
            elif "rule" in o and o["rule"]["chain"] in CHAINS:
                out.setdefault(o["rule"]["chain"], []).append(o["rule"])
        return out

    def _ours(self, rules: list[dict]) -> list[dict]:
        return [r for r in rules if r.get("comment") == self.comment]

    def problems(self) -> list[str]:
        out = []
        for chain, rules in self._chains().items():
            ours = self._ours(rules)
            if len(ours) != 1 or rules[0] is not ours[0]:
                state = "missing" if not ours else "misplaced or doubled"
                out.append(f"rule in firewalld's {chain} is {state}")
        return out

    def ensure(self) -> None:
        cmds = []
        for chain, rules in self._chains().items():
            ours = self._ours(rules)
            if len(ours) == 1 and rules[0] is ours[0]:
                continue
            cmds += [self._delete(chain, r) for r in ours]
            cmds.append({"insert": {"rule": {"family": TABLE["family"], "table": TABLE["name"], "chain": chain,
                                             "expr": self._expr(), "comment": self.comment}}})
        self._nft(cmds)

    @staticmethod
    def _delete(chain: str, rule: dict) -> dict:
        return {"delete": {"rule": {"family": TABLE["family"], "table": TABLE["name"], "chain": chain,
                                    "handle": rule["handle"]}}}

    def remove(self) -> None:
        cmds = []
        for chain, rules in self._chains().items():
            cmds += [self._delete(chain, r) for r in self._ours(rules)]
        self._nft(cmds)
