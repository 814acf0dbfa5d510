"""The nftables helper: a small process of its own that holds libnftables and runs the JSON
commands the firewall adapter sends it, one per line on stdin, one answer per line on stdout.

Why a process and not libnftables in the plugin's own: libnftables aborts the whole process when
its netlink socket gets a descriptor >= 1024 (it uses select(), moby#52886), and the plugin's
process holds a socket per DNS listener and client, so it can reach that; this process holds a
handful. An abort here costs one command (the adapter restarts the helper and falls back to a
full rewrite), never the plugin. And spawning `nft` per change costs ~5 ms; a line here ~0.1 ms.

It names itself (prctl) so that the adapter's monitor can tell our own changes from others'.
Stdlib and python3-nftables only: it runs with the plugin's python or the system's.
"""

from __future__ import annotations

import ctypes
import json
import sys

PR_SET_NAME = 15


def _load():
    try:
        import nftables
    except ImportError:   # Debian's python3-nftables, from a python that is not the system's
        sys.path.append("/usr/lib/python3/dist-packages")
        import nftables
    return nftables


def main(argv: list[str]) -> int:
    name = argv[1] if len(argv) > 1 else "pybridge-nft"
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass
    nftables = _load()
    nft = nftables.Nftables()
    nft.set_json_output(True)
    nft.set_handle_output(True)     # rules of others' tables are deleted by handle
    out = sys.stdout
    for line in sys.stdin:
        try:
            doc = json.loads(line)
            rc, output, error = nft.json_cmd(doc)
            answer = {"rc": rc, "out": output or None, "err": (error or "").strip()}
        except Exception as e:   # a malformed request answers, never kills the helper
            answer = {"rc": -1, "out": None, "err": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
