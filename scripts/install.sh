#!/usr/bin/env bash
# Install pybridge on this host (root): a Docker engine where none answers, the build tools, then
# build, create and enable the managed plugin NAME-plugin:latest (default: pybridge-plugin),
# which serves the driver names -d NAME and -d NAME:latest (default: pybridge, pybridge:latest).
# The managed plugin cannot itself be called NAME: dockerd would resolve -d NAME to it and then
# fail with "could not resolve driver" (moby#33347); see README "How it works".
#
#   scripts/install.sh [NAME]
#
# Safe to run again: a plugin built from the same sources is left as it is (and enabled); an
# older one is replaced, and its networks survive because state lives on the host in
# /var/lib/NAME. PYBRIDGE_SET="KEY=VALUE ..." applies plugin settings when the plugin is made;
# PYBRIDGE_BASE_IMAGE picks the base image (default: a local Debian base, no Docker Hub needed).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
name=${1:-pybridge}
plugin=$name-plugin
PB_SCRIPT=install
. "$root/scripts/lib.sh"

[ "$(id -u)" = 0 ] || { pb_log "run as root"; exit 1; }
pb_apt_install ca-certificates iptables iproute2 debootstrap
python3 -m pip --version >/dev/null 2>&1 || pb_apt_install python3-pip
pb_ensure_docker_engine

state_dir=/var/lib/$name
mkdir -p -m 0700 "${PYBRIDGE_ENGINE_TREE:-}$state_dir"    # as the engine sees it (scripts/engine.sh)
# cluster mode's etcd CA, client certificate and key go here (the etcd-tls mount, read-only for
# the plugin); the directory must exist whenever the plugin starts, empty or not
mkdir -p -m 0700 "${PYBRIDGE_ENGINE_TREE:-}/etc/pybridge/etcd-tls"
want=$(pb_source_hash "$root")
have=$(pb_installed_hash "$plugin")
if [ "$want" != "$have" ]; then
  if docker plugin inspect "$plugin:latest" >/dev/null 2>&1; then
    pb_log "replacing $plugin:latest (built from other sources); its networks are kept"
    docker plugin disable -f "$plugin:latest" >/dev/null 2>&1 || true
    docker plugin rm -f "$plugin:latest" >/dev/null
  fi
  "$root/scripts/build-plugin.sh" "$plugin"
  # The plugin sees the host's system bus (for systemd-resolved) through /run/dbus and nothing
  # else of /run. A mount's source must exist whenever the plugin starts: a host without a
  # system bus gets an empty directory of pybridge's instead (host names through resolved off).
  bus_dir=/run/dbus
  if [ ! -d "$bus_dir" ]; then      # an engine of scripts/engine.sh sees the host's /run too
    bus_dir=$state_dir/no-system-bus
    mkdir -p "${PYBRIDGE_ENGINE_TREE:-}$bus_dir"
    pb_log "no system bus on this host (/run/dbus): container names from the host through systemd-resolved are off"
  fi
  # shellcheck disable=SC2086
  docker plugin set "$plugin:latest" "state.source=$state_dir" "system-bus.source=$bus_dir" "PYBRIDGE_NAME=$name" \
    ${PYBRIDGE_SET:-}
fi
if [ "$(docker plugin inspect -f '{{.Enabled}}' "$plugin:latest")" != "true" ]; then
  docker plugin enable --timeout 30 "$plugin:latest" >/dev/null
fi
for i in $(seq 1 40); do [ -S "/run/docker/plugins/$name.sock" ] && break; sleep 0.25; done
[ -S "/run/docker/plugins/$name.sock" ] || { pb_log "plugin enabled but /run/docker/plugins/$name.sock is missing"; exit 1; }
# the host command (standard library only; works from anywhere, and after this tree is gone)
install -m 0755 "$root/scripts/pybridge" /usr/local/bin/pybridge
pb_log "ready: docker network create -d $name --ipam-driver $name --subnet 10.200.1.0/24 mynet; pybridge ls"
