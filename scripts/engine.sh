#!/usr/bin/env bash
# A second Docker engine for the end-to-end tests: Debian unstable's docker.io (28.x today) in a
# root of its own made with debootstrap, its dockerd started in a mount namespace whose root is
# that tree. The host's engine is stopped meanwhile (one engine owns the firewall at a time) and
# started again afterwards, the way it was running.
#
#   scripts/engine.sh test [SUITE [pytest arguments]]   prepare, start, run the e2e tests, stop
#   scripts/engine.sh prepare                            make the root (skipped when it exists)
#   scripts/engine.sh start | stop                       switch to the second engine and back
#   scripts/engine.sh daemon                             (internal) namespace set-up, exec dockerd
#
# PYBRIDGE_ENGINE_SUITE (default sid) picks the Debian suite, PYBRIDGE_ENGINE_DIR (default
# /var/lib/pybridge-engines) where roots live. Why not chroot: in a plain chroot `docker import`
# fails ("remount /, flags: 0x84000") and `docker exec` runs in the host's root.
set -euo pipefail

root_dir=$(cd "$(dirname "$0")/.." && pwd)
PB_SCRIPT=engine
. "$root_dir/scripts/lib.sh"

suite=${PYBRIDGE_ENGINE_SUITE:-sid}
base_dir=${PYBRIDGE_ENGINE_DIR:-/var/lib/pybridge-engines}
tree=$base_dir/$suite
saved=$base_dir/host-dockerd          # how the host's engine ran: "systemd" or its command line
log=/var/log/pybridge-dockerd-$suite.log
# Its own exec root and pid file: the host's /run is shared, and an engine that finds the other's
# plugin tasks there fails to start its plugins (20.10 then panics at every start).
exec_root=/run/pybridge-engine-$suite
# Host directories the engine sees (read-only use: dockerd loads no module it finds loaded).
shared_dirs=(/lib/modules)

prepare() {
  [ -x "$tree/usr/sbin/dockerd" ] && return 0
  pb_apt_install debootstrap
  mkdir -p "$base_dir"
  rm -rf "$tree.tmp"
  pb_log "making a Debian $suite root with docker.io in $tree (about a minute)"
  debootstrap --variant=minbase --include=docker.io,docker-compose,iptables,iproute2,ca-certificates "$suite" "$tree.tmp" \
    >"$base_dir/debootstrap-$suite.log" 2>&1 \
    || { pb_log "debootstrap failed, see $base_dir/debootstrap-$suite.log"; rm -rf "$tree.tmp"; exit 1; }
  rm -rf "$tree.tmp"/var/cache/apt/archives/*.deb
  mv "$tree.tmp" "$tree"
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
  local pid
  for pid in $(dockerd_pids); do
    in_tree "$pid" && { pb_log "the $suite engine already runs (pid $pid)"; return 0; }
  done
  # Keep the host's test images: the second engine has an empty store and no registry.
  if pb_docker_ready; then
    local images=() i
    for i in pybridge-base:bookworm-nft pybridge-test-busybox:latest; do
      docker image inspect "$i" >/dev/null 2>&1 && images+=("$i")
    done
    [ ${#images[@]} -gt 0 ] && docker save -o "$base_dir/images.tar" "${images[@]}"
  fi
  stop_host_engine
  pb_log "starting the $suite engine (log: $log)"
  setsid "$0" daemon >>"$log" 2>&1 </dev/null &
  local n
  for n in $(seq 1 120); do pb_docker_ready && break; sleep 0.5; done
  pb_docker_ready || { pb_log "the $suite engine did not answer within 60 s; see $log"; exit 1; }
  [ -f "$base_dir/images.tar" ] && docker load -q -i "$base_dir/images.tar" >/dev/null
  pb_log "$(docker version -f 'engine {{.Server.Version}} on API {{.Server.APIVersion}}')"
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
  export PYBRIDGE_DOCKERD_COMMAND="$0 daemon" PYBRIDGE_ENGINE_TREE=$tree
  "$root_dir/scripts/install.sh" </dev/null     # the product too, as a user of this engine would
  PYBRIDGE_TESTS=${1:-tests/e2e} "$root_dir/scripts/test.sh" "${@:2}"
}

case ${1:-} in
  prepare) prepare ;;
  start) start ;;
  stop) stop ;;
  daemon) shift; daemon "$@" ;;
  test) shift; run_tests "$@" ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac
