#!/usr/bin/env bash
# Three "hosts" on this machine for the multi-host tests: each a network namespace with its own
# dockerd (own data root, exec root, API socket, pid file, containerd, /run) and its own pybridge
# in cluster mode; an underlay bridge joining them in a namespace of its own, where etcd runs.
# Nothing is added to the host's own namespace or engine.
#
#   scripts/multihost.sh up [N]        make the underlay, etcd and N hosts (default 3)
#   scripts/multihost.sh down          remove all of it (idempotent)
#   scripts/multihost.sh test [ARGS]   up, pytest tests/multihost ARGS, down (even on failure)
#   scripts/multihost.sh bench [ARGS]  up, scripts/bench_multihost.py ARGS, down: in clear, then over
#                                      WireGuard, then the two side by side
#   scripts/multihost.sh docker H ...  the docker CLI against host H (1..N)
#   scripts/multihost.sh kill H        kill host H at once (dockerd, containerd, plugin, containers)
#   scripts/multihost.sh start H       start host H's dockerd again (after kill)
#   scripts/multihost.sh etcd stop|start [M]  all three etcd members, or member M
#   scripts/multihost.sh daemon H      (internal) namespace set-up, exec dockerd
#
# Addresses: underlay 10.206.255.0/24 (host H is .H; etcd's three members .254, client ports 2379,
# 2479, 2579), VXLAN on UDP 4789, WireGuard on UDP 51820 with tunnel addresses 10.254.255.H. The plugin
# is built from this tree (scripts/build-plugin.sh --dir) and needs the host's engine for that.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
PB_SCRIPT=multihost
. "$root/scripts/lib.sh"

base=${PYBRIDGE_MULTIHOST_DIR:-/var/lib/pybridge-multihost}
ul=pbmh-ul                 # the underlay's namespace (bridge ul0, etcd's members)
net=10.206.255
# etcd serves its clients over TLS and admits only certificates of the rig's CA (client-cert
# auth); PYBRIDGE_MULTIHOST_TLS=0 for plain HTTP. The CA, etcd's certificate and one client
# certificate per host (and "admin", for etcdctl) are made in $base/tls at `up`.
tls=${PYBRIDGE_MULTIHOST_TLS:-1}
# etcd's authentication on, with a user and role per host as `pybridge cluster --etcd-access`
# prints them (each host may write only its own prefix and the claims); PYBRIDGE_MULTIHOST_AUTH=0 off
auth=${PYBRIDGE_MULTIHOST_AUTH:-1}
# VXLAN between the hosts through WireGuard (wireguard-go in the plugin: this kernel has no
# WireGuard); PYBRIDGE_MULTIHOST_ENCRYPT=none for VXLAN in clear
encrypt=${PYBRIDGE_MULTIHOST_ENCRYPT:-wireguard}
scheme=http; [ "$tls" = 1 ] && scheme=https
etcd_endpoints=$scheme://$net.254:2379,$scheme://$net.254:2479,$scheme://$net.254:2579
grace=${PYBRIDGE_MULTIHOST_GRACE:-20}    # long enough that a restart of all of etcd under load expires no lease
image=pybridge-test-busybox:latest
plugin=pybridge-plugin:latest

hosts() { cat "$base/hosts" 2>/dev/null || true; }
sock() { echo "$base/h$1/run/docker.sock"; }
hdocker() { local h=$1; shift; docker -H "unix://$(sock "$h")" "$@"; }
ready() { hdocker "$1" info >/dev/null 2>&1; }

underlay_up() {
  ip netns add "$ul"
  ip -n "$ul" link set lo up
  ip -n "$ul" link add ul0 type bridge
  ip -n "$ul" addr add "$net.254/24" dev ul0
  ip -n "$ul" link set ul0 up
}

