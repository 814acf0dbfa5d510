# Shared shell helpers for install.sh, test.sh and .ci/run. Source it; it defines functions only.

pb_log() { printf '%s: %s\n' "${PB_SCRIPT:-pybridge}" "$*" >&2; }

pb_apt_install() {
  # Install Debian/Ubuntu packages that are missing; apt-get update once per run.
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  pb_log "installing ${missing[*]}"
  if [ -z "${PB_APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null >/dev/null; PB_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
}

pb_docker_ready() { docker info >/dev/null 2>&1; }

pb_ensure_docker_engine() {
  # Reuse a running engine; otherwise install Debian's docker.io if needed and start dockerd
  # (through systemd where there is one, else as a background process).
  pb_docker_ready && return 0
  command -v dockerd >/dev/null 2>&1 || pb_apt_install docker.io
  command -v docker >/dev/null 2>&1 || pb_apt_install docker.io
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl start docker || true
    local i
    for i in $(seq 1 60); do pb_docker_ready && return 0; sleep 0.5; done
  fi
  pb_start_dockerd dockerd
}

pb_clear_dead_bundles() {
  # Bundles containerd renamed to .ID to delete them and could not: always garbage, and while one
  # is there every later delete of task ID fails ("rename ...: file exists"), so ID's next start
  # does too. Safe whatever runs.
  local exec_root=${1:-/var/run/docker} d m
  for d in "$exec_root"/containerd/daemon/io.containerd.runtime.v2.task/*/.[0-9a-f]*; do
    [ -d "$d" ] || continue
    for m in $(awk -v p="$d/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r); do umount -l "$m" || true; done
    rm -rf "$d"
  done
}

pb_clear_stale_plugin_tasks() {
  # With no dockerd running, what is left of managed plugins' tasks under an exec root belongs
  # to no engine: their shims (orphaned when dockerd was killed) and their task and runc
  # directories (kept where /run is not a tmpfs, or after a kill). dockerd 20.10 fails to start
  # such a plugin again ("failed to start shim: mkdir ...: file exists") and then panics at every
  # start (nil plugin client). Containers' own tasks (namespace moby) are dockerd's to handle.
  local exec_root=${1:-/var/run/docker} pid m
  pb_clear_dead_bundles "$exec_root"
  pidof dockerd >/dev/null 2>&1 && { pb_log "not clearing plugin tasks: a dockerd runs"; return 0; }
  for pid in $(pgrep -f -- "containerd-shim-runc-v2 -namespace plugins.moby" || true); do
    pkill -KILL -P "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
  done
  local bundles=$exec_root/containerd/daemon/io.containerd.runtime.v2.task/plugins.moby
  for m in $(awk -v p="$bundles/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  # dot-entries too: containerd renames a bundle to .ID before deleting it, and a .ID left by a
  # failed delete makes every later delete of ID fail ("rename ...: file exists")
  find "$bundles" "$exec_root/runtime-runc/plugins.moby" -mindepth 1 -maxdepth 1 -exec rm -rf {} + 2>/dev/null || true
}

pb_start_dockerd() {
  # Start a detached dockerd with this command line (log: /var/log/pybridge-dockerd.log) and
  # wait until it answers. Stale plugin tasks are cleared first; if dockerd still dies at start
  # on a plugin's task, it is cleared again and dockerd started once more.
  local log=/var/log/pybridge-dockerd.log attempt i pid offset
  for attempt in 1 2; do
    pb_clear_stale_plugin_tasks
    rm -f /var/run/docker.pid
    offset=$(stat -c %s "$log" 2>/dev/null || echo 0)
    pb_log "starting dockerd (log: $log)"
    setsid "$@" >>"$log" 2>&1 </dev/null &
    pid=$!
    for i in $(seq 1 120); do
      pb_docker_ready && return 0
      [ -d "/proc/$pid" ] || break
      sleep 0.5
    done
    pb_docker_ready && return 0
    if [ -d "/proc/$pid" ]; then
      pb_log "dockerd did not answer within 60 s; the end of $log:"; tail -n 20 "$log" >&2; return 1
    fi
    pb_log "dockerd exited at start; the end of $log:"
    tail -c +"$((offset + 1))" "$log" | grep -E 'level=(error|fatal)|^panic:' | tail -n 5 >&2
  done
  return 1
}

pb_source_hash() {
  # A hash of everything that goes into the plugin, to skip rebuilding an identical plugin.
  local root=$1
  (cd "$root" && find plugin -name '*.py' -print0 | sort -z | xargs -0 cat; cat Dockerfile config.json requirements.lock) \
    | sha256sum | cut -c1-16
}

pb_installed_hash() {
  # The source hash baked into an existing plugin's rootfs, or nothing. PYBRIDGE_ENGINE_TREE is
  # the root of an engine running in a tree of its own (scripts/engine.sh).
  local name=$1 id
  id=$(docker plugin inspect -f '{{.Id}}' "$name:latest" 2>/dev/null) || return 0
  cat "${PYBRIDGE_ENGINE_TREE:-}/var/lib/docker/plugins/$id/rootfs/etc/pybridge-build" 2>/dev/null || true
}
