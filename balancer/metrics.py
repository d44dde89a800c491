"""
Prometheus metrics (C{[metrics] enabled/bind}): the same figures as the
statistics, in Prometheus text format at C{/metrics}.

A custom collector reads the statistics through the control interface when
scraped, in the reactor thread, so nothing is copied on the data path.  With
C{[defaults] workers} > 1 they are summed over the worker processes
(L{balancer.control.views.ServiceView.statistics}); a backend's C{live} and C{discovered} are worker 0's.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.application.service import IService
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from balancer.config.schema import MetricsConfig
from balancer.control.interface import IControl
from balancer.listening import ListeningService

_SERVER_LABELS = ["server"]
_BACKEND_LABELS = ["server", "host", "port"]

#: Each server family: its type, help text and key in the statistics document.
SERVER_FIGURES = {
    "active_connections": (GaugeMetricFamily, "Client connections open now", "active_connections"),
    "connections_total": (CounterMetricFamily, "Client connections accepted", "total_connections"),
    "rx_bytes_total": (CounterMetricFamily, "Bytes received from backends", "rx_total"),
    "tx_bytes_total": (CounterMetricFamily, "Bytes sent to backends", "tx_total"),
    "rx_bytes_per_second": (GaugeMetricFamily, "Bytes from backends over the last second", "rx_second"),
    "tx_bytes_per_second": (GaugeMetricFamily, "Bytes to backends over the last second", "tx_second"),
    "over_limit_total": (CounterMetricFamily, "Clients closed at max_connections", "over_limit"),
    "no_backend_total": (CounterMetricFamily, "Clients closed because no backend took them", "no_backend"),
    "denied_total": (CounterMetricFamily, "Clients refused by access rules", "denied"),
    "tls_failures_total": (CounterMetricFamily, "Client TLS handshakes that failed or timed out", "tls_failures"),
    "sni_failures_total": (CounterMetricFamily, "Clients closed before SNI routing", "sni_failures"),
}
#: Each backend family: its type, help text and key in a backend's C{stats}.
BACKEND_FIGURES = {
    "live": (GaugeMetricFamily, "1 when the health check passes", "live"),
    "discovered": (GaugeMetricFamily, "1 when discovery lists the backend", "discovered"),
    "active_connections": (GaugeMetricFamily, "Connections open now", "active_connections"),
    "connections_total": (CounterMetricFamily, "Connections made", "total_connections"),
    "refused_connections_total": (CounterMetricFamily, "Connects refused or timed out", "refused_connections"),
    "rx_bytes_total": (CounterMetricFamily, "Bytes received from the backend", "rx"),
    "tx_bytes_total": (CounterMetricFamily, "Bytes sent to the backend", "tx"),
    "rx_bytes_per_second": (GaugeMetricFamily, "Bytes from the backend over the last second", "rx_second"),
    "tx_bytes_per_second": (GaugeMetricFamily, "Bytes to the backend over the last second", "tx_second"),
}


class BalancerCollector:
    """Collects every server's statistics (its view's, L{IControl.services}) at scrape time."""

    def __init__(self, control: IControl) -> None:
        self._control = control

    def collect(self) -> Iterator[Metric]:
        """Yield one family per figure, a sample per server or backend."""
        documents = {view.name: view.statistics for view in self._control.services()}
        for suffix, (family, text, key) in SERVER_FIGURES.items():
            metric = family(f"balancer_server_{suffix}", text, labels=_SERVER_LABELS)
            for name, document in documents.items():
                metric.add_metric([name], int(document[key]))
            yield metric
        for suffix, (family, text, key) in BACKEND_FIGURES.items():
            metric = family(f"balancer_backend_{suffix}", text, labels=_BACKEND_LABELS)
            for name, document in documents.items():
                for backend in document["backends"]:
                    metric.add_metric([name, backend["host"], backend["port"]], int(backend["stats"][key]))
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


def metrics_registry(control: IControl) -> CollectorRegistry:
    """A registry holding only the balancer's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BalancerCollector(control))
    return registry


class MetricsService(ListeningService):
    """Listens on C{[metrics] bind} with the metrics site."""

    label = "metrics"

    def __init__(self, config: MetricsConfig, site: Site, reactor: Any) -> None:
        super().__init__()
        self._config = config
        self._site = site
        self._reactor = reactor

    def bind(self) -> Any:
        """Listen on C{[metrics] bind}."""
        bind = self._config.bind
        return self._reactor.listenTCP(bind.port, self._site, interface=bind.listen_host)


def metrics_service(config: MetricsConfig, control: IControl, reactor: Any) -> IService:
    """Listen on C{[metrics] bind} and serve C{/metrics}."""
    root = Resource()
    root.putChild(b"metrics", MetricsResource(metrics_registry(control)))
    site = Site(root)
    site.noisy = False
    return MetricsService(config, site, reactor)
