#!/usr/bin/env bash
# Run docker-py's own network integration tests (tests/integration/api_network_test.py and
# models_networks_test.py of docker/docker-py) with pybridge as network and IPAM driver: an
# external check of the driver, written by others. A checkout of docker-py is needed (these
# machines reach PyPI but not GitHub, and the docker sdist has no tests):
#
#   scripts/docker-py-tests.sh DOCKER_PY_CHECKOUT [pytest arguments]
#
# Uses the test plugin (pybridge-test, installed by scripts/test.sh). The images those tests ask
# for (alpine:3.10, alpine) are made from Debian's busybox-static with every applet and tagged
# only where no such image exists; tags made are removed afterwards. Networks keep the names the
# tests asked for in their inspect output (PYBRIDGE_DOCKERPY_NAMES=original; set it empty to see
# the two assertions on "bridge"/"default" fail); that the driver really is pybridge is checked
# at every create (tests/dockerpy/pybridge_swap.py).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
PB_SCRIPT=docker-py-tests
. "$root/scripts/lib.sh"
checkout=${1:?usage: scripts/docker-py-tests.sh DOCKER_PY_CHECKOUT [pytest arguments]}
shift
[ -f "$checkout/tests/integration/api_network_test.py" ] || { pb_log "$checkout is not a docker-py checkout"; exit 1; }
python3 -c 'import docker, paramiko, pytest' 2>/dev/null \
  || python3 -m pip install -q docker paramiko pytest 2>/dev/null \
  || python3 -m pip install -q --break-system-packages docker paramiko pytest

image=pybridge-dockerpy-busybox:latest
if ! docker image inspect "$image" >/dev/null 2>&1; then
  dir=$(mktemp -d)
  mkdir -p "$dir/bin" "$dir/etc" "$dir/tmp" "$dir/root"
  cp /bin/busybox "$dir/bin/busybox"
  for applet in $(/bin/busybox --list); do [ -e "$dir/bin/$applet" ] || ln -s busybox "$dir/bin/$applet"; done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$dir/etc/passwd"
  tar -C "$dir" -c . | docker import -c 'CMD ["/bin/sh"]' - "$image" >/dev/null
  rm -rf "$dir"
fi
tagged=()
for tag in alpine:3.10 alpine:latest; do
  docker image inspect "$tag" >/dev/null 2>&1 && continue
  docker tag "$image" "$tag" && tagged+=("$tag")
done
cleanup() { [ ${#tagged[@]} -eq 0 ] || docker rmi "${tagged[@]}" >/dev/null; }
trap cleanup EXIT

cd "$checkout"
PYBRIDGE_DOCKERPY_DRIVER=${PYBRIDGE_TEST_PLUGIN:-pybridge-test} PYBRIDGE_DOCKERPY_NAMES=${PYBRIDGE_DOCKERPY_NAMES-original} \
PYTHONPATH="$root/tests/dockerpy${PYTHONPATH:+:$PYTHONPATH}" \
  python3 -m pytest -p pybridge_swap -p no:cacheprovider -rf \
    tests/integration/api_network_test.py tests/integration/models_networks_test.py "$@"
