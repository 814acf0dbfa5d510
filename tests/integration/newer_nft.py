"""A current nft (1.1 or later) for the tests that need what newer tools write or read: the
engine root's (scripts/engine.sh prepare makes it), else the test plugin's own rootfs (Debian
13's nftables, built by scripts/test.sh before any test runs). The host's own nft may be older
(Debian 12's 1.0.6 crashes on 1.1's tables, and cannot load typeof sets from JSON)."""

from __future__ import annotations

import functools
import glob
import os
import re
import subprocess

import pytest


def _version(root: str) -> tuple[int, ...]:
    if not os.access(os.path.join(root, "usr/sbin/nft"), os.X_OK):
        return ()
    out = subprocess.run(["chroot", root, "nft", "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"v(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in found.groups()) if found else ()


@functools.cache
def newer_nft_root() -> str | None:
    candidates = [
        os.environ.get("PYBRIDGE_NEWER_NFT_ROOT", ""),
        "/var/lib/pybridge-engines/sid",
        *sorted(glob.glob("/var/lib/docker/plugins/*/rootfs")),
    ]
    for root in filter(None, candidates):
        if _version(root) >= (1, 1):
            return root
    return None


def require_newer_nft() -> str:
    root = newer_nft_root()
    if root is None:
        message = "no nft 1.1 or later: scripts/test.sh builds the test plugin, whose rootfs has one"
        if os.environ.get("PYBRIDGE_E2E") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return root


def nft_in(netns: str, *argv: str, text: str | None = None) -> subprocess.CompletedProcess:
    """The newer nft, in a network namespace."""
    return subprocess.run(
        ["ip", "netns", "exec", netns, "chroot", require_newer_nft(), "nft", *argv],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