etcd_member() {
  # member M (1..3) of the etcd cluster: client port 2279+100*M, peer port 2280+100*M
  local m=$1 pidf=$base/etcd$1.pid
  case $2 in
    start)
      mkdir -p "$base/etcd$m"
      # its data on a tmpfs: the tests' heavy writes (images, plugin rootfs) stall fsync on disk
      # for seconds, longer than the tests' short grace; a restart of the member keeps the data
      mountpoint -q "$base/etcd$m" || mount -t tmpfs -o size=256m,mode=0700 tmpfs "$base/etcd$m"
      local peers="" i
      for i in 1 2 3; do peers="$peers${peers:+,}m$i=http://$net.254:$((2280 + 100 * i))"; done
      setsid ip netns exec "$ul" etcd --name "m$m" --data-dir "$base/etcd$m/data" \
        --listen-client-urls "$scheme://$net.254:$((2279 + 100 * m))" \
        --advertise-client-urls "$scheme://$net.254:$((2279 + 100 * m))" \
        $(etcd_tls_flags) \
        --listen-peer-urls "http://$net.254:$((2280 + 100 * m))" \
        --initial-advertise-peer-urls "http://$net.254:$((2280 + 100 * m))" \
        --initial-cluster "$peers" --initial-cluster-state new --log-level warn --logger zap \
        >>"$base/etcd$m/etcd.log" 2>&1 </dev/null &
      echo $! >"$pidf"
      disown ;;
    stop)
      [ -f "$pidf" ] || return 0
      local pid; pid=$(cat "$pidf")
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
      rm -f "$pidf" ;;
  esac
}

etcd_tls_flags() {
  [ "$tls" = 1 ] || return 0
  echo "--cert-file $base/tls/etcd.pem --key-file $base/tls/etcd-key.pem --trusted-ca-file $base/tls/pbtest-ca.pem" \
    "--client-cert-auth"
}

ctl() {
  # etcdctl on the underlay, as the rig's admin client (etcd's root user once authentication is on)
  local flags=()
  [ "$tls" = 1 ] && flags=(--cacert "$base/tls/pbtest-ca.pem" --cert "$base/tls/admin.pem" --key "$base/tls/admin-key.pem")
  [ -f "$base/root.password" ] && flags+=(--user "root:$(cat "$base/root.password")")
  ip netns exec "$ul" env ETCDCTL_API=3 etcdctl --endpoints "$etcd_endpoints" "${flags[@]}" "$@"
}

