"""A throwaway etcd member for tests (Debian's etcd-server): its own data directory, loopback or a
test namespace's address, ports the caller picks; stopped and removed by the caller."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

from tests.certificates import Certificates


class EtcdServer:
    def __init__(
        self,
        host: str = "127.0.0.1",
        client_port: int = 23790,
        peer_port: int = 23800,
        netns: str | None = None,
        name: str = "pbtest",
        tls: "Certificates | None" = None,
    ):
        """`tls`: serve clients over TLS with these certificates, and accept only clients with a
        certificate the CA signed (--client-cert-auth)."""
        self.host, self.client_port, self.peer_port, self.netns, self.name = host, client_port, peer_port, netns, name
        self.tls = tls
        self.dir = tempfile.mkdtemp(prefix="pybridge-etcd-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.client_port}"

    def start(self) -> "EtcdServer":
        peer = f"http://{self.host}:{self.peer_port}"
        argv = [
            "etcd",
            "--name",
            self.name,
            "--data-dir",
            os.path.join(self.dir, "data"),
            "--listen-client-urls",
            self.url,
            "--advertise-client-urls",
            self.url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"{self.name}={peer}",
            "--initial-cluster-state",
            "new",
            "--log-level",
            "warn",
            "--logger",
            "zap",
        ]
        if self.tls is not None:
            argv += [
                "--cert-file",
                self.tls.server_cert,
                "--key-file",
                self.tls.server_key,
                "--trusted-ca-file",
                self.tls.ca,
                "--client-cert-auth",
            ]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self.log = open(os.path.join(self.dir, "etcd.log"), "ab")
        self.proc = subprocess.Popen(
            argv,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "ETCD_UNSUPPORTED_ARCH": ""},
        )
        self.wait_ready()
        return self

    def ready(self) -> bool:
        try:
            argv = ["curl", "-s", "-m", "1", f"{self.url}/health"]
            if self.tls is not None:
                argv[1:1] = ["--cacert", self.tls.ca, "--cert", self.tls.client_cert, "--key", self.tls.client_key]
            if self.netns:
                argv = ["ip", "netns", "exec", self.netns, *argv]
            out = subprocess.run(argv, capture_output=True, text=True, timeout=5).stdout
            return '"health":"true"' in out.replace(" ", "")
        except subprocess.TimeoutExpired:
            return False

    def wait_ready(self, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited: see {self.dir}/etcd.log")
            if self.ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"etcd not ready within {timeout} s: see {self.dir}/etcd.log")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def remove(self) -> None:
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)
