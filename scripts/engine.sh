#!/usr/bin/env bash
# Other Docker engines for the end-to-end tests, each in a root of its own, its dockerd started
# in a mount namespace whose root is that tree. The host's engine is stopped meanwhile (one
# engine owns the firewall at a time) and started again afterwards, the way it was running.
#
#   scripts/engine.sh test [SUITE [pytest arguments]]   prepare, start, run the e2e tests, stop
#   scripts/engine.sh prepare                            make the root (skipped when it exists)
#   scripts/engine.sh start | stop                       switch to the engine and back
#   scripts/engine.sh daemon                             (internal) namespace set-up, exec dockerd
#
# PYBRIDGE_ENGINE picks the engine: `sid` (default), Debian unstable's docker.io (28.x) in a
# root made with debootstrap; `29.7.2`, Docker 29.7.2 as built in ../shared/engines (checked
# against its SHA256SUMS), in a copy of that root with its dockerd and docker-proxy replaced.
# PYBRIDGE_ENGINE_FIREWALL (iptables, the default, or nftables) is the engine's
# "firewall-backend" (29 and later). PYBRIDGE_ENGINE_DIR (default /var/lib/pybridge-engines) is
# where roots live, PYBRIDGE_ENGINES_SOURCE (default ../shared/engines) where the builds are.
# Why not chroot: in a plain chroot `docker import` fails ("remount /, flags: 0x84000") and
# `docker exec` runs in the host's root.
set -euo pipefail

root_dir=$(cd "$(dirname "$0")/.." && pwd)
PB_SCRIPT=engine
. "$root_dir/scripts/lib.sh"

engine=${PYBRIDGE_ENGINE:-${PYBRIDGE_ENGINE_SUITE:-sid}}
firewall=${PYBRIDGE_ENGINE_FIREWALL:-iptables}
base_dir=${PYBRIDGE_ENGINE_DIR:-/var/lib/pybridge-engines}
builds=${PYBRIDGE_ENGINES_SOURCE:-$root_dir/../shared/engines}
sid_tree=$base_dir/sid
case $engine in
  sid) tree=$sid_tree; suite=sid ;;
  29.7.2) tree=$base_dir/docker-$engine; suite=docker-$engine ;;
  *) pb_log "unknown engine $engine (sid or 29.7.2)"; exit 2 ;;
esac
case $firewall in
  iptables|nftables) ;;
  *) pb_log "unknown firewall backend $firewall (iptables or nftables)"; exit 2 ;;
esac
saved=$base_dir/host-dockerd          # how the host's engine ran: "systemd" or its command line
policies=$base_dir/forward-policies   # the iptables FORWARD policies an nftables engine found
log=/var/log/pybridge-dockerd-$suite.log
# Its own exec root and pid file: the host's /run is shared, and an engine that finds the other's
# plugin tasks there fails to start its plugins (20.10 then panics at every start).
exec_root=/run/pybridge-engine-$suite
# Host directories the engine sees (read-only use: dockerd loads no module it finds loaded).
shared_dirs=(/lib/modules)

prepare() {
  prepare_sid
  [ "$engine" = sid ] || prepare_build
}

