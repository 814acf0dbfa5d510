"""What pybridge learns from Docker's own API, outside every plugin handler: the event watcher,
and the container inventory it fills (names for the host command, the DNS and the cluster;
restart policies for the IPAM; Docker's bridges for the driver)."""
