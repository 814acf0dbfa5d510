"""Throwaway TLS certificates for tests, made with the openssl command: a CA, a server
certificate for an address, client certificates signed by that CA, and a stranger CA with a
client of its own (what an attacker could present). Keys are 0600, in a directory of the test's."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _key(path: str) -> str:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    os.chmod(path, 0o600)
    return path


def _ca(directory: str, name: str) -> tuple[str, str]:
    key = _key(os.path.join(directory, f"{name}-key.pem"))
    cert = os.path.join(directory, f"{name}.pem")
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        key,
        "-out",
        cert,
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    return cert, key


def _signed(directory: str, name: str, ca: tuple[str, str], ext: str, cn: bool = True) -> tuple[str, str]:
    """A certificate of `name` signed by `ca`; cn=False: no common name (O and OU only), as
    etcd's HTTP gateway requires of a client when authentication is on."""
    key = _key(os.path.join(directory, f"{name}-key.pem"))
    csr, cert = os.path.join(directory, f"{name}.csr"), os.path.join(directory, f"{name}.pem")
    extfile = os.path.join(directory, f"{name}.ext")
    with open(extfile, "w") as f:
        f.write(ext + "\n")
    subject = f"/CN={name}" if cn else f"/O=pybridge/OU={name}"
    _openssl("req", "-new", "-key", key, "-out", csr, "-subj", subject)
    _openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca[0],
        "-CAkey",
        ca[1],
        "-CAcreateserial",
        "-out",
        cert,
        "-days",
        "2",
        "-extfile",
        extfile,
    )
    return cert, key


@dataclass(frozen=True)
class Certificates:
    directory: str
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    stranger_ca: str
    stranger_cert: str
    stranger_key: str

    @classmethod
    def make(
        cls, directory: str, server_ip: str = "127.0.0.1", client: str = "host1", others: tuple[str, ...] = ()
    ) -> Certificates:
        """The CA, etcd's certificate for server_ip (also a client one: etcd's gateway presents
        it to etcd itself), and client certificates CLIENT.pem / CLIENT-key.pem for `client` and
        each of `others`, in `directory`."""
        os.makedirs(directory, mode=0o700, exist_ok=True)
        ca = _ca(directory, "pbtest-ca")
        server = _signed(
            directory, "etcd", ca, f"subjectAltName=IP:{server_ip}\nextendedKeyUsage=serverAuth,clientAuth"
        )
        own = _signed(directory, client, ca, "extendedKeyUsage=clientAuth", cn=False)
        for name in others:
            _signed(directory, name, ca, "extendedKeyUsage=clientAuth", cn=False)
        stranger_ca = _ca(directory, "stranger-ca")
        stranger = _signed(directory, "stranger", stranger_ca, "extendedKeyUsage=clientAuth")
        return cls(directory, ca[0], server[0], server[1], own[0], own[1], stranger_ca[0], stranger[0], stranger[1])


if __name__ == "__main__":  # scripts/multihost.sh: python3 -m tests.certificates DIR SERVER_IP CLIENT...
    import sys

    Certificates.make(sys.argv[1], sys.argv[2], sys.argv[3], tuple(sys.argv[4:]))
