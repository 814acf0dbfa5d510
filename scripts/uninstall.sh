#!/usr/bin/env bash
# Remove pybridge from this host (root): the managed plugin NAME-plugin:latest, its firewall
# table and static rules, its bridges and veths, its driver sockets, the host command, and —
# only when asked — its state (/var/lib/NAME: networks, pools, leases, DNS records).
#
#   scripts/uninstall.sh [NAME] [--delete-state]
#
# Refuses while Docker networks use the driver (remove them first: `docker network rm`), so
# that no container loses its network without being told. Leaves the Docker engine, other
# plugins and everything pybridge did not make alone. Safe to run again.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
PB_SCRIPT=uninstall
. "$root/scripts/lib.sh"

name=pybridge delete_state=0
for arg in "$@"; do
  case $arg in
    --delete-state) delete_state=1 ;;
    --keep-state) delete_state=0 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    -*) pb_log "unknown option $arg"; exit 2 ;;
    *) name=$arg ;;
  esac
done
[[ $name =~ ^[a-z0-9][a-z0-9_.-]{0,30}$ ]] || { pb_log "invalid name '$name'"; exit 2; }
[ "$(id -u)" = 0 ] || { pb_log "run as root"; exit 1; }
pb_docker_ready || { pb_log "no Docker engine answers: start dockerd first (the plugin is Docker's to remove)"; exit 1; }
plugin=$name-plugin

ask_plugin() {
  # POST /pybridge/uninstall on the plugin's socket (the Python standard library only)
  python3 - "$1" <<'PY'
import http.client, socket, sys
class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(60)
        self.sock.connect(sys.argv[1])
c = Conn("plugin")
c.request("POST", "/pybridge/uninstall")
r = c.getresponse()
body = r.read().decode()
print(body)
sys.exit(0 if r.status == 200 else 1)
PY
}

in_use=$(for d in "$name" "$name:latest" "$plugin:latest"; do docker network ls -q --filter "driver=$d"; done | sort -u)
if [ -n "$in_use" ]; then
  pb_log "these networks use the $name driver; remove them first (docker network rm):"
  # shellcheck disable=SC2086
  docker network inspect -f '  {{.Name}} ({{len .Containers}} containers)' $in_use >&2
  exit 1
fi

state_dir=/var/lib/$name
if docker plugin inspect "$plugin:latest" >/dev/null 2>&1; then
  state_dir=$(docker plugin inspect -f '{{range .Settings.Mounts}}{{if eq .Name "state"}}{{.Source}}{{end}}{{end}}' \
    "$plugin:latest")
  [ -n "$state_dir" ] || state_dir=/var/lib/$name
  if [ "$(docker plugin inspect -f '{{.Enabled}}' "$plugin:latest")" != true ]; then
    # enabled for a moment, so that it removes what it made with its own code
    docker plugin enable --timeout 30 "$plugin:latest" >/dev/null || true
  fi
  sock=/run/docker/plugins/$name.sock
  for _ in $(seq 1 40); do [ -S "$sock" ] && break; sleep 0.25; done
  if [ -S "$sock" ] && out=$(ask_plugin "$sock" 2>&1); then
    pb_log "the plugin removed its firewall rules and links: $out"
  else
    pb_log "the plugin did not answer ($out); its table and links are removed from here"
  fi
  docker plugin disable -f "$plugin:latest" >/dev/null 2>&1 || true
  docker plugin rm -f "$plugin:latest" >/dev/null
  pb_log "removed the plugin $plugin:latest"
fi

# What is left if the plugin could not do it (it was broken, or removed before): its table in
# nftables, its static rule, and links whose names carry its prefix.
table=$(printf '%s' "$name" | tr -cd 'a-z0-9' | cut -c1-12)     # plugin/domain/naming.py chain_prefix
if command -v nft >/dev/null 2>&1 && nft list table inet "$table" >/dev/null 2>&1; then
  nft delete table inet "$table" && pb_log "removed the nftables table inet $table"
fi
rm -f "/run/docker/plugins/$name.sock" "/run/docker/plugins/$name:latest.sock"

if [ "$delete_state" = 1 ]; then
  rm -rf "${PYBRIDGE_ENGINE_TREE:-}${state_dir:?}"
  pb_log "deleted the state in $state_dir"
else
  [ -d "${PYBRIDGE_ENGINE_TREE:-}$state_dir" ] && pb_log "kept the state in $state_dir (--delete-state removes it)"
fi
# the host command serves every instance; it goes with the last one
if ! docker plugin ls --no-trunc --format '{{.Description}}' | grep -q '^pybridge:'; then
  rm -f /usr/local/bin/pybridge && pb_log "removed /usr/local/bin/pybridge"
fi
pb_log "done"
