"""create_app(services) -> Flask. Routes, one error mapper, no import-time state.

Protocol rules (see docs/protocol.md): dockerd sends no Content-Type and sometimes an empty
body; success is HTTP 200 with a JSON object; failure is HTTP 500 with {"Err": message} for
both drivers; an unknown method is 404.
"""

from __future__ import annotations

import json
import logging
import time

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from .domain.errors import InvalidRequest, PybridgeError
from .protocol.routes import ROUTES
from .protocol.stats import CallStats

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
MAX_BODY = 1 << 20


def _reply(payload: dict, status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, content_type=CONTENT_TYPE)


def _body() -> dict:
    raw = request.get_data(cache=False)
    if not raw.strip():
        return {}
    if log.isEnabledFor(logging.DEBUG):  # PYBRIDGE_LOG_LEVEL=debug: every call as dockerd sent it
        log.debug("%s %r", request.path.lstrip("/")[:64], raw[:4096].decode("utf-8", "replace"))  # %r: one line
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("request body is not valid JSON") from None
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise InvalidRequest(f"request body must be a JSON object, got {type(body).__name__}")
    return body


def _view(services, stats: CallStats, method: str, handler):
    def view():
        started = time.perf_counter()
        cpu_started, queued_started = stats.clock()
        ok = False
        endpoint = ""
        try:
            if services.lifecycle.retired:
                raise PybridgeError("pybridge is being uninstalled")
            body = _body()
            endpoint = body.get("EndpointID", "") if isinstance(body.get("EndpointID"), str) else ""
            response = _reply(handler(services, body))
            ok = True
            return response
        except HTTPException:
            raise
        except PybridgeError as e:
            log.warning("%s failed: %s", method, e)
            return _reply({"Err": str(e)}, 500)
        except Exception:
            log.exception("%s: unexpected error", method)
            return _reply({"Err": f"{method}: internal error in pybridge (see the plugin log)"}, 500)
        finally:
            took = time.perf_counter() - started
            cpu, queued = stats.clock()
            stats.record(
                method,
                took,
                ok,
                endpoint[:64],
                cpu - cpu_started,
                None if queued is None or queued_started is None else queued - queued_started,
            )
            if services.metrics is not None:
                services.metrics.observe_call(method, took, ok)

    view.__name__ = method.replace(".", "_")
    return view


def create_app(services) -> Flask:
    app = Flask("pybridge")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    stats = CallStats()
    app.extensions["pybridge.stats"] = stats
    for method, handler in ROUTES.items():
        app.add_url_rule(
            f"/{method}", endpoint=method, view_func=_view(services, stats, method, handler), methods=["POST"]
        )

    @app.get("/pybridge/stats")
    def get_stats():
        return _reply(stats.summary())

    @app.post("/pybridge/stats/reset")
    def reset_stats():
        stats.reset()
        return _reply({})

    def grace():
        try:
            return max(0.0, float(request.args.get("lease_grace", "60")))
        except ValueError:
            return 60.0

    @app.get("/pybridge/networks")
    def networks_view():
        return _reply({"networks": services.views.networks()})

    @app.get("/pybridge/endpoints")
    def endpoints_view():
        return _reply({"endpoints": services.views.endpoints()})

    @app.get("/pybridge/cluster")
    def cluster_view():
        return _reply(services.views.cluster())

    @app.get("/pybridge/cluster/etcd-access/<host>")
    def etcd_access(host):
        """The etcdctl commands that give cluster host HOST its etcd user and role."""
        from .cluster.records import etcd_access
        from .config import etcd_user

        try:
            commands = etcd_access(host, etcd_user(host))
        except PybridgeError as e:
            return _reply({"Err": str(e)}, 400)
        return _reply({"user": etcd_user(host), "commands": commands})

    @app.post("/pybridge/cluster/rotate-key")
    def rotate_key():
        """A new WireGuard key pair for this host (cluster mode with PYBRIDGE_CLUSTER_ENCRYPT)."""
        if services.tunnel is None:
            return _reply(
                {"Err": "no WireGuard here: cluster mode with PYBRIDGE_CLUSTER_ENCRYPT=wireguard is off"}, 400
            )
        try:
            return _reply({"public_key": services.tunnel.rotate()})
        except (PybridgeError, OSError) as e:
            log.warning("rotate-key failed: %s", e)
            return _reply({"Err": f"rotate-key: {e}"}, 500)

    @app.get("/pybridge/doctor")
    def doctor():
        return _reply(services.doctor.examine(grace()))

    @app.post("/pybridge/gc")
    def gc():
        return _reply(services.reconciler.restore(grace()).as_dict())

    @app.post("/pybridge/uninstall")
    def uninstall():
        return _reply(services.reconciler.uninstall())

    @app.get("/pybridge/dns")
    def dns_overview():
        dns = services.dns
        return _reply(dns.overview() if dns else {})

    @app.get("/pybridge/dns/<ref>/<what>")
    def dns_detail(ref, what):
        dns = services.dns
        nid = dns.find(ref) if dns else None
        if nid is None or what not in ("records", "log"):
            return _reply({"Err": f"no DNS for network {ref[:64]!r}"}, 404)
        if what == "log":
            return _reply({"log": dns.server.query_log(nid)})
        snap = dns.server.snapshot(nid)
        return _reply({"records": snap.listing() if snap else []})

    @app.errorhandler(404)
    def not_found(e):
        return _reply({"Err": f"unknown method {request.path.lstrip('/')[:128]}"}, 404)

    @app.errorhandler(405)
    def not_allowed(e):
        return _reply({"Err": "plugin methods are called with POST"}, 405)

    @app.errorhandler(413)
    def too_large(e):
        return _reply({"Err": f"request body larger than {MAX_BODY} bytes"}, 413)

    return app
