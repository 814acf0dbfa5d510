"""Settings, read once from the environment (config.json's env in managed mode)."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from .domain.errors import ConfigError
from .domain.naming import DEFAULT_HOST_SUFFIX, chain_prefix, parse_host_suffix
from .ipam.pools import PoolSpec, parse_pool_specs

DEFAULT_POOLS = "172.16.0.0/12:24,192.168.0.0/16:24"
DEFAULT_POOLS6 = "fd42:7079:6272::/48:64"
DEFAULT_METRICS = "127.0.0.1:9474"
DEFAULT_HOST_DNS = "unix:path=/host/run/dbus/system_bus_socket"  # the host's /run, mounted there
ETCD_TLS_DIR = "/etc/pybridge/etcd-tls"  # config.json's read-only mount etcd-tls (a host directory)


@dataclass(frozen=True)
class EtcdTls:
    """etcd over TLS: the CA that signs etcd's certificates (the public bundle is never used
    then), and this host's client certificate and key. Paths only: the files are read by the
    TLS library when it connects, and their contents are never logged."""

    ca: str = ""
    cert: str = ""
    key: str = ""


@dataclass(frozen=True)
class EtcdLogin:
    """This host's etcd user, and the file with its password (read when the cluster starts,
    never logged). With a login, etcd must have authentication on: a role per host lets each
    write only its own prefix (`pybridge cluster --etcd-access HOST` prints them)."""

    user: str
    password_file: str


@dataclass(frozen=True)
class Settings:
    name: str = "pybridge"
    ifprefix: str = "pb"
    state_dir: str = "/var/lib/pybridge"
    socket: str = "/run/docker/plugins/pybridge.sock"
    host_plugin_dir: str = ""
    proc_sys: str = "/proc/sys"
    default_pools: tuple[PoolSpec, ...] = ()
    default_pools6: tuple[PoolSpec, ...] = ()
    log_level: str = "info"
    threads: int = 16
    dns: bool = True
    dns_port: int = 53
    dns_ttl: int = 10
    dns_default_upstream: str = "resolv.conf"  # or a list 'ip[:port],...', or '' for none
    docker_socket: str = "/var/run/docker.sock"
    firewall_check: int = 2  # seconds between checks of the static rule in iptables-legacy, 0 for
    # none; nftables changes are events, and always healed
    firewall_mark: int = 0x01000000  # the packet-mark bit our forward chain sets on what it accepts
    metrics: tuple[str, int] | None = None  # (host, port) of the Prometheus endpoint, or none
    host_dns_suffix: str = DEFAULT_HOST_SUFFIX  # container names on the host: NAME.NETWORK.<this>; "" none
    host_dns: str = ""  # D-Bus address of the host's system bus (systemd-resolved), or "" for none
    cluster_etcd: tuple[tuple[str, str, int], ...] = ()  # etcd endpoints (scheme, host, port); () = no cluster
    cluster_address: str = ""  # this host's underlay address: VXLAN source, and its name in the cluster
    cluster_grace: int = 30  # seconds after which a silent host's addresses, entries, names go
    cluster_tls: EtcdTls | None = None  # etcd's CA and this host's client certificate; None: none
    cluster_login: EtcdLogin | None = None  # this host's etcd user and password file; None: none
    vxlan_port: int = 4789
    cluster_encrypt: str = "none"  # "wireguard": VXLAN between hosts through WireGuard
    cluster_wg_port: int = 51820  # WireGuard's UDP port on the underlay
    cluster_wg_subnet: str = "10.254.0.0/16"  # the hosts' tunnel addresses (the underlay's host bits in it)

    @property
    def clustered(self) -> bool:
        return bool(self.cluster_etcd)

    @property
    def chain_prefix(self) -> str:
        return chain_prefix(self.name)

    @property
    def db_path(self) -> str:
        return os.path.join(self.state_dir, "state.db")

    @property
    def driver_names(self) -> tuple[str, str]:
        """The names users type: -d pybridge and -d pybridge:latest."""
        return self.name, f"{self.name}:latest"

    @property
    def sockets(self) -> list[str]:
        """The managed plugin's socket, plus <name>.sock and <name>:latest.sock in the host's
        plugin directory when it is mounted. dockerd resolves a managed plugin only by its own
        tagged name and then fails on the short one (moby#33347), so the managed plugin is
        called <name>-plugin and both driver names are served by legacy discovery."""
        out = [self.socket]
        if self.host_plugin_dir and os.path.isdir(self.host_plugin_dir):
            out += [os.path.join(self.host_plugin_dir, f"{n}.sock") for n in self.driver_names]
        return out


def load_settings(environ: Mapping[str, str] | None = None, **overrides) -> Settings:
    env: Mapping[str, str] = os.environ if environ is None else environ
    name = env.get("PYBRIDGE_NAME", "pybridge")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,30}", name):
        raise ConfigError(f"invalid PYBRIDGE_NAME {name!r}: lower-case letters, digits, '_', '.', '-'")
    prefix = env.get("PYBRIDGE_IFPREFIX", "pb")
    if not re.fullmatch(r"[a-z][a-z0-9]", prefix):
        raise ConfigError(f"invalid PYBRIDGE_IFPREFIX {prefix!r}: two characters, a letter then a letter or digit")
    level = env.get("PYBRIDGE_LOG_LEVEL", "info").lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"invalid PYBRIDGE_LOG_LEVEL {level!r}")
    values = dict(
        name=name,
        ifprefix=prefix,
        state_dir=env.get("PYBRIDGE_STATE_DIR", "/var/lib/pybridge"),
        socket=env.get("PYBRIDGE_SOCKET", "/run/docker/plugins/pybridge.sock"),
        host_plugin_dir=env.get("PYBRIDGE_HOST_PLUGIN_DIR", ""),
        proc_sys=env.get("PYBRIDGE_PROC_SYS", "/proc/sys"),
        default_pools=parse_pool_specs(env.get("PYBRIDGE_DEFAULT_POOLS", DEFAULT_POOLS), 4),
        default_pools6=parse_pool_specs(env.get("PYBRIDGE_DEFAULT_POOLS6", DEFAULT_POOLS6), 6),
        log_level=level,
        dns=env.get("PYBRIDGE_DNS", "on") not in ("off", "false", "0"),
        dns_ttl=_int(env, "PYBRIDGE_DNS_TTL", 10, 0, 86400),
        dns_default_upstream=env.get("PYBRIDGE_DNS_UPSTREAM", "resolv.conf"),
        docker_socket=env.get("PYBRIDGE_DOCKER_SOCKET", "/var/run/docker.sock"),
        firewall_check=_int(env, "PYBRIDGE_FIREWALL_CHECK", 2, 0, 3600),
        firewall_mark=_mark(env.get("PYBRIDGE_FIREWALL_MARK", "0x01000000")),
        metrics=parse_listen("PYBRIDGE_METRICS", env.get("PYBRIDGE_METRICS", DEFAULT_METRICS)),
        host_dns=_bus_address("PYBRIDGE_HOST_DNS", env.get("PYBRIDGE_HOST_DNS", DEFAULT_HOST_DNS)),
        host_dns_suffix=_host_suffix(env.get("PYBRIDGE_HOST_DNS_SUFFIX", DEFAULT_HOST_SUFFIX)),
        **_cluster(env),
    )
    values.update(overrides)
    return Settings(**values)


def _cluster(env) -> dict:
    """Cluster mode: both PYBRIDGE_CLUSTER_ETCD and PYBRIDGE_CLUSTER_ADDRESS, or neither."""
    etcd, address = env.get("PYBRIDGE_CLUSTER_ETCD", ""), env.get("PYBRIDGE_CLUSTER_ADDRESS", "")
    values = dict(
        cluster_grace=_int(env, "PYBRIDGE_CLUSTER_GRACE", 30, 5, 86400),
        vxlan_port=_int(env, "PYBRIDGE_VXLAN_PORT", 4789, 1, 65535),
    )
    if not etcd and not address:
        return values
    if not etcd or not address:
        raise ConfigError(
            "cluster mode needs both PYBRIDGE_CLUSTER_ETCD (etcd endpoints) and "
            "PYBRIDGE_CLUSTER_ADDRESS (this host's underlay address)"
        )
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError(f"invalid PYBRIDGE_CLUSTER_ADDRESS {address!r}: an IP address of this host") from None
    if ip.is_loopback or ip.is_multicast or ip.is_unspecified:
        raise ConfigError(f"invalid PYBRIDGE_CLUSTER_ADDRESS {address!r}: the address other hosts reach this one at")
    endpoints = parse_endpoints(etcd)
    return dict(
        values,
        **_encrypt(env),
        cluster_etcd=endpoints,
        cluster_address=str(ip),
        cluster_tls=_etcd_tls(env, endpoints),
        cluster_login=_etcd_login(env, str(ip)),
    )


def _encrypt(env: Mapping[str, str]) -> dict:
    """PYBRIDGE_CLUSTER_ENCRYPT=wireguard (or none), its port and tunnel subnet."""
    encrypt = env.get("PYBRIDGE_CLUSTER_ENCRYPT", "") or "none"
    if encrypt not in ("none", "wireguard"):
        raise ConfigError(f"invalid PYBRIDGE_CLUSTER_ENCRYPT {encrypt[:64]!r}: none or wireguard")
    raw = env.get("PYBRIDGE_CLUSTER_WG_SUBNET", "") or "10.254.0.0/16"
    try:
        subnet = ipaddress.ip_network(raw, strict=True)
    except ValueError:
        raise ConfigError(f"invalid PYBRIDGE_CLUSTER_WG_SUBNET {raw[:64]!r}: a subnet such as 10.254.0.0/16") from None
    if subnet.num_addresses < 4 or subnet.is_loopback or subnet.is_multicast or subnet.is_link_local:
        raise ConfigError(f"invalid PYBRIDGE_CLUSTER_WG_SUBNET {raw[:64]!r}: a unicast subnet with room for hosts")
    return dict(
        cluster_encrypt=encrypt,
        cluster_wg_port=_int(env, "PYBRIDGE_CLUSTER_WG_PORT", 51820, 1, 65535),
        cluster_wg_subnet=str(subnet),
    )


def _etcd_login(env: Mapping[str, str], address: str) -> EtcdLogin | None:
    """PYBRIDGE_CLUSTER_ETCD_PASSWORD: a file (in the etcd-tls mount) with this host's etcd
    password, mode 0600; PYBRIDGE_CLUSTER_ETCD_USER: its user (default pybridge-ADDRESS)."""
    user, password = env.get("PYBRIDGE_CLUSTER_ETCD_USER", ""), env.get("PYBRIDGE_CLUSTER_ETCD_PASSWORD", "")
    if not password:
        if user:
            raise ConfigError(
                "PYBRIDGE_CLUSTER_ETCD_USER needs PYBRIDGE_CLUSTER_ETCD_PASSWORD (a file with its password)"
            )
        return None
    user = user or etcd_user(address)
    if not re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", user):
        raise ConfigError(f"invalid PYBRIDGE_CLUSTER_ETCD_USER {user[:64]!r}: letters, digits, '.', '_', ':', '-'")
    path = _tls_file("PYBRIDGE_CLUSTER_ETCD_PASSWORD", password)
    _owner_only("PYBRIDGE_CLUSTER_ETCD_PASSWORD", path, "the password")
    return EtcdLogin(user, path)


def etcd_user(address: str) -> str:
    """The etcd user (and role) of the cluster host with this underlay address."""
    return f"pybridge-{address}"


def _owner_only(key: str, path: str, what: str) -> None:
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"{key} {path}: mode {mode:04o} lets others read {what}; chmod 600 it")


def _etcd_tls(env: Mapping[str, str], endpoints: tuple[tuple[str, str, int], ...]) -> EtcdTls | None:
    """PYBRIDGE_CLUSTER_ETCD_CA, _CERT and _KEY: file names in the etcd-tls mount (or absolute
    paths). The key must be its owner's alone (mode 0600 or stricter); every endpoint must be
    https (a certificate is not sent, nor etcd checked, over plain HTTP)."""
    names = {k: env.get(f"PYBRIDGE_CLUSTER_ETCD_{k.upper()}", "") for k in ("ca", "cert", "key")}
    if not any(names.values()):
        return None
    if bool(names["cert"]) != bool(names["key"]):
        raise ConfigError(
            "PYBRIDGE_CLUSTER_ETCD_CERT and PYBRIDGE_CLUSTER_ETCD_KEY go together: the client certificate and its key"
        )
    plain = [f"{s}://{h}:{p}" for s, h, p in endpoints if s != "https"]
    if plain:
        raise ConfigError(f"PYBRIDGE_CLUSTER_ETCD_CA/_CERT/_KEY need https:// endpoints; {', '.join(plain)} is not")
    paths = {k: _tls_file(f"PYBRIDGE_CLUSTER_ETCD_{k.upper()}", v) if v else "" for k, v in names.items()}
    if paths["key"]:
        _owner_only("PYBRIDGE_CLUSTER_ETCD_KEY", paths["key"], "the private key")
    return EtcdTls(**paths)


def _tls_file(key: str, name: str) -> str:
    """A file of the etcd-tls mount by name, or an absolute path; it must be a regular file."""
    if not name.startswith("/") and (not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", name) or name.startswith(".")):
        raise ConfigError(f"invalid {key} {name[:64]!r}: a file name in {ETCD_TLS_DIR} or an absolute path")
    path = name if name.startswith("/") else os.path.join(ETCD_TLS_DIR, name)
    if not os.path.isfile(path):
        raise ConfigError(f"{key}: {path} is not a file (the etcd-tls mount holds {ETCD_TLS_DIR})")
    return path


def parse_endpoints(text: str) -> tuple[tuple[str, str, int], ...]:
    """'http://10.0.0.1:2379,https://[fd00::1]:2379' -> ((scheme, host, port), ...)."""
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        try:
            u = urlsplit(item)
            port = u.port or 2379
        except ValueError:
            u, port = None, 0
        if (
            u is None
            or u.scheme not in ("http", "https")
            or not u.hostname
            or u.path not in ("", "/")
            or u.query
            or u.username
        ):
            raise ConfigError(f"invalid PYBRIDGE_CLUSTER_ETCD endpoint {item!r}: http://HOST:PORT or https://HOST:PORT")
        out.append((u.scheme, u.hostname, port))
    if not out:
        raise ConfigError("PYBRIDGE_CLUSTER_ETCD names no endpoint")
    return tuple(out)


def parse_listen(key: str, text: str) -> tuple[str, int] | None:
    """HOST:PORT or [IPv6]:PORT with an IP address for HOST; off (or empty) for none."""
    if text.lower() in ("", "off", "false", "0", "no"):
        return None
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([0-9.]+):(\d{1,5})", text)
    host, port = (m.group(1) or m.group(3), int(m.group(2) or m.group(4))) if m else ("", 0)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        host = ""
    if not host or not 1 <= port <= 65535:
        raise ConfigError(f"invalid {key} {text!r}: HOST:PORT with an IP address ([::1]:9474 for IPv6), or off")
    return host, port


def _bus_address(key: str, text: str) -> str:
    """unix:path=/an/absolute/path of a D-Bus socket, or off (or empty) for none."""
    if text.lower() in ("", "off", "false", "0", "no"):
        return ""
    if not re.fullmatch(r"unix:path=(/[A-Za-z0-9_.-]+)+", text) or "/../" in text + "/":
        raise ConfigError(f"invalid {key} {text!r}: unix:path=/absolute/path/of/the/system_bus_socket, or off")
    return text


def _host_suffix(text: str) -> str:
    """PYBRIDGE_HOST_DNS_SUFFIX: off (or empty) for no container names on the host. Any suffix
    but the default is checked against the public-suffix list (publicsuffixlist, the list as its
    release shipped it), loaded for this check only: the default is checked by the tests, and
    the list's tables (2 MB) are not kept in a plugin that idles under 60 MB."""
    if text.strip().lower() in ("", "off", "false", "0", "no"):
        return ""
    if text.strip().lower().rstrip(".") == DEFAULT_HOST_SUFFIX:
        return DEFAULT_HOST_SUFFIX
    from publicsuffixlist import PublicSuffixList

    try:
        return parse_host_suffix(text, PublicSuffixList().is_public)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _mark(text: str) -> int:
    try:
        value = int(text, 16) if re.fullmatch(r"0x[0-9a-fA-F]{1,8}", text) else int(text) if text.isdigit() else 0
    except ValueError:
        value = 0
    if value <= 0 or value >= 1 << 32 or value & (value - 1):
        raise ConfigError(
            f"invalid PYBRIDGE_FIREWALL_MARK {text!r}: one bit of the 32-bit packet mark, e.g. 0x01000000"
        )
    return value


def _int(env, key: str, default: int, low: int, high: int) -> int:
    text = env.get(key, str(default))
    if not text.isdigit() or not low <= int(text) <= high:
        raise ConfigError(f"invalid {key} {text!r}: an integer from {low} to {high}")
    return int(text)
