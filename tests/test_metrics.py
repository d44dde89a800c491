"""Prometheus metrics: the statistics at scrape time, summed over the worker processes, in text format."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from treq.testing import StubTreq
from twisted.web.resource import Resource

from balancer.config.load import parse_config
from balancer.control.controller import Controller
from balancer.metrics import BACKEND_FIGURES, SERVER_FIGURES, MetricsResource, metrics_registry
from balancer.root_service import BalancerService
from balancer.stats import SERVER_COUNTERS, server_report
from tests.support.scrapes import samples

CONFIG = b"""
[servers.web]
bind = "127.0.0.1:0"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:9001", "[::1]:9002"]
"""


def balancer_with_counters(base: int) -> BalancerService:
    """
    A balancer on L{CONFIG} whose every server and backend counter is set,
    each to a different number from C{base} on.
    """
    balancer = BalancerService(parse_config(CONFIG, "x"), MemoryReactorClock())
    server = balancer.server("web")
    figures = iter(range(base, base + 100))
    fields = [(server.counters, ("active_connections", *SERVER_COUNTERS))]
    fields += [(traffic, ("rx", "tx", "rx_second", "tx_second")) for traffic in server.traffic_counters()]
    fields += [(b.counters, ("total_connections", "active_connections", "refused_connections")) for b in server.pool]
    for counters, names in fields:
        for name in names:
            setattr(counters, name, next(figures))
    return balancer


class MetricsTests(SynchronousTestCase):
    """Every sample reflects the statistics at scrape time."""

    def setUp(self) -> None:
        config = parse_config(CONFIG, "x")
        self.balancer = BalancerService(config, MemoryReactorClock())
        self.control = Controller(self.balancer, config, "x", MemoryReactorClock())
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
        root.putChild(b"metrics", MetricsResource(metrics_registry(self.control)))
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


class SummedMetricsTests(SynchronousTestCase):
    """With other worker processes, every figure adds their latest reports to worker 0's own."""

    def setUp(self) -> None:
        self.own, self.other = balancer_with_counters(1), balancer_with_counters(1000)
        self.control = Controller(self.own, parse_config(CONFIG, "x"), "x", MemoryReactorClock())
        root = Resource()
        root.putChild(b"metrics", MetricsResource(metrics_registry(self.control)))
        self.treq = StubTreq(root)

    def scrape(self) -> dict[str, float]:
        response = self.successResultOf(self.treq.get("http://metrics.test/metrics"))
        return samples(self.successResultOf(response.text()))

    def test_everyFigureIsTheSumWithWorker0sLiveAndDiscovered(self) -> None:
        backend = self.other.server("web").pool.get("127.0.0.1:9001")
        assert backend is not None
        backend.live = backend.discovered = False
        report = server_report(self.other.server("web"))
        self.control.peers.add_source(lambda name: [report, report])
        found = self.scrape()
        expected = expected_samples(server_report(self.own.server("web")), report, copies=2)
        self.assertEqual({k: found[k] for k in expected}, expected)
        summed = {f"balancer_server_{suffix}" for suffix in SERVER_FIGURES}
        summed |= {f"balancer_backend_{suffix}" for suffix in BACKEND_FIGURES}
        self.assertEqual(len([k for k in found if k.split("{")[0] in summed]), len(expected))
        own = self.own.server("web").counters
        self.assertEqual(found['balancer_server_connections_total{server="web"}'],
                         own.total_connections + 2 * report["total_connections"])
        self.assertEqual(found['balancer_backend_live{host="127.0.0.1",port="9001",server="web"}'], 1.0)


def expected_samples(own: dict[str, Any], other: dict[str, Any], copies: int) -> dict[str, float]:
    """
    The samples of server "web" when worker 0 has C{own} and C{copies}
    workers report C{other}: each figure summed, backends' C{live} and
    C{discovered} from C{own}.
    """
    expected = {}
    for suffix, (_, _, key) in SERVER_FIGURES.items():
        expected[f'balancer_server_{suffix}{{server="web"}}'] = float(own[key] + copies * other[key])
    for mine, theirs in zip(own["backends"], other["backends"]):
        labels = f'{{host="{mine["host"]}",port="{mine["port"]}",server="web"}}'
        for suffix, (_, _, key) in BACKEND_FIGURES.items():
            flag = key in ("live", "discovered")
            value = mine["stats"][key] + (0 if flag else copies * theirs["stats"][key])
            expected[f"balancer_backend_{suffix}{labels}"] = float(value)
    return expected


class MetricsServiceTests(SynchronousTestCase):
    """[metrics] enabled adds a listener on [metrics] bind to the service tree."""

    def test_enabledListensAndLogsItsAddress(self) -> None:
        from balancer.tap import build_service

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        memory = MemoryReactorClock()
        config = parse_config(CONFIG + b'[metrics]\nenabled = true\nbind = "127.0.0.1:9284"\n', "x")
        build_service(config, memory).privilegedStartService()
        self.assertIn((9284, "127.0.0.1"), [(port, iface) for port, _, _, iface in memory.tcpServers])
        self.assertIn("0.0.0.0:9284", [e.get("address") for e in events if e.get("label") == "metrics"])

    def test_disabledDoesNotListen(self) -> None:
        from balancer.tap import build_service

        memory = MemoryReactorClock()
        build_service(parse_config(CONFIG, "x"), memory).privilegedStartService()
        self.assertNotIn(9284, [port for port, _, _, _ in memory.tcpServers])
