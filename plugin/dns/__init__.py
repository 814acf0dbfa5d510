"""Per-network DNS: record snapshots (pure) and the server, fed by the container inventory (plugin/docker)."""
