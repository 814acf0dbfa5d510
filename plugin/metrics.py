"""Prometheus metrics (issue 11), in the text format, on an address of the host that a plugin
setting picks (PYBRIDGE_METRICS, loopback by default, `off` for none).

Only the RPC latency histogram is fed as calls happen (by the HTTP layer). Everything else is
read when Prometheus scrapes: the state (networks, endpoints, pool use), and the plain counters
that the parts keep for themselves — the DNS server's answers, the firewall adapter's changes,
what restore and the firewall watchdog repaired, the event watcher's reconnects — so that no
lower layer knows about Prometheus and the DNS hot path pays one list increment.

prometheus-client does the exposition format, the histogram and the request handler; its
default registry (process-global, filled at import) is not used: each Metrics has a registry of
its own. Its HTTP server (a thread per connection, no time limit) is not used either: anyone on
the host could hold threads and memory for ever with half-sent requests. MetricsServer bounds
both: MAX_CONNECTIONS at once (more are closed at once and counted), each closed after
REQUEST_SECONDS whatever it sends, and READ_SECONDS of silence.
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import MetricsHandler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

if TYPE_CHECKING:
    from .dns.service import DnsService
    from .docker.watcher import DockerWatcher
    from .driver.restore import Doctor, Reconciler
    from .kernel.interfaces import FirewallPort
    from .driver.views import Views


class MetricsSource(Protocol):
    """What a scrape reads (plugin.wiring.Services has it): metrics depends on the parts, never
    on the wiring that builds them."""

    views: Views
    firewall: FirewallPort
    doctor: Doctor
    reconciler: Reconciler
    dns: DnsService | None
    watcher: DockerWatcher | None


log = logging.getLogger(__name__)

# plugin calls take from well under a millisecond (IPAM) to seconds (a network on a busy host)
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


MAX_CONNECTIONS = 8  # open at once; one more makes room by closing the oldest
HARD_LIMIT = 16  # threads at most: beyond, a new connection waits (then is closed)
REQUEST_SECONDS = 5.0  # a connection's whole life, from accept to its answer sent
READ_SECONDS = 2.0  # silence allowed while the request is read


class MetricsServer(ThreadingHTTPServer):
    """The metrics endpoint with bounded threads and time per connection (see the module). A
    new connection over MAX_CONNECTIONS closes the oldest one (a scrape takes milliseconds: the
    oldest is one that holds its slot), so that held connections never lock a scraper out."""

    daemon_threads = True
    request_queue_size = 16

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        handler: type[MetricsHandler] = MetricsHandler.factory(registry)
        handler.timeout = READ_SECONDS
        self._ended_cond = threading.Condition()
        self._open: dict[int, socket.socket] = {}  # not closed yet, in accept order (dicts keep it)
        self._running = 0  # threads serving a connection
        self._next = 0
        self.refused = 0  # closed at once: HARD_LIMIT threads were still running
        self.evicted = 0  # closed to make room for a newer one
        self.expired = 0  # closed at REQUEST_SECONDS
        super().__init__(address, handler)

    @staticmethod
    def _close(request: socket.socket) -> None:
        try:
            request.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def process_request(self, request, client_address) -> None:
        oldest = None
        with self._ended_cond:
            # the closed ones end within moments (a busy machine: a little later): wait for one
            # rather than close a scraper's connection; new ones wait in the listen backlog
            self._ended_cond.wait_for(lambda: self._running < HARD_LIMIT, timeout=READ_SECONDS)
            admitted = self._running < HARD_LIMIT
            if admitted:
                self._running += 1
                self._next += 1
                key = self._next
                if len(self._open) >= MAX_CONNECTIONS:  # the oldest makes room (closed below)
                    oldest = self._open.pop(next(iter(self._open)))
                    self.evicted += 1
                self._open[key] = request
            else:
                self.refused += 1
        if not admitted:
            self.shutdown_request(request)
            return
        if oldest is not None:
            self._close(oldest)
        try:
            super().process_request(request, (client_address, key))
        except BaseException:
            self._ended(key)
            raise

    def _ended(self, key: int) -> None:
        with self._ended_cond:
            self._open.pop(key, None)
            self._running -= 1
            self._ended_cond.notify()

    def process_request_thread(self, request, client_address) -> None:
        address, key = client_address

        def expire() -> None:
            self.expired += 1
            self._close(request)

        deadline = threading.Timer(REQUEST_SECONDS, expire)
        deadline.daemon = True
        deadline.start()
        try:
            super().process_request_thread(request, address)
        finally:
            deadline.cancel()
            self._ended(key)

    def handle_error(self, request, client_address) -> None:
        log.debug("metrics: connection from %s ended badly", client_address)


class Metrics:
    def __init__(self, services: MetricsSource):
        self.registry = CollectorRegistry(auto_describe=False)
        self.rpc_seconds = Histogram(
            "pybridge_rpc_duration_seconds",
            "Time pybridge took to answer a plugin call from dockerd, by method",
            ["method"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self.rpc_errors = Counter(
            "pybridge_rpc_errors", "Plugin calls answered with an error, by method", ["method"], registry=self.registry
        )
        self.registry.register(StateCollector(services))
        self._server: MetricsServer | None = None

    def observe_call(self, method: str, seconds: float, ok: bool) -> None:
        self.rpc_seconds.labels(method).observe(seconds)
        if not ok:
            self.rpc_errors.labels(method).inc()

    def serve(self, host: str, port: int) -> bool:
        """Start the HTTP endpoint (a thread). A port already taken is logged, not fatal: the
        plugin's own work matters more than its metrics."""
        try:
            server = self._server = MetricsServer((host, port), self.registry)
        except OSError as e:
            log.error(
                "metrics: cannot listen on %s port %d: %s (set PYBRIDGE_METRICS to another address, or off)",
                host,
                port,
                e,
            )
            return False
        threading.Thread(target=server.serve_forever, name="pybridge-metrics", daemon=True).start()
        log.info("metrics on http://%s/metrics", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return True

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class StateCollector:
    """Read at each scrape; one store read for the networks, one for the pools."""

    def __init__(self, services: MetricsSource):
        self.services = services

    def collect(self):
        s = self.services
        networks = s.views.networks()
        named = {n["id"]: n["name"] or n["id"][:12] for n in networks}

        def labels(nid: str) -> list[str]:
            return [named.get(nid, nid[:12]), nid[:12]]

        yield GaugeMetricFamily("pybridge_networks", "Networks pybridge holds", value=len(networks))
        endpoints = GaugeMetricFamily(
            "pybridge_endpoints", "Endpoints (containers) on each network", labels=["network", "network_id"]
        )
        for n in networks:
            endpoints.add_metric(labels(n["id"]), n["endpoints"])
        yield endpoints

        size = GaugeMetricFamily(
            "pybridge_pool_addresses",
            "Addresses each network's pool can hand out",
            labels=["network", "network_id", "subnet"],
        )
        used = GaugeMetricFamily(
            "pybridge_pool_addresses_used",
            "Addresses of each network's pool that are handed out (gateway included)",
            labels=["network", "network_id", "subnet"],
        )
        by_subnet: dict[str, list[dict]] = {}
        for pool in s.ipam.usage():
            by_subnet.setdefault(pool["subnet"], []).append(pool)
        for n in networks:
            for subnet in n["subnets"]:
                pools = by_subnet.get(subnet, [])
                if pools:
                    size.add_metric(labels(n["id"]) + [subnet], max(p["size"] for p in pools))
                    used.add_metric(labels(n["id"]) + [subnet], sum(p["used"] for p in pools))
        yield size
        yield used

        yield from self._dns(labels)

        fw = s.firewall.counters()
        yield CounterMetricFamily(
            "pybridge_firewall_changes", "Changes written to pybridge's firewall table", value=fw.changes
        )
        yield CounterMetricFamily(
            "pybridge_firewall_change_failures",
            "Changes to pybridge's firewall table that the kernel refused",
            value=fw.failures,
        )
        yield CounterMetricFamily(
            "pybridge_firewall_faults",
            "Faults in firewall work (a firewall tool killed by a signal, an unexpected "
            "error in pybridge's own code); doctor names the last one",
            value=fw.faults,
        )
        yield SummaryMetricFamily(
            "pybridge_firewall_change_duration_seconds",
            "Time the firewall changes took",
            count_value=fw.changes,
            sum_value=fw.seconds,
        )

        healed = CounterMetricFamily(
            "pybridge_self_heal",
            "Repairs pybridge made by itself, by kind "
            "(firewall: its table rewritten after drift; links_removed, leases_released, "
            "endpoints_dropped: left-overs cleared at start or by gc)",
            labels=["kind"],
        )
        kinds: dict[str, int] = {}
        for source in (s.doctor.healed, s.reconciler.healed):
            for kind, n in list(source.items()):
                kinds[kind] = kinds.get(kind, 0) + n
        for kind in ("firewall", "links_removed", "leases_released", "endpoints_dropped"):
            kinds.setdefault(kind, 0)
        for kind, n in sorted(kinds.items()):
            healed.add_metric([kind], n)
        yield healed

        yield from self._cluster()

        watcher = s.watcher
        yield CounterMetricFamily(
            "pybridge_docker_events_reconnects",
            "Times the Docker event stream (names for the DNS) was opened again after it failed",
            value=watcher.reconnects if watcher is not None else 0,
        )

    def _cluster(self):
        """Cluster mode only: whether etcd answers, resyncs, and the other hosts' containers
        programmed here per cluster network."""
        view = self.services.views.cluster()
        if not view.get("enabled"):
            return
        yield GaugeMetricFamily(
            "pybridge_cluster_etcd_reachable",
            "1 when etcd answered this host's last call",
            value=1 if view["etcd_reachable"] else 0,
        )
        yield CounterMetricFamily(
            "pybridge_cluster_resyncs",
            "Times this host wrote its keys to etcd again (at start, after etcd was away or lost them)",
            value=view["resyncs"],
        )
        yield CounterMetricFamily(
            "pybridge_cluster_refused_records",
            "Keys and records read from etcd that are not what pybridge writes, left out (each is logged, quoted)",
            value=view["refused_records"],
        )
        reserve = view.get("reserve", {})
        yield CounterMetricFamily(
            "pybridge_cluster_reserve_hits",
            "Addresses handed out from this host's reserve (claimed in etcd ahead: no round trip on the call)",
            value=reserve.get("hits", 0),
        )
        yield CounterMetricFamily(
            "pybridge_cluster_reserve_misses",
            "Address requests the reserve could not serve in time: claimed in etcd on the call",
            value=reserve.get("misses", 0),
        )
        remote = GaugeMetricFamily(
            "pybridge_cluster_remote_endpoints",
            "Other hosts' containers programmed on this host's VXLAN device, by cluster network",
            labels=["cluster"],
        )
        for n in view["networks"]:
            remote.add_metric([n["cluster"]], n["remote_endpoints"])
        yield remote

    def _dns(self, labels):
        queries = CounterMetricFamily(
            "pybridge_dns_queries",
            "DNS queries answered, by network and rcode",
            labels=["network", "network_id", "rcode"],
        )
        forwarded = CounterMetricFamily(
            "pybridge_dns_forwarded", "DNS queries forwarded upstream, by network", labels=["network", "network_id"]
        )
        failures = CounterMetricFamily(
            "pybridge_dns_forward_failures",
            "Forwarded DNS queries no upstream answered (or none was set), by network",
            labels=["network", "network_id"],
        )
        dns = self.services.dns
        if dns is not None:
            for nid, c in dns.server.counters().items():
                for rcode, n in sorted(c["answered"].items()):
                    queries.add_metric(labels(nid) + [rcode], n)
                forwarded.add_metric(labels(nid), c["forwarded"])
                failures.add_metric(labels(nid), c["forward_failures"])
        yield queries
        yield forwarded
        yield failures
