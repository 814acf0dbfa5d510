#!/usr/bin/env bash
# Pin the plugin's runtime dependencies: requirements.txt -> requirements.lock, every package
# (dependencies of dependencies too) at an exact version with the sha256 of each of its files on
# PyPI, so that scripts/build-plugin.sh installs exactly these bytes or fails.
#
#   scripts/lock.sh            run after changing requirements.txt, and to take upgrades
#
# Resolved with pip-tools' pip-compile in a throw-away virtualenv, by this host's Python, which
# must be the plugin base's minor version (3.11: Debian bookworm) for the markers to match.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
PB_SCRIPT=lock
. "$root/scripts/lib.sh"
want=3.11
have=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$have" = "$want" ] || { pb_log "python3 is $have; the plugin's base has $want: lock with a $want"; exit 1; }
venv=$(mktemp -d /tmp/pybridge-lock.XXXXXX)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q pip-tools
cd "$root"
"$venv/bin/pip-compile" -q --generate-hashes --strip-extras --no-emit-index-url \
  --output-file requirements.lock requirements.txt
pb_log "requirements.lock: $(grep -c '^[a-z]' requirements.lock) packages pinned"
