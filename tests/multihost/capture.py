"""What crosses an interface of the rig, seen from inside its namespace: frames, UDP ports, and
frames that hold a marker (an AF_PACKET socket sees every frame whole); and hand-made VXLAN
sent by a neighbour on the underlay."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.vxlancraft import SCRIPT as CRAFT

# Counts what an interface carries for a while: frames, UDP destination ports, and how many frames
# hold the marker anywhere in their bytes (an AF_PACKET socket sees every frame whole).
CAPTURE = r"""
import json, socket, struct, sys, time
iface, seconds, marker = sys.argv[1], float(sys.argv[2]), sys.argv[3].encode()
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
s.bind((iface, 0)); s.settimeout(0.2)
print("ready", flush=True)
frames, ports, marked, end = 0, {}, 0, time.time() + seconds
while time.time() < end:
    try:
        f = s.recv(65535)
    except socket.timeout:
        continue
    frames += 1
    marked += marker in f
    if f[12:14] == b"\x08\x00" and f[23] == 17:
        ihl = (f[14] & 15) * 4
        port = struct.unpack("!H", f[14 + ihl + 2:14 + ihl + 4])[0]
        ports[port] = ports.get(port, 0) + 1
print(json.dumps({"frames": frames, "ports": ports, "marked": marked}))
"""


class Capture:
    def __init__(self, netns: str, iface: str, seconds: float, marker: str = "-"):
        self.p = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", CAPTURE, iface, str(seconds), marker],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.p.stdout is not None and self.p.stdout.readline().strip() == "ready"

    def result(self) -> dict:
        out = self.p.communicate(timeout=60)[0]
        got = json.loads(out)
        got["ports"] = {int(k): v for k, v in got["ports"].items()}
        return got


def from_the_underlay(source: str, destination: str, *args: str) -> str:
    """tests.vxlancraft's frame, sent from the underlay's own namespace with this outer source
    address (a neighbour there can forge any): "sent", or why not."""
    return subprocess.run(
        ["ip", "netns", "exec", "pbmh-ul", sys.executable, "-c", CRAFT, "raw", source, destination, *args],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
