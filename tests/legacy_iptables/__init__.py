"""pybridge's iptables adapter as versions before the nftables one (issue 9) had it, kept here
only to make the chains and rules such a version left behind: the upgrade tests check that the
plugin removes them (plugin/kernel/iptables_migration.py) and loses no network, and the
benchmark sets it beside the nftables adapter. Nothing in plugin/ imports it."""

from .adapter import IptablesFirewall

__all__ = ["IptablesFirewall"]
