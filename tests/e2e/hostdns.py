"""A real systemd-resolved for the host-name tests, touching nothing of the host's own resolver.

resolved and a D-Bus system bus of their own run in a private mount namespace: a tmpfs on
/run/systemd (resolved's state and a drop-in: no upstream DNS at all, no fallback servers, no
LLMNR or mDNS, so no query can leave the machine), /etc/resolv.conf pointing at its own stub (so
the host's resolvers are not imported), and /etc/passwd with the systemd-resolve user it drops
to. The bus socket is on the host's /run (/run/pybridge-test-dbus), which the test plugin mounts
as its system bus (system-bus.source, set by scripts/test.sh; the directory stays, or the
plugin's mount would lose it). The stub listens on 127.0.0.53. Lookups as the
host's tools make them run with /etc/resolv.conf -> 127.0.0.53 in a mount namespace of their own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile

from ..dbusconf import bus_config

BUS_DIR = "/run/pybridge-test-dbus"
BUS = f"{BUS_DIR}/system_bus_socket"
TOOLS = "/var/lib/pybridge-test-tools"
CANDIDATES = (
    "/lib/systemd/systemd-resolved",
    "/usr/lib/systemd/systemd-resolved",
    f"{TOOLS}/systemd-resolved/lib/systemd/systemd-resolved",
    f"{TOOLS}/systemd-resolved/usr/lib/systemd/systemd-resolved",
)
UID = 64990

RESOLVED_CONF = (
    "[Resolve]\nDNS=\nFallbackDNS=\nDomains=\nLLMNR=no\nMulticastDNS=no\nDNSSEC=no\nDNSOverTLS=no\n"
    "Cache=no\nDNSStubListener=yes\nReadEtcHosts=no\n"
)

RUN = """set -e
mkdir -p /run/systemd
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/systemd/resolved.conf.d /run/systemd/resolve
chown {uid}:{uid} /run/systemd/resolve
cp "$1/resolved.conf" /run/systemd/resolved.conf.d/pybridge-test.conf
for f in resolv.conf passwd group; do mount --bind "$1/$f" "/etc/$f"; done
mkdir -p {bus_dir}
dbus-daemon --config-file="$1/bus.conf" --nofork --nopidfile &
while [ ! -S {bus} ]; do sleep 0.05; done
exec env DBUS_SYSTEM_BUS_ADDRESS=unix:path={bus} SYSTEMD_LOG_LEVEL=info "$2"
"""


def resolved_binary() -> str | None:
    return next((p for p in CANDIDATES if os.access(p, os.X_OK)), None)


def stub_taken() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.53", 53))
        except OSError:
            return True
    return False


class Resolver:
    def __init__(self, binary: str):
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="pybridge-resolved-")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        d = self.dir
        with open(f"{d}/bus.conf", "w") as f:
            f.write(bus_config(BUS, user="*"))
        with open(f"{d}/resolved.conf", "w") as f:
            f.write(RESOLVED_CONF)
        with open(f"{d}/resolv.conf", "w") as f:
            f.write("nameserver 127.0.0.53\noptions timeout:2 attempts:1\n")
        with open("/etc/passwd") as src, open(f"{d}/passwd", "w") as f:
            f.write(src.read() + f"systemd-resolve:x:{UID}:{UID}:pybridge test resolver:/:/usr/sbin/nologin\n")
        with open("/etc/group") as src, open(f"{d}/group", "w") as f:
            f.write(src.read() + f"systemd-resolve:x:{UID}:\n")
        with open(f"{d}/run.sh", "w") as f:
            f.write(RUN.format(uid=UID, bus_dir=BUS_DIR, bus=BUS))
        self.log = open(f"{d}/resolved.log", "w")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", f"{d}/run.sh", d, self.binary],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready(self) -> bool:
        """resolved holds its name on the bus and its stub answers."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"systemd-resolved exited: {open(self.dir + '/resolved.log').read()[-2000:]}")
        if not os.path.exists(BUS):
            return False
        from jeepney import DBusAddress, new_method_call
        from jeepney.io.blocking import open_dbus_connection

        bus = DBusAddress("/org/freedesktop/DBus", bus_name="org.freedesktop.DBus", interface="org.freedesktop.DBus")
        with open_dbus_connection(bus=f"unix:path={BUS}") as conn:
            names = conn.send_and_get_reply(new_method_call(bus, "ListNames"), timeout=5).body[0]
        return "org.freedesktop.resolve1" in names and stub_taken()

    def lookup(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """A command run as on the host, its resolver being this resolved's stub."""
        return subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"',
                "sh",
                f"{self.dir}/resolv.conf",
                *argv,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # dbus-daemon is in the same process group (started by the same shell): killed with it
        if hasattr(self, "log"):
            self.log.close()
        if os.path.exists(BUS):
            os.unlink(BUS)
        shutil.rmtree(self.dir, ignore_errors=True)
