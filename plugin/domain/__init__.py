"""Pure domain logic: no I/O, no netlink, no subprocesses."""
