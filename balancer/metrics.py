"""
Prometheus metrics (C{[metrics] enabled/bind}): the statistics, the
backends' state, health checks and discoveries, histograms of finished
connections, the build and the process, in Prometheus text format at
C{/metrics} (every family is described in docs/metrics.md).

A custom collector reads the frozen views of the control interface when
scraped, in the reactor thread, so nothing is copied on the data path.  With
C{[defaults] workers} > 1 the statistics are summed over the worker processes
(L{balancer.control.views.ServiceView.statistics}); a backend's C{live},
C{discovered}, health checks, the discoveries, the histograms and the
C{process_*} figures are worker 0's.
"""

from __future__ import annotations

import platform
from typing import Any, Iterator

import twisted
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from balancer import __version__
from balancer.backends import ACTIVE, DRAIN, MAINTENANCE
from balancer.config.schema import MetricsConfig
from balancer.control.interface import IControl
from balancer.control.views import ClusterView, ServiceView
from balancer.histograms import CONNECT_BUCKETS, DURATION_BUCKETS, ConnectionHistograms, Histogram
from balancer.listening import ListeningService
from balancer.proxy.finished import FinishedConnections

_SERVER_LABELS = ["server"]
_BACKEND_LABELS = ["server", "host", "port"]

#: A backend's admin states, each a sample of C{balancer_backend_admin_state}.
ADMIN_STATES = (ACTIVE, DRAIN, MAINTENANCE)

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
    """
    Collects, at scrape time, the build, every server's statistics and
    backends (its view's, L{IControl.services}), and the histograms of
    finished connections.
    """

    def __init__(self, control: IControl, histograms: ConnectionHistograms) -> None:
        self._control = control
        self._histograms = histograms

    def collect(self) -> Iterator[Metric]:
        """Yield one family per figure, a sample per server or backend."""
        views = self._control.services()
        yield build_info()
        yield from statistics(views)
        yield from backend_states(views)
        yield from health_checks(views)
        yield from discoveries(views)
        yield from cluster_families(self._control.cluster())
        names = [view.name for view in views]
        self._histograms.keep_only(names)
        yield histogram_family(
            "balancer_server_connect_seconds", "Time to connect to the backend, per finished connection that reached one",
            names, self._histograms.connect, CONNECT_BUCKETS,
        )
        yield histogram_family(
            "balancer_server_connection_duration_seconds", "Finished client connections, from accept to the last close",
            names, self._histograms.duration, DURATION_BUCKETS,
        )


def build_info() -> Metric:
    """C{balancer_build_info}: 1, labelled with the versions of the balancer, Python and Twisted."""
    metric = GaugeMetricFamily(
        "balancer_build_info", "The versions the balancer runs on", labels=["version", "python", "twisted"]
    )
    metric.add_metric([__version__, platform.python_version(), twisted.__version__], 1)
    return metric


def cluster_families(view: ClusterView | None) -> Iterator[Metric]:
    """With C{[cluster]}: whether etcd answers, the revision applied, the members, the shared changes not applied."""
    if view is None:
        return
    labels = ["cluster", "instance"]
    values = [view.name, view.instance]
    figures = (
        ("balancer_cluster_available", "1 while the cluster's etcd answers (API changes answer 503 when 0)",
         int(view.available)),
        ("balancer_cluster_applied_revision", "The etcd revision whose shared changes this balancer has applied",
         view.revision),
        ("balancer_cluster_members", "The members registered in the cluster now", len(view.members)),
        ("balancer_cluster_unapplied_changes", "Shared changes this balancer could not apply (GET /v1/cluster)",
         len(view.errors)),
    )
    for name, documentation, value in figures:
        metric = GaugeMetricFamily(name, documentation, labels=labels)
        metric.add_metric(values, value)
        yield metric


def statistics(views: list[ServiceView]) -> Iterator[Metric]:
    """The figures of L{SERVER_FIGURES} and L{BACKEND_FIGURES}, summed over the worker processes."""
    documents = {view.name: view.statistics for view in views}
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


def backend_states(views: list[ServiceView]) -> Iterator[Metric]:
    """Each backend's admin state (one sample per state, 1 for its own) and its effective weight."""
    states = GaugeMetricFamily(
        "balancer_backend_admin_state", "1 for the admin state the backend is in, 0 for the others",
        labels=[*_BACKEND_LABELS, "state"],
    )
    weight = GaugeMetricFamily(
        "balancer_backend_weight", "The weight the strategies use, runtime override included", labels=_BACKEND_LABELS
    )
    for view in views:
        for entry in view.pool:
            labels = [view.name, entry.spec.host, str(entry.spec.port)]
            for state in ADMIN_STATES:
                states.add_metric([*labels, state], int(entry.admin_state == state))
            weight.add_metric(labels, entry.spec.weight)
    yield states
    yield weight


