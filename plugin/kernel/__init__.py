"""Adapters to the host kernel: netlink (pyroute2), the firewall (nf_tables on a netlink socket
of our own: nftwire encodes, nftsocket sends; iptables for one static rule), sysctls.

Nothing outside this package opens a netlink socket or runs a command.
"""
