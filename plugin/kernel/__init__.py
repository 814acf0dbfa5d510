"""Adapters to the host kernel: netlink (pyroute2), the firewall (iptables-restore), sysctls.

Nothing outside this package opens a netlink socket or runs a command.
"""