def health_checks(views: list[ServiceView]) -> Iterator[Metric]:
    """What worker 0's health checks found, for each backend checked at least once."""
    up = GaugeMetricFamily("balancer_backend_check_up", "1 when the latest health check passed", labels=_BACKEND_LABELS)
    duration = GaugeMetricFamily(
        "balancer_backend_check_duration_seconds", "How long the latest health check took", labels=_BACKEND_LABELS
    )
    at = GaugeMetricFamily(
        "balancer_backend_check_timestamp_seconds", "When the latest health check ended (Unix time)",
        labels=_BACKEND_LABELS,
    )
    checks = CounterMetricFamily("balancer_backend_checks_total", "Health checks ended", labels=_BACKEND_LABELS)
    failures = CounterMetricFamily(
        "balancer_backend_check_failures_total", "Health checks that did not pass (failed, timed out, no verdict)",
        labels=_BACKEND_LABELS,
    )
    for view in views:
        for entry in view.pool:
            result = entry.check
            if result is None:
                continue
            labels = [view.name, entry.spec.host, str(entry.spec.port)]
            up.add_metric(labels, int(result.passed))
            duration.add_metric(labels, result.duration)
            at.add_metric(labels, result.finished_at)
            checks.add_metric(labels, result.checks)
            failures.add_metric(labels, result.failures)
    yield from (up, duration, at, checks, failures)


def discoveries(views: list[ServiceView]) -> Iterator[Metric]:
    """The fetches of each running server's discovery (worker 0's)."""
    labels = [*_SERVER_LABELS, "kind"]
    fetches = CounterMetricFamily("balancer_discovery_fetches_total", "Discovery fetches started", labels=labels)
    failures = CounterMetricFamily(
        "balancer_discovery_failures_total", "Discovery fetches that failed (error, timeout, bad answer)", labels=labels
    )
    success = GaugeMetricFamily(
        "balancer_discovery_last_success_timestamp_seconds",
        "When the latest good discovery fetch ended (Unix time; 0 before any)", labels=labels,
    )
    for view in views:
        status = view.discovery
        if status is None:
            continue
        names = [view.name, status.kind]
        fetches.add_metric(names, status.fetches)
        failures.add_metric(names, status.failures)
        success.add_metric(names, status.last_success or 0.0)
    yield from (fetches, failures, success)


def histogram_family(
    name: str, text: str, servers: list[str], histograms: dict[str, Histogram], bounds: tuple[float, ...]
) -> Metric:
    """
    A histogram family with a histogram per server of C{servers}: its own in
    C{histograms}, or an empty one with C{bounds} (so that its series are
    there, at 0, before its first connection ends).
    """
    metric = HistogramMetricFamily(name, text, labels=_SERVER_LABELS)
    for server in servers:
        histogram = histograms.get(server) or Histogram(bounds)
        metric.add_metric([server], list(histogram.cumulative()), histogram.sum)
    return metric


class MetricsResource(Resource):
    """C{GET /metrics}: the registry in Prometheus text format, rendered in the reactor thread."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self._registry)


def metrics_registry(control: IControl, histograms: ConnectionHistograms | None = None) -> CollectorRegistry:
    """
    A registry holding the balancer's collector (its histograms are
    C{histograms}'s, none if not given) and the standard C{process_*}
    collector of this process.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BalancerCollector(control, histograms if histograms is not None else ConnectionHistograms()))
    ProcessCollector(registry=registry)
    return registry


class MetricsService(ListeningService):
    """
    Listens on C{[metrics] bind} with the metrics site; while running, its
    histograms count the connections C{finished} publishes.
    """

    label = "metrics"

    def __init__(
        self,
        config: MetricsConfig,
        site: Site,
        reactor: Any,
        histograms: ConnectionHistograms | None = None,
        finished: FinishedConnections | None = None,
    ) -> None:
        super().__init__()
        self._config = config
        self._site = site
        self._reactor = reactor
        self._histograms = histograms if histograms is not None else ConnectionHistograms()
        self._finished = finished

    def startService(self) -> None:
        """Listen (as L{ListeningService} does) and count finished connections."""
        super().startService()
        if self._finished is not None:
            self._histograms.follow(self._finished)

    def stopService(self) -> Deferred[None]:
        """Stop counting finished connections and close the listener."""
        self._histograms.unfollow()
        return super().stopService()

    def bind(self) -> Any:
        """Listen on C{[metrics] bind}."""
        bind = self._config.bind
        return self._reactor.listenTCP(bind.port, self._site, interface=bind.listen_host)


def metrics_service(
    config: MetricsConfig, control: IControl, reactor: Any, finished: FinishedConnections | None = None
) -> IService:
    """
    Listen on C{[metrics] bind} and serve C{/metrics}, with histograms of
    the connections C{finished} publishes (the balancer's).
    """
    histograms = ConnectionHistograms()
    root = Resource()
    root.putChild(b"metrics", MetricsResource(metrics_registry(control, histograms)))
    site = Site(root)
    site.noisy = False
    return MetricsService(config, site, reactor, histograms, finished)
