#!/usr/bin/env bash
# Build the end-to-end test image pybridge-test-busybox:latest from Debian's busybox-static,
# with no registry. Does nothing when the image exists.
set -euo pipefail
image=${1:-pybridge-test-busybox:latest}
docker image inspect "$image" >/dev/null 2>&1 && exit 0
# Debian's busybox (dynamic, on many machines already) would make an image whose every command
# fails with "no such file or directory": the static one replaces it
if ldd /bin/busybox >/dev/null 2>&1; then
  PB_SCRIPT=make-test-image
  . "$(dirname "$0")/lib.sh"
  pb_apt_install busybox-static
  ldd /bin/busybox >/dev/null 2>&1 && { echo "make-test-image: /bin/busybox is not static" >&2; exit 1; }
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/bin" "$dir/etc" "$dir/tmp" "$dir/root"
cp /bin/busybox "$dir/bin/busybox"
for applet in sh ip ping ping6 nc nslookup httpd sleep cat hostname ls echo ifconfig route grep \
              sed awk seq true false timeout wc head tail tr cut printf; do
  ln -s busybox "$dir/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$dir/etc/passwd"
tar -C "$dir" -c . | docker import -c 'CMD ["/bin/sh"]' - "$image" >/dev/null
