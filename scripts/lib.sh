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
  fi
  if ! pb_docker_ready; then
    pb_log "starting dockerd (log: /var/log/pybridge-dockerd.log)"
    setsid nohup dockerd >>/var/log/pybridge-dockerd.log 2>&1 </dev/null &
  fi
  local i
  for i in $(seq 1 60); do pb_docker_ready && return 0; sleep 0.5; done
  pb_log "dockerd did not answer within 30 s; see /var/log/pybridge-dockerd.log"; return 1
}

pb_source_hash() {
  # A hash of everything that goes into the plugin, to skip rebuilding an identical plugin.
  local root=$1
  (cd "$root" && find plugin -name '*.py' -print0 | sort -z | xargs -0 cat; cat Dockerfile config.json requirements.txt) \
    | sha256sum | cut -c1-16
}

pb_installed_hash() {
  # The source hash baked into an existing plugin's rootfs, or nothing. PYBRIDGE_ENGINE_TREE is
  # the root of an engine running in a tree of its own (scripts/engine.sh).
  local name=$1 id
  id=$(docker plugin inspect -f '{{.Id}}' "$name:latest" 2>/dev/null) || return 0
  cat "${PYBRIDGE_ENGINE_TREE:-}/var/lib/docker/plugins/$id/rootfs/etc/pybridge-build" 2>/dev/null || true
}
