"""Entry points of the plugin process: python -m plugin serve | restore.

serve    run the plugin server (the managed plugin's entrypoint; also host-process mode)
restore  reconcile kernel objects with the state store once, and print what changed

Everything an operator asks of a running plugin (ls, ps, port, dns, hosts, doctor, gc, stats,
cluster) is the host command, scripts/pybridge, over the plugin's socket: one CLI.
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import load_settings
from .domain.errors import PybridgeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plugin", description="pybridge Docker network plugin")
    parser.add_argument("command", choices=["serve", "restore"])
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
        from .server import setup_logging
        from .wiring import build_services

        setup_logging(settings.log_level)
        services = build_services(settings)
        services.underlay_up()
        report = services.reconciler.restore()
        print(json.dumps(report.as_dict(), indent=2))
        return 1 if report.errors else 0
    except PybridgeError as e:
        print(f"pybridge: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
