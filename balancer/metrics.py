"""
Prometheus metrics (C{[metrics] enabled/bind}): the same figures as the
statistics, in Prometheus text format at C{/metrics}.

A custom collector reads the live counters when scraped, in the reactor
thread, so nothing is copied on the data path.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.application.internet import TCPServer
from twisted.application.service import IService
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from balancer.config.schema import MetricsConfig
from balancer.service import BalancerService

_SERVER_LABELS = ["server"]
_BACKEND_LABELS = ["server", "host", "port"]


class BalancerCollector:
    """Collects server and backend counters of a L{BalancerService} at scrape time."""

    def __init__(self, balancer: BalancerService) -> None:
        self._balancer = balancer

    def collect(self) -> Iterator[Metric]:
        """Yield one family per figure, a sample per server or backend."""
        server_figures = {
            "active_connections": (GaugeMetricFamily, "Client connections open now", lambda s: s.counters.active_connections),
            "connections_total": (CounterMetricFamily, "Client connections accepted", lambda s: s.counters.total_connections),
            "rx_bytes_total": (CounterMetricFamily, "Bytes received from backends", lambda s: s.counters.traffic.rx),
            "tx_bytes_total": (CounterMetricFamily, "Bytes sent to backends", lambda s: s.counters.traffic.tx),
            "rx_bytes_per_second": (GaugeMetricFamily, "Bytes from backends over the last second", lambda s: s.counters.traffic.rx_second),
            "tx_bytes_per_second": (GaugeMetricFamily, "Bytes to backends over the last second", lambda s: s.counters.traffic.tx_second),
            "over_limit_total": (CounterMetricFamily, "Clients closed at max_connections", lambda s: s.counters.over_limit),
            "no_backend_total": (CounterMetricFamily, "Clients closed because no backend took them", lambda s: s.counters.no_backend),
            "denied_total": (CounterMetricFamily, "Clients refused by access rules", lambda s: s.counters.denied),
            "tls_failures_total": (CounterMetricFamily, "Client TLS handshakes that failed or timed out", lambda s: s.counters.tls_failures),
            "sni_failures_total": (CounterMetricFamily, "Clients closed before SNI routing", lambda s: s.counters.sni_failures),
        }
        backend_figures = {
            "live": (GaugeMetricFamily, "1 when the health check passes", lambda b: int(b.live)),
            "discovered": (GaugeMetricFamily, "1 when discovery lists the backend", lambda b: int(b.discovered)),
            "active_connections": (GaugeMetricFamily, "Connections open now", lambda b: b.counters.active_connections),
            "connections_total": (CounterMetricFamily, "Connections made", lambda b: b.counters.total_connections),
            "refused_connections_total": (CounterMetricFamily, "Connects refused or timed out", lambda b: b.counters.refused_connections),
            "rx_bytes_total": (CounterMetricFamily, "Bytes received from the backend", lambda b: b.counters.traffic.rx),
            "tx_bytes_total": (CounterMetricFamily, "Bytes sent to the backend", lambda b: b.counters.traffic.tx),
            "rx_bytes_per_second": (GaugeMetricFamily, "Bytes from the backend over the last second", lambda b: b.counters.traffic.rx_second),
            "tx_bytes_per_second": (GaugeMetricFamily, "Bytes to the backend over the last second", lambda b: b.counters.traffic.tx_second),
        }
        servers = self._balancer.servers()
        for suffix, (family, text, read) in server_figures.items():
            metric = family(f"balancer_server_{suffix}", text, labels=_SERVER_LABELS)
            for server in servers:
                metric.add_metric([server.name], read(server))
            yield metric
        for suffix, (family, text, read) in backend_figures.items():
            metric = family(f"balancer_backend_{suffix}", text, labels=_BACKEND_LABELS)
            for server in servers:
                for backend in server.pool:
                    metric.add_metric([server.name, backend.host, str(backend.port)], read(backend))
            yield metric


class MetricsResource(Resource):
    """C{GET /metrics}: the registry in Prometheus text format, rendered in the reactor thread."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self._registry)


def metrics_registry(balancer: BalancerService) -> CollectorRegistry:
    """A registry holding only the balancer's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BalancerCollector(balancer))  # type: ignore[arg-type]
    return registry


def metrics_service(config: MetricsConfig, balancer: BalancerService, reactor: Any) -> IService:
    """Listen on C{[metrics] bind} and serve C{/metrics}."""
    root = Resource()
    root.putChild(b"metrics", MetricsResource(metrics_registry(balancer)))
    site = Site(root)
    site.noisy = False
    return TCPServer(config.bind.port, site, interface=config.bind.listen_host, reactor=reactor)
