#!/usr/bin/env bash
# Build the pybridge managed plugin and (re)create it in the local Docker engine, disabled.
#
#   scripts/build-plugin.sh [NAME]          NAME defaults to "pybridge" (the plugin is NAME:latest)
#   scripts/build-plugin.sh --dir DIR NAME  only write the plugin's directory (config.json, rootfs/)
#                                           to DIR, for engines of their own (scripts/multihost.sh)
#
# Works without Docker Hub: unless PYBRIDGE_BASE_IMAGE names a base image (e.g. python:3.13-slim),
# a Debian trixie base (nftables 1.1, iptables 1.8.11) is made locally with debootstrap. Wheels are downloaded on the host for
# the base image's Python, then installed in the image with --no-index.
# Refuses to replace an existing plugin NAME:latest that is enabled (disable it first).
set -euo pipefail

keep=""
if [ "${1:-}" = --dir ]; then keep=$2; shift 2; fi
name=${1:-pybridge}
root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build"
base=${PYBRIDGE_BASE_IMAGE:-pybridge-base:trixie-nft-wg}
export DOCKER_BUILDKIT=0

PB_SCRIPT=build-plugin
. "$root/scripts/lib.sh"
log() { pb_log "$@"; }

ensure_base_image() {
  docker image inspect "$base" >/dev/null 2>&1 && return 0
  if [ "$base" != "pybridge-base:trixie-nft-wg" ]; then
    log "pulling $base"; docker pull "$base"; return 0
  fi
  command -v debootstrap >/dev/null || { log "debootstrap missing: apt-get install -y debootstrap"; exit 1; }
  local dir; dir=$(mktemp -d /var/tmp/pybridge-base.XXXXXX)
  log "making a local Debian base image with debootstrap (about a minute)"
  debootstrap --variant=minbase --include=python3,python3-pip,iptables,nftables,wireguard-tools,wireguard-go trixie "$dir" >"$build/debootstrap.log" 2>&1 \
    || { log "debootstrap failed, see $build/debootstrap.log"; rm -rf "$dir"; exit 1; }
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  tar -C "$dir" -c . | docker import - "$base" >/dev/null
  rm -rf "$dir"
}

fetch_wheels() {
  local pyver arch
  pyver=$(docker run --rm --network none --entrypoint python3 "$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  arch=$(uname -m)
  rm -rf "$build/wheels"; mkdir -p "$build/wheels"
  log "fetching wheels for Python $pyver ($arch)"
  python3 -m pip download -q --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform "manylinux2014_$arch" --platform "manylinux_2_17_$arch" --platform "manylinux_2_28_$arch" \
    --platform any --require-hashes --no-deps -d "$build/wheels" -r "$root/requirements.lock"
}

mkdir -p "$build"
ensure_base_image
fetch_wheels
log "building the rootfs image"
# --force-rm: the legacy builder otherwise keeps the container of a step that failed
docker build -q --force-rm --build-arg "BASE=$base" -t pybridge-rootfs:latest "$root" >/dev/null

dir="$build/plugin-$name"
rm -rf "$dir"; mkdir -p "$dir/rootfs"
cid=$(docker create pybridge-rootfs:latest)
trap 'docker rm -f "$cid" >/dev/null 2>&1 || true' EXIT
docker export "$cid" | tar -C "$dir/rootfs" -x
# Two plugins made from byte-identical rootfs collide in Docker's content store; the instance
# name makes each plugin's rootfs its own.
echo "$name" >"$dir/rootfs/etc/pybridge-instance"
pb_source_hash "$root" >"$dir/rootfs/etc/pybridge-build"
cp "$root/config.json" "$dir/config.json"
if [ -n "$keep" ]; then
  rm -rf "$keep"; mkdir -p "$(dirname "$keep")"; mv "$dir" "$keep"
  log "done: $keep"; exit 0
fi

if docker plugin inspect "$name:latest" >/dev/null 2>&1; then
  if [ "$(docker plugin inspect -f '{{.Enabled}}' "$name:latest")" = "true" ]; then
    log "$name:latest is enabled; disable it before rebuilding"; exit 1
  fi
  docker plugin rm "$name:latest" >/dev/null
fi
log "creating plugin $name:latest"
docker plugin create "$name:latest" "$dir" >/dev/null
rm -rf "$dir"
log "done: $name:latest (disabled)"