etcd_auth_up() {
  # root, then a user and role per host (the plugin's own command text), then authentication on
  local h pw
  ctl user add root --interactive=false "--new-user-password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n' | tee "$base/root.password.new")" >/dev/null
  for h in $(seq 1 "$1"); do
    pw=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    mkdir -p "$base/h$h/etcd-tls"
    (umask 077; printf '%s\n' "$pw" >"$base/h$h/etcd-tls/etcd.password")
    (cd "$root" && python3 -c 'import sys, shlex
from plugin.cluster.records import etcd_access
from plugin.config import etcd_user
for c in etcd_access(sys.argv[1], etcd_user(sys.argv[1])):
    print(shlex.join(c))' "$net.$h") | while IFS= read -r line; do
      eval "set -- $line"
      ctl "${@//\$PASSWORD/$pw}" >/dev/null
    done
  done
  ctl role add root >/dev/null 2>&1 || true      # (etcd 3.4: the root user needs the root role)
  ctl user grant-role root root >/dev/null 2>&1 || true
  ctl auth enable >/dev/null
  mv "$base/root.password.new" "$base/root.password"
}

etcd_healthy() {
  ctl --command-timeout=2s endpoint health >/dev/null 2>&1
}

etcd_ctl() {
  # etcd start|stop [M]: one member, or all three
  local members=${2:-1 2 3} m i
  for m in $members; do etcd_member "$m" "$1"; done
  if [ "$1" = start ]; then
    for i in $(seq 1 150); do
      ctl --command-timeout=2s endpoint status >/dev/null 2>&1 && etcd_healthy && return 0
      sleep 0.2
    done
    pb_log "etcd did not become healthy: $base/etcd*/etcd.log"; return 1
  fi
}

daemon() {
  # Runs as host H's engine: in H's network namespace, a mount namespace of its own where /run
  # is H's directory and /sys is H's (sysfs shows the namespace it was mounted in; cgroups kept).
  local h=$1 d=$base/h$1
  exec nsenter --net="/run/netns/pbmh-h$h" -- unshare --mount --propagation private -- /bin/sh -ec '
    d=$1; shift
    mkdir -p "$d/cgroup"
    mount --rbind /sys/fs/cgroup "$d/cgroup"
    mount -t sysfs sysfs /sys
    mount --move "$d/cgroup" /sys/fs/cgroup
    mount --bind "$d/run" /run
    exec dockerd "$@"' sh "$d" --data-root "$d/docker" --exec-root /run/docker --pidfile /run/docker.pid \
    -H unix:///run/docker.sock --config-file "$d/daemon.json" --bridge none --containerd-namespace moby
}

start_host() {
  local h=$1 d=$base/h$1 i
  # nothing of this host runs: its /run is what a reboot would leave of a tmpfs, nothing (a killed
  # engine's plugin task left there makes dockerd 20.10 fail to start it, then panic)
  [ -z "$(ip netns pids "pbmh-h$h" 2>/dev/null)" ] && rm -rf "$d/run"
  mkdir -p "$d/run" "$d/docker" "$d/state"
  [ -f "$d/daemon.json" ] || echo '{}' >"$d/daemon.json"
  rm -f "$d/run/docker.pid"
  setsid "$0" daemon "$h" >>"$d/dockerd.log" 2>&1 </dev/null &
  disown       # a host killed on purpose is no job of this shell's to report
  for i in $(seq 1 120); do ready "$h" && return 0; sleep 0.5; done
  pb_log "host $h's dockerd did not answer: $d/dockerd.log"; tail -5 "$d/dockerd.log" >&2; return 1
}

make_host() {
  local h=$1
  ip netns add "pbmh-h$h"
  ip -n "pbmh-h$h" link set lo up
  ip link add "pbmh$h" type veth peer name eth0 netns "pbmh-h$h"
  ip link set "pbmh$h" netns "$ul"
  ip -n "$ul" link set "pbmh$h" master ul0 up
  ip -n "pbmh-h$h" addr add "$net.$h/24" dev eth0
  ip -n "pbmh-h$h" link set eth0 up
  start_host "$h"
  hdocker "$h" load -q -i "$base/image.tar" >/dev/null
  hdocker "$h" plugin create "$plugin" "$base/plugin" >/dev/null
  mkdir -p "$base/h$h/no-bus" "$base/h$h/etcd-tls"
  local tls_set=()
  if [ "$tls" = 1 ]; then     # this host's certificate and key alone, and the CA
    install -m 0644 "$base/tls/pbtest-ca.pem" "$base/tls/h$h.pem" "$base/h$h/etcd-tls/"
    install -m 0600 "$base/tls/h$h-key.pem" "$base/h$h/etcd-tls/"
    tls_set=(PYBRIDGE_CLUSTER_ETCD_CA=pbtest-ca.pem "PYBRIDGE_CLUSTER_ETCD_CERT=h$h.pem" "PYBRIDGE_CLUSTER_ETCD_KEY=h$h-key.pem")
  fi
  [ -f "$base/h$h/etcd-tls/etcd.password" ] && tls_set+=(PYBRIDGE_CLUSTER_ETCD_PASSWORD=etcd.password)
  hdocker "$h" plugin set "$plugin" "state.source=$base/h$h/state" "system-bus.source=$base/h$h/no-bus" \
    "etcd-tls.source=$base/h$h/etcd-tls" "${tls_set[@]}" \
    PYBRIDGE_NAME=pybridge \
    "PYBRIDGE_CLUSTER_ETCD=$etcd_endpoints" "PYBRIDGE_CLUSTER_ADDRESS=$net.$h" "PYBRIDGE_CLUSTER_GRACE=$grace" \
    "PYBRIDGE_CLUSTER_ENCRYPT=$encrypt" PYBRIDGE_DNS_UPSTREAM= PYBRIDGE_METRICS=off PYBRIDGE_HOST_DNS=off
  hdocker "$h" plugin enable --timeout 30 "$plugin" >/dev/null
}

up() {
  local n=${1:-3} h
  [ "$(id -u)" = 0 ] || { pb_log "run as root"; exit 1; }
  pb_apt_install etcd-server etcd-client curl debootstrap
  down
  mkdir -p "$base"
  pb_docker_ready || { pb_log "the host's engine must run (it builds the plugin and the image)"; exit 1; }
  "$root/scripts/make-test-image.sh" "$image"
  docker save -o "$base/image.tar" "$image"
  "$root/scripts/build-plugin.sh" --dir "$base/plugin" pybridge-multihost
  underlay_up
  if [ "$tls" = 1 ]; then
    (cd "$root" && python3 -m tests.certificates "$base/tls" "$net.254" admin $(seq -f 'h%g' 1 "$n"))
  fi
  etcd_ctl start
  [ "$auth" = 1 ] && etcd_auth_up "$n"
  seq 1 "$n" >"$base/hosts"
  echo "$encrypt" >"$base/encrypt"
  for h in $(hosts); do make_host "$h"; done
  pb_log "up: $n hosts (scripts/multihost.sh docker H ...), etcd at $etcd_endpoints"
}

kill_host() {
  # Everything of host H dies at once: every process in its network namespace.
  local h=$1 pids
  pids=$(ip netns pids "pbmh-h$h" 2>/dev/null || true)
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
  local i
  for i in $(seq 1 50); do [ -z "$(ip netns pids "pbmh-h$h" 2>/dev/null)" ] && break; sleep 0.1; done
}

down() {
  local h d m
  for h in $(hosts); do
    d=$base/h$h
    local pid; pid=$(cat "$d/run/docker.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
    kill_host "$h"
  done
  etcd_ctl stop 2>/dev/null || true
  for h in $(ip netns list 2>/dev/null | awk '/^pbmh-/ { print $1 }'); do
    [ -n "$(ip netns pids "$h" 2>/dev/null)" ] && kill -KILL $(ip netns pids "$h") 2>/dev/null || true
    ip netns del "$h" 2>/dev/null || true
  done
  # mounts of the engines live in their own mount namespaces, gone with them; anything a crash
  # left in this one goes before the directory does
  if [ -d "$base" ]; then
    # the logs outlive the hosts, for a look after a failed run
    local logs=/var/log/pybridge-multihost
    rm -rf "$logs"; mkdir -p "$logs"
    for h in $(hosts); do cp "$base/h$h/dockerd.log" "$logs/h$h-dockerd.log" 2>/dev/null || true; done
    for m in 1 2 3; do cp "$base/etcd$m/etcd.log" "$logs/etcd$m.log" 2>/dev/null || true; done
    for m in $(awk -v p="$base/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r); do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$base"
  fi
}

case ${1:-} in
  up) shift; up "$@" ;;
  down) down ;;
  test)
    shift
    trap down EXIT
    up
    PYBRIDGE_MULTIHOST="$base" python3 -m pytest "$root/tests/multihost" "$@" ;;
  bench)
    # a cluster in clear, then one over WireGuard (PYBRIDGE_MULTIHOST_BENCH_MODES), each measured
    # against the same underlay, then both side by side
    shift
    trap down EXIT
    saved=()
    for encrypt in ${PYBRIDGE_MULTIHOST_BENCH_MODES:-none wireguard}; do
      pb_log "bench: VXLAN ${encrypt/none/in clear}"
      up
      PYBRIDGE_MULTIHOST="$base" python3 "$root/scripts/bench_multihost.py" --label "$encrypt" \
        --save "/tmp/pybridge-bench-$encrypt.json" "$@"
      saved+=("/tmp/pybridge-bench-$encrypt.json")
      down
    done
    python3 "$root/scripts/bench_multihost.py" --compare "${saved[@]}" ;;
  docker) shift; hdocker "$@" ;;
  kill) kill_host "$2" ;;
  start) start_host "$2" ;;
  etcd) etcd_ctl "$2" "${3:-}" ;;
  daemon) daemon "$2" ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
