"""The serving process: gunicorn (one worker, threads) on the plugin's unix socket(s).

The arbiter binds the sockets at once (dockerd gives a managed plugin ~10 s); the worker then
restores state into the kernel before it accepts the first request, so a call that dockerd
sends right after start already finds the bridges and rules in place.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from gunicorn.app.base import BaseApplication

from .config import Settings

log = logging.getLogger(__name__)


def setup_logging(level: str) -> None:
    # stdout reaches the dockerd log at level info; stderr would be logged as errors.
    logging.basicConfig(
        stream=sys.stdout, level=level.upper(), format="%(levelname)s %(name)s: %(message)s", force=True
    )


def _secure_sockets(server) -> None:
    for listener in server.LISTENERS:
        path = getattr(listener, "cfg_addr", None)
        if isinstance(path, str) and os.path.exists(path):
            os.chmod(path, 0o600)


class PluginServer(BaseApplication):
    def __init__(self, settings: Settings):
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        for path in s.sockets:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        options = {
            "bind": [f"unix:{p}" for p in s.sockets],
            "workers": 1,
            "worker_class": "gthread",
            "threads": s.threads,
            "timeout": 120,
            "graceful_timeout": 8,
            "keepalive": 30,
            "umask": 0o077,
            "loglevel": s.log_level,
            "errorlog": "-" if not os.path.exists("/dev/stdout") else "/dev/stdout",
            "accesslog": None,
            "proc_name": f"{s.name}-plugin",
            "when_ready": _secure_sockets,
            "control_socket_disable": True,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self):
        from .kernel.pyroute2_lean import use_lean_package

        use_lean_package()  # before the adapters import pyroute2's modules: 4 MB less
        from .app import create_app
        from .wiring import build_services

        setup_logging(self.settings.log_level)
        services = build_services(self.settings)
        services.underlay_up()
        try:
            report = services.reconciler.restore()
            if report.errors:
                log.error("restore finished with errors: %s", report.errors)
        except Exception:  # a worker that dies as it boots is booted again, and dies again
            log.exception("restore failed; serving anyway (doctor reports what is wrong)")
        services.enable_metrics()
        services.start_background()
        app = create_app(services)
        stats, dns = app.extensions["pybridge.stats"], services.dns

        def activity() -> int:  # plugin calls and DNS queries answered, since start
            queries = sum(sum(c["answered"].values()) for c in dns.server.counters().values()) if dns else 0
            return stats.calls + queries

        threading.Thread(
            target=_trim_when_idle, args=(activity, services.store.shrink), name="pybridge-trim", daemon=True
        ).start()
        return app


def _trim_when_idle(activity, shrink=lambda: None, every: float = 5.0) -> None:
    """After a burst of plugin calls or DNS queries, once they stop: collect garbage, let the
    state store drop its page cache (`shrink`), and hand the freed heap back to the system
    (glibc keeps it otherwise, and the plugin's memory at rest would be its peak). Never during
    a burst, and not at all while nothing happens."""
    import ctypes
    import gc

    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return
    trimmed = seen = activity()
    while True:
        time.sleep(every)
        now = activity()
        if now == seen and now != trimmed:  # calls came, and none for a while
            gc.collect()
            try:
                shrink()
            except Exception:
                log.exception("shrinking the state store's cache")
            trim(0)
            trimmed = now
        seen = now


def serve(settings: Settings) -> None:
    PluginServer(settings).run()