prepare_sid() {
  [ -x "$sid_tree/usr/sbin/dockerd" ] && [ -x "$sid_tree/usr/sbin/nft" ] && return 0
  pb_apt_install debootstrap
  mkdir -p "$base_dir"
  if [ -x "$sid_tree/usr/sbin/dockerd" ]; then      # a root made before it carried nftables
    pb_log "adding nftables to $sid_tree"
    chroot "$sid_tree" sh -c 'DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq --no-install-recommends nftables' \
      </dev/null >>"$base_dir/debootstrap-sid.log" 2>&1 || { pb_log "could not add nftables, see $base_dir/debootstrap-sid.log"; exit 1; }
    return 0
  fi
  rm -rf "$sid_tree.tmp"
  pb_log "making a Debian sid root with docker.io in $sid_tree (about a minute)"
  # nftables: for a 29 engine in nftables mode (dockerd will not start without nft), and for the
  # tests' tables written by a newer nft (tests/integration/test_hostile_tables.py)
  debootstrap --variant=minbase --include=docker.io,docker-compose,iptables,nftables,iproute2,ca-certificates sid "$sid_tree.tmp" \
    >"$base_dir/debootstrap-sid.log" 2>&1 \
    || { pb_log "debootstrap failed, see $base_dir/debootstrap-sid.log"; rm -rf "$sid_tree.tmp"; exit 1; }
  rm -rf "$sid_tree.tmp"/var/cache/apt/archives/*.deb
  mv "$sid_tree.tmp" "$sid_tree"
}

prepare_build() {
  # A copy of the sid root (its containerd 2.x and runc suit 29; its CLI talks to it) with the
  # build's dockerd and docker-proxy, each archive checked against SHA256SUMS first.
  if [ -x "$tree/usr/sbin/dockerd" ] && "$tree/usr/sbin/dockerd" --version 2>/dev/null | grep -q "version $engine,"; then
    return 0
  fi
  local f
  for f in "dockerd-$engine.xz" "docker-proxy-$engine.xz"; do
    [ -f "$builds/$f" ] || { pb_log "no $builds/$f"; exit 1; }
  done
  (cd "$builds" && grep -E " (dockerd|docker-proxy)-$engine\.xz\$" SHA256SUMS | sha256sum -c --quiet -) \
    || { pb_log "the archives in $builds do not match SHA256SUMS"; exit 1; }
  pb_log "making the $engine engine's root in $tree (a copy of $sid_tree)"
  rm -rf "$tree.tmp"
  cp -a "$sid_tree" "$tree.tmp"
  xz -dc "$builds/dockerd-$engine.xz" >"$tree.tmp/usr/sbin/dockerd"
  xz -dc "$builds/docker-proxy-$engine.xz" >"$tree.tmp/usr/sbin/docker-proxy"
  chmod 755 "$tree.tmp/usr/sbin/dockerd" "$tree.tmp/usr/sbin/docker-proxy"
  "$tree.tmp/usr/sbin/dockerd" --version | grep -q "version $engine," \
    || { pb_log "$tree.tmp/usr/sbin/dockerd is not $engine"; rm -rf "$tree.tmp"; exit 1; }
  rm -rf "$tree" && mv "$tree.tmp" "$tree"
}

configure() {
  # The engine's daemon.json: its firewall backend (an option 29 knows; 28 refuses what it does not)
  mkdir -p "$tree/etc/docker"
  if [ "$firewall" = nftables ]; then
    echo '{"firewall-backend": "nftables"}' >"$tree/etc/docker/daemon.json"
  else
    rm -f "$tree/etc/docker/daemon.json"
  fi
}

dockerd_pids() { pidof dockerd || true; }

in_tree() {
  # Is process $1 the second engine, in a mount namespace of its own? (Its /proc/PID/root reads
  # "/" from here: the root of its own namespace.)
  [ "$(readlink "/proc/$1/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ]
}

daemon() {
  # Runs as the engine: a private mount namespace, the tree bind-mounted on itself with the
  # host's /proc /sys /dev /run /tmp inside, pivot_root into it, exec dockerd. /run being the
  # host's, the API socket (/run/docker.sock), plugin sockets and netns files are where the
  # host's tools look for them.
  local d
  for d in "${shared_dirs[@]}"; do mkdir -p "$d" "$tree$d"; done
  pb_clear_stale_plugin_tasks "$exec_root"
  mkdir -p "$exec_root"
  exec unshare --mount --propagation private -- /bin/sh -ec '
    tree=$1; shift
    mount --bind "$tree" "$tree"
    for d in /proc /sys /dev /run /tmp; do mount --rbind "$d" "$tree$d"; done
    for d in '"${shared_dirs[*]}"'; do mount --bind "$d" "$tree$d"; done
    cd "$tree"
    mkdir -p .host-root
    pivot_root . .host-root
    umount -l /.host-root
    exec /usr/sbin/dockerd "$@"' sh "$tree" --exec-root "$exec_root" --pidfile "$exec_root/docker.pid" "$@"
}

start() {
  prepare
  configure
  local pid
  for pid in $(dockerd_pids); do
    in_tree "$pid" && { pb_log "the $suite engine already runs (pid $pid)"; return 0; }
  done
  # Keep the host's test images: the second engine has an empty store and no registry.
  if pb_docker_ready; then
    local images=() i
    for i in pybridge-base:trixie-nft-wg pybridge-test-busybox:latest; do
      docker image inspect "$i" >/dev/null 2>&1 && images+=("$i")
    done
    [ ${#images[@]} -gt 0 ] && docker save -o "$base_dir/images.tar" "${images[@]}"
  fi
  stop_host_engine
  [ "$firewall" = nftables ] && open_forward_policies
  pb_log "starting the $engine engine, $firewall firewall (log: $log)"
  setsid "$0" daemon >>"$log" 2>&1 </dev/null &
  local n
  for n in $(seq 1 120); do pb_docker_ready && break; sleep 0.5; done
  pb_docker_ready || { pb_log "the $suite engine did not answer within 60 s; see $log"; exit 1; }
  [ -f "$base_dir/images.tar" ] && docker load -q -i "$base_dir/images.tar" >/dev/null
  pb_log "$(docker version -f 'engine {{.Server.Version}} on API {{.Server.APIVersion}}')"
}

open_forward_policies() {
  # What Docker's migration guide has a user do (or a reboot does) when dockerd moves to its
  # nftables backend: an iptables FORWARD policy of DROP (the previous engine's) would drop what
  # Docker's nftables rules accept. Put back as it was when the engine stops.
  [ -f "$policies" ] && return 0
  local tool policy
  : >"$policies.new"
  for tool in iptables ip6tables; do
    command -v "$tool" >/dev/null || continue
    policy=$("$tool" -S FORWARD 2>/dev/null | sed -n 's/^-P FORWARD \([A-Z]*\)$/\1/p')
    [ -n "$policy" ] && echo "$tool $policy" >>"$policies.new"
    [ "$policy" = DROP ] && { pb_log "$tool FORWARD policy DROP -> ACCEPT while dockerd uses nftables"; "$tool" -P FORWARD ACCEPT; }
  done
  mv "$policies.new" "$policies"
}

restore_forward_policies() {
  [ -f "$policies" ] || return 0
  local tool policy
  while read -r tool policy; do
    case $policy in ACCEPT|DROP) "$tool" -P FORWARD "$policy" || true ;; esac
  done <"$policies"
  rm -f "$policies"
}

remove_docker_tables() {
  # dockerd 29 leaves its nftables tables behind when it stops. They are the engine's, which
  # this script started: take them away, with the root's nft (Debian 12's nft 1.0.6 crashes on
  # them, and so would every later test that lists the ruleset with it).
  local family
  for family in ip ip6; do
    chroot "$sid_tree" nft list table "$family" docker-bridges >/dev/null 2>&1 || continue
    pb_log "removing the engine's nftables table $family docker-bridges"
    chroot "$sid_tree" nft delete table "$family" docker-bridges || true
  done
}

stop_host_engine() {
  local pid
  if [ -d /run/systemd/system ] && systemctl is-active -q docker 2>/dev/null; then
    echo systemd >"$saved"
    systemctl stop docker.socket docker
    return 0
  fi
  for pid in $(dockerd_pids); do
    in_tree "$pid" && continue
    tr '\0' '\n' <"/proc/$pid/cmdline" >"$saved"
    stop_pid "$pid"
  done
}

stop_pid() {
  local pid=$1 n
  kill -TERM "$pid" 2>/dev/null || return 0
  for n in $(seq 1 120); do [ -d "/proc/$pid" ] || return 0; sleep 0.5; done
  pb_log "dockerd $pid did not stop within 60 s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
}

stop() {
  local pid
  for pid in $(dockerd_pids); do
    in_tree "$pid" && { pb_log "stopping the $suite engine"; stop_pid "$pid"; }
  done
  [ -f "$policies" ] && remove_docker_tables    # the engine ran with its nftables backend
  restore_forward_policies
  [ -f "$saved" ] || return 0
  if [ "$(cat "$saved")" = systemd ]; then
    systemctl start docker
  else
    local argv=()
    mapfile -t argv <"$saved"
    pb_log "starting the host's engine again: ${argv[*]}"
    pb_start_dockerd "${argv[@]}" || { rm -f "$saved"; return 1; }
  fi
  rm -f "$saved"
  local n
  for n in $(seq 1 120); do pb_docker_ready && return 0; sleep 0.5; done
  pb_log "the host's engine did not come back; see /var/log/pybridge-dockerd.log"; return 1
}

run_tests() {
  trap 'stop' EXIT      # the host's engine comes back whatever happens from here on
  start
  # The tests restart this engine with this command, and read the test plugin's state (a host
  # directory of the engine's own) through the tree.
  export PYBRIDGE_DOCKERD_COMMAND="$0 daemon" PYBRIDGE_ENGINE_TREE=$tree PYBRIDGE_ENGINE_FIREWALL=$firewall
  "$root_dir/scripts/install.sh" </dev/null     # the product too, as a user of this engine would
  PYBRIDGE_TESTS=${1:-tests/e2e} "$root_dir/scripts/test.sh" "${@:2}"
}

case ${1:-} in
  prepare) prepare ;;
  start) start ;;
  stop) stop ;;
  daemon) shift; daemon "$@" ;;
  test) shift; run_tests "$@" ;;
  *) sed -n '2,19p' "$0"; exit 2 ;;
esac
