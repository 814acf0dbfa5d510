"""Per-network DNS: record snapshots (pure), the server, and the Docker event watcher."""
