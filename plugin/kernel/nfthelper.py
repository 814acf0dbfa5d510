"""The nftables helper: a small process of its own that holds libnftables and runs the JSON
commands the firewall adapter sends it, one per line on stdin, one answer per line on stdout.

The fallback of plugin.kernel.nft: used when the plugin's process already holds so many
descriptors that a libnftables socket opened in it could get one >= 1024, where libnftables'
select() aborts the process (moby#52886). This process holds a handful. (Spawning `nft` per
change instead would cost ~5 ms.)

It names itself (prctl) so that the adapter's monitor can tell our own changes from others'.
Stdlib and python3-nftables only: it runs with the plugin's python or the system's.
"""

from __future__ import annotations

import ctypes
import json
import sys

PR_SET_NAME = 15


def load_nftables():
    """Debian's python3-nftables (libnftables' binding), from the system's python or another."""
    try:
        import nftables
    except ImportError:
        sys.path.append("/usr/lib/python3/dist-packages")
        import nftables
    return nftables


def main(argv: list[str]) -> int:
    name = argv[1] if len(argv) > 1 else "pybridge-nft"
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass
    nftables = load_nftables()
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
