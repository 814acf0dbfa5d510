"""Adapters to the host kernel: netlink (pyroute2), the firewall (nftables, through a libnftables helper), sysctls.

Nothing outside this package opens a netlink socket or runs a command.
"""
