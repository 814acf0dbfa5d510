#!/usr/bin/env bash
# Run the whole pybridge test suite (root): unit tests, integration tests of the kernel adapters
# in throwaway network namespaces, and end-to-end tests through a real dockerd with the plugin
# built from this tree and installed as pybridge-test:latest (its own state, link prefix,
# chains and address pools, so it never touches an installed pybridge or other networks).
#
#   scripts/test.sh [pytest arguments]
#
# Last, the multi-host tests (tests/multihost): three hosts as network namespaces, each with its
# own dockerd and pybridge in cluster mode, and etcd (scripts/multihost.sh).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
PB_SCRIPT=test
. "$root/scripts/lib.sh"
cd "$root"

[ "$(id -u)" = 0 ] || { pb_log "run as root (the integration and end-to-end tests need it)"; exit 1; }
pb_apt_install iptables nftables iproute2 busybox-static curl gcc libc6-dev docker-compose etcd-server etcd-client
python3 -m pip --version >/dev/null 2>&1 || pb_apt_install python3-pip
# Daemons some tests run in namespaces of their own, each on a D-Bus of its own: firewalld and
# systemd-resolved. They are unpacked (apt-get download + dpkg-deb -x into $tools), never
# installed: their packages would start and enable them on the host itself, and resolved would
# take over the host's /etc/resolv.conf. What they need to run is installed (libraries and the
# bus daemon binary, which start nothing).
tools=/var/lib/pybridge-test-tools
unpack() {   # unpack DIR PACKAGE...: download the packages and unpack them all into $tools/DIR
  local dir=$1 dl; shift
  dl=$(mktemp -d)
  if (cd "$dl" && apt-get download -q "$@" >/dev/null 2>&1) \
      || { DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null >/dev/null && (cd "$dl" && apt-get download -q "$@" >/dev/null 2>&1); }; then
    rm -rf "${tools:?}/$dir.tmp" && mkdir -p "$tools/$dir.tmp"
    for deb in "$dl"/*.deb; do dpkg-deb -x "$deb" "$tools/$dir.tmp"; done
    rm -rf "${tools:?}/$dir" && mv "$tools/$dir.tmp" "$tools/$dir"
  else
    pb_log "could not fetch $*: the tests that need them will fail"
  fi
  rm -rf "$dl"
}
command -v dbus-daemon >/dev/null 2>&1 || pb_apt_install dbus-daemon 2>/dev/null || pb_apt_install dbus
if ! command -v firewalld >/dev/null 2>&1 && [ ! -f "$tools/firewalld/usr/sbin/firewalld" ]; then
  pb_apt_install python3-dbus python3-gi gir1.2-glib-2.0 python3-nftables
  unpack firewalld firewalld python3-firewall
fi
if [ ! -x /lib/systemd/systemd-resolved ] && [ ! -x /usr/lib/systemd/systemd-resolved ] \
    && [ ! -x "$tools/systemd-resolved/lib/systemd/systemd-resolved" ] && [ ! -x "$tools/systemd-resolved/usr/lib/systemd/systemd-resolved" ]; then
  unpack systemd-resolved systemd-resolved
fi
if ! python3 -c 'import flask, gunicorn, pyroute2, requests_unixsocket, dns, prometheus_client, jeepney, etcd3gw, publicsuffixlist, pytest, hypothesis, ruff, mypy' 2>/dev/null; then
  pb_log "installing Python test dependencies"
  python3 -m pip install -q -r requirements-dev.txt 2>/dev/null \
    || python3 -m pip install -q --break-system-packages -r requirements-dev.txt
fi

export PYBRIDGE_TEST_PLUGIN=${PYBRIDGE_TEST_PLUGIN:-pybridge-test}
# The test instance forwards no DNS query by default: no lookup may leave the machine.
# Its metrics on a port of its own: the product plugin (127.0.0.1:9474) may run beside it.
# and a system bus of its own for host name resolution (tests/e2e/hostdns.py starts resolved on it)
# (its directory must be there whenever the plugin starts: the plugin mounts it as its system bus)
mkdir -p /run/pybridge-test-dbus
TEST_SETTINGS="PYBRIDGE_METRICS=127.0.0.1:19474 system-bus.source=/run/pybridge-test-dbus PYBRIDGE_IFPREFIX=pt PYBRIDGE_DEFAULT_POOLS=10.207.0.0/16:24 PYBRIDGE_DEFAULT_POOLS6=fd70:6201:ff00::/40:64 PYBRIDGE_DNS_UPSTREAM="
PYBRIDGE_SET="$TEST_SETTINGS" \
  "$root/scripts/install.sh" "$PYBRIDGE_TEST_PLUGIN"
"$root/scripts/make-test-image.sh"

export PYBRIDGE_E2E=1
# PYBRIDGE_TESTS narrows the run to some of the tests (scripts/engine.sh: tests/e2e).
if [ -n "${PYBRIDGE_TESTS:-}" ]; then
  exec python3 -m pytest $PYBRIDGE_TESTS "$@"
fi
# The whole suite: first lint, format and types (ruff and mypy, as pyproject.toml configures them; a
# finding fails the run, after the tests), then everything on this host, then the multi-host
# tests on three engines of their own (scripts/multihost.sh builds them in network namespaces,
# and removes them afterwards).
status=0
pb_log "ruff and mypy"
python3 -m ruff check "$root" || status=1
python3 -m ruff format --check "$root" || status=1
python3 -m mypy || status=1
python3 -m pytest tests --ignore=tests/multihost "$@" || status=1
PYBRIDGE_MULTIHOST_REQUIRED=1 "$root/scripts/multihost.sh" test "$@" || status=1
exit $status
