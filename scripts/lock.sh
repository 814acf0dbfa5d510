#!/usr/bin/env bash
# Pin the plugin's runtime dependencies: requirements.txt -> requirements.lock, every package
# (dependencies of dependencies too) at an exact version with the sha256 of each of its files on
# PyPI, so that scripts/build-plugin.sh installs exactly these bytes or fails.
#
#   scripts/lock.sh            run after changing requirements.txt, and to take upgrades
#
# Resolved with pip-tools' pip-compile in a throw-away virtualenv, by a Python of the plugin
# base's minor version (3.13: Debian trixie) for the markers to match: python3, or the one
# PYBRIDGE_LOCK_PYTHON names (e.g. python3.13).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
PB_SCRIPT=lock
. "$root/scripts/lib.sh"
want=3.13
python=${PYBRIDGE_LOCK_PYTHON:-python3}
have=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$have" = "$want" ] || { pb_log "$python is $have; the plugin's base has $want: set PYBRIDGE_LOCK_PYTHON to a $want"; exit 1; }
venv=$(mktemp -d /tmp/pybridge-lock.XXXXXX)
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
"$venv/bin/pip" install -q pip-tools
cd "$root"
"$venv/bin/pip-compile" -q --generate-hashes --strip-extras --no-emit-index-url \
  --output-file requirements.lock requirements.txt
pb_log "requirements.lock: $(grep -c '^[a-z]' requirements.lock) packages pinned"
