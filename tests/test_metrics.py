"""Prometheus metrics: the live counters, scraped in text format."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from treq.testing import StubTreq
from twisted.web.resource import Resource

from balancer.config.load import parse_config
from balancer.metrics import MetricsResource, metrics_registry
from balancer.service import BalancerService

CONFIG = b"""
[servers.web]
bind = "127.0.0.1:0"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:9001", "[::1]:9002"]
"""


class MetricsTests(SynchronousTestCase):
    """Every sample reflects the counters at scrape time."""

    def setUp(self) -> None:
        self.balancer = BalancerService(parse_config(CONFIG, "x"), MemoryReactorClock())
        server = self.balancer.server("web")
        server.counters.traffic.rx = 1234
        server.counters.over_limit = 2
        server.counters.tls_failures = 4
        server.counters.sni_failures = 5
        backend = server.pool.get("127.0.0.1:9001")
        assert backend is not None
        backend.counters.refused_connections = 3
        backend.live = False
        root = Resource()
        root.putChild(b"metrics", MetricsResource(metrics_registry(self.balancer)))
        self.treq = StubTreq(root)

    def scrape(self) -> tuple[str, str]:
        response = self.successResultOf(self.treq.get("http://metrics.test/metrics"))
        body = self.successResultOf(response.text())
        return response.headers.getRawHeaders("content-type")[0], body

    def test_serverAndBackendSamples(self) -> None:
        content_type, body = self.scrape()
        self.assertTrue(content_type.startswith("text/plain"))
        lines = set(body.splitlines())
        self.assertIn('balancer_server_rx_bytes_total{server="web"} 1234.0', lines)
        self.assertIn('balancer_server_over_limit_total{server="web"} 2.0', lines)
        self.assertIn('balancer_server_tls_failures_total{server="web"} 4.0', lines)
        self.assertIn('balancer_server_sni_failures_total{server="web"} 5.0', lines)
        self.assertIn('balancer_backend_refused_connections_total{host="127.0.0.1",port="9001",server="web"} 3.0', lines)
        self.assertIn('balancer_backend_live{host="127.0.0.1",port="9001",server="web"} 0.0', lines)
        self.assertIn('balancer_backend_live{host="::1",port="9002",server="web"} 1.0', lines)

    def test_scrapeSeesLaterChanges(self) -> None:
        self.balancer.server("web").counters.active_connections = 7
        _, body = self.scrape()
        self.assertIn('balancer_server_active_connections{server="web"} 7.0', body.splitlines())


class MetricsServiceTests(SynchronousTestCase):
    """[metrics] enabled adds a listener on [metrics] bind to the service tree."""

    def test_enabledListens(self) -> None:
        from balancer.tap import build_service

        memory = MemoryReactorClock()
        config = parse_config(CONFIG + b'[metrics]\nenabled = true\nbind = "127.0.0.1:9284"\n', "x")
        build_service(config, memory).privilegedStartService()
        self.assertIn((9284, "127.0.0.1"), [(port, iface) for port, _, _, iface in memory.tcpServers])

    def test_disabledDoesNotListen(self) -> None:
        from balancer.tap import build_service

        memory = MemoryReactorClock()
        build_service(parse_config(CONFIG, "x"), memory).privilegedStartService()
        self.assertNotIn(9284, [port for port, _, _, _ in memory.tcpServers])
