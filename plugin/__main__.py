"""Entry points: python -m plugin serve | restore | status.

serve    run the plugin server (the managed plugin's entrypoint; also host-process mode)
restore  reconcile kernel objects with the state store once, and print what changed
status   print the networks, endpoints, pools and leases in the state store
ports    print the published ports (docker port shows none for a plugin's networks)
dns NET  print the records the DNS of network NET (name or ID) serves; --log: its query log
doctor   report every difference between the state and the kernel (links, addresses, rules)
gc       repair them: restore what the state records, remove what it does not
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from urllib.parse import quote

from .config import load_settings
from .domain.errors import PybridgeError


def _status(settings) -> dict:
    from .store.db import Store

    store = Store(settings.db_path).open()
    try:
        with store.reading() as tx:
            return {
                "networks": [{"id": n.id, "bridge": n.bridge, "subnets": [str(p) for p in n.pools()],
                              "gateways": [str(g) for g in n.gateways()], "internal": n.internal,
                              "mtu": n.mtu} for n in tx.list_networks()],
                "endpoints": [{"id": e.id, "network": e.network_id, "veth": e.host_ifname, "mac": e.mac,
                               "ipv4": str(e.address4 or ""), "ipv6": str(e.address6 or "")}
                              for e in tx.list_endpoints()],
                "pools": [{"id": p.id, "subnet": str(p.subnet), "ip_range": str(p.ip_range or "")}
                          for p in tx.list_pools()],
                "leases": [{"pool": p, "address": str(ipaddress.ip_address(a)), "kind": k}
                           for p, a, k in tx.list_leases()],
            }
    finally:
        store.close()


def _ports(settings) -> list[dict]:
    from .store.db import Store

    store = Store(settings.db_path).open()
    try:
        with store.reading() as tx:
            return [{"host": str(b), "container": f"{addr}:{b.container_port}/{b.proto}",
                     "endpoint": e.id[:12], "network": e.network_id[:12]}
                    for e in tx.list_endpoints() for b in e.ports
                    for addr in ([e.address4.ip] if e.address4 and b.applies_to(4) else [])
                    + ([f"[{e.address6.ip}]"] if e.address6 and b.applies_to(6) else [])]
    finally:
        store.close()


def _ask(settings, method: str, path: str, fail_on: str = "") -> int:
    """Ask the running plugin over its socket (it holds the DNS records and the locks).
    Exits 1 on an error, or when the answer's fail_on list is not empty."""
    import requests_unixsocket

    sock = f"/run/docker/plugins/{settings.name}.sock"
    resp = getattr(requests_unixsocket.Session(), method)("http+unix://" + quote(sock, safe="") + path, timeout=60)
    body = resp.json()
    if resp.status_code != 200:
        print(f"pybridge: {body.get('Err', resp.status_code)}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2))
    return 1 if fail_on and body.get(fail_on) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plugin", description="pybridge Docker network plugin")
    parser.add_argument("command", choices=["serve", "restore", "status", "ports", "dns", "doctor", "gc"])
    parser.add_argument("network", nargs="?", help="network name or ID (dns)")
    parser.add_argument("--log", action="store_true", help="dns: the query log instead of the records")
    parser.add_argument("--socket", help="plugin socket path (serve)")
    parser.add_argument("--state-dir", help="state directory")
    args = parser.parse_args(argv)
    overrides = {}
    if args.socket:
        overrides["socket"] = args.socket
    if args.state_dir:
        overrides["state_dir"] = args.state_dir
    try:
        settings = load_settings(**overrides)
        if args.command == "serve":
            from .server import serve
            serve(settings)
            return 0
        if args.command == "restore":
            from .server import setup_logging
            from .wiring import build_services
            setup_logging(settings.log_level)
            report = build_services(settings).reconciler.restore()
            print(json.dumps(report.as_dict(), indent=2))
            return 1 if report.errors else 0
        if args.command == "dns":
            net = quote(args.network or "", safe="")
            return _ask(settings, "get", f"/pybridge/dns/{net}/{'log' if args.log else 'records'}"
                        if net else "/pybridge/dns")
        if args.command == "doctor":
            return _ask(settings, "get", "/pybridge/doctor", fail_on="problems")
        if args.command == "gc":
            return _ask(settings, "post", "/pybridge/gc", fail_on="errors")
        if args.command == "ports":
            for row in _ports(settings):
                print("{host}\t-> {container}\tendpoint {endpoint}\tnetwork {network}".format(**row))
            return 0
        print(json.dumps(_status(settings), indent=2))
        return 0
    except PybridgeError as e:
        print(f"pybridge: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
