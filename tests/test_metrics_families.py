"""
The families of the metrics beyond the summed statistics (docs/metrics.md):
the build, the process, each backend's admin state, weight and health
checks, each server's discovery, and the histograms of finished connections.
"""

from __future__ import annotations

import platform
from typing import Any

import twisted
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from zope.interface import implementer

from balancer import __version__
from balancer.config.load import parse_config
from balancer.control.controller import Controller
from balancer.health import HealthMonitor, IHealthCheck
from balancer.histograms import CONNECT_BUCKETS, DURATION_BUCKETS, ConnectionHistograms
from balancer.metrics import MetricsResource, metrics_registry, metrics_service
from balancer.proxy.finished import BACKEND_CLOSED, NO_BACKEND, FinishedConnection, FinishedConnections
from balancer.root_service import BalancerService
from tests.support.scrapes import samples

CONFIG = b"""
[servers.web]
bind = "127.0.0.1:0"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:9001", "127.0.0.1:9002"]
[servers.web.healthcheck]
kind = "ping"
interval = "10s"
timeout = "1s"
fails = 1
passes = 1
"""

ONE = 'host="127.0.0.1",port="9001",server="web"'
TWO = 'host="127.0.0.1",port="9002",server="web"'


@implementer(IHealthCheck)
class SlowVerdicts:
    """A check answering after C{seconds} on C{clock}: pass for the backends of C{passing}, fail for the others."""

    def __init__(self, clock: MemoryReactorClock, seconds: float, passing: set[int]) -> None:
        self.clock = clock
        self.seconds = seconds
        self.passing = passing

    def check(self, host: str, port: int) -> Deferred[bool]:
        answer: Deferred[bool] = Deferred()
        self.clock.callLater(self.seconds, answer.callback, port in self.passing)
        return answer


def finished(server: str, connect: float | None, duration: float) -> FinishedConnection:
    """A finished connection of C{server}: C{connect} seconds to connect (None: no backend), C{duration} in all."""
    return FinishedConnection(
        server=server, protocol="tcp", client="127.0.0.1:50000",
        backend="127.0.0.1:9001" if connect is not None else None, started=100.0,
        connect_seconds=connect, duration_seconds=duration, rx=10, tx=20,
        reason=BACKEND_CLOSED if connect is not None else NO_BACKEND,
    )


class FamiliesTests(SynchronousTestCase):
    """A started balancer (on a memory reactor) scraped through L{MetricsResource}."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(1000)
        config = parse_config(CONFIG, "x")
        self.balancer = BalancerService(config, self.clock)
        self.control = Controller(self.balancer, config, "x", self.clock)
        self.histograms = ConnectionHistograms()
        root = Resource()
        root.putChild(b"metrics", MetricsResource(metrics_registry(self.control, self.histograms)))
        self.treq = StubTreq(root)

    def start(self, passing: set[int]) -> None:
        """Start the balancer with health checks that take 0.25s and pass for the ports of C{passing}."""
        self.balancer.startService()
        self.addCleanup(self.balancer.stopService)
        server = self.balancer.server("web")
        assert server.health is not None
        server.health.stop()
        server.health = HealthMonitor(server.pool, server.config.healthcheck, self.clock,
                                      SlowVerdicts(self.clock, 0.25, passing))
        server.health.start()
        self.clock.advance(0)

    def scrape(self) -> dict[str, float]:
        response = self.successResultOf(self.treq.get("http://metrics.test/metrics"))
        return samples(self.successResultOf(response.text()))

    def test_buildInfo(self) -> None:
        """balancer_build_info is 1, labelled with the balancer's, Python's and Twisted's versions."""
        labels = f'python="{platform.python_version()}",twisted="{twisted.__version__}",version="{__version__}"'
        self.assertEqual(self.scrape()[f"balancer_build_info{{{labels}}}"], 1.0)

    def test_processFamilies(self) -> None:
        """The standard process collector's families describe this process."""
        found = self.scrape()
        self.assertGreater(found["process_resident_memory_bytes"], 1e6)
        self.assertGreater(found["process_open_fds"], 0)
        self.assertGreater(found["process_cpu_seconds_total"], 0)
        self.assertGreater(found["process_start_time_seconds"], 1.5e9)

    def test_adminStateOnePerState(self) -> None:
        """balancer_backend_admin_state has a sample per state, 1 for the backend's own."""
        self.successResultOf(self.control.set_backend_state("127.0.0.1:9001", "drain"))
        self.successResultOf(self.control.set_backend_state("127.0.0.1:9002", "maintenance"))
        found = self.scrape()
        states = {
            (backend, state): found[f'balancer_backend_admin_state{{{backend},state="{state}"}}']
            for backend in (ONE, TWO) for state in ("active", "drain", "maintenance")
        }
        self.assertEqual(states, {
            (ONE, "active"): 0.0, (ONE, "drain"): 1.0, (ONE, "maintenance"): 0.0,
            (TWO, "active"): 0.0, (TWO, "drain"): 0.0, (TWO, "maintenance"): 1.0,
        })
        self.successResultOf(self.control.set_backend_state("127.0.0.1:9001", None))
        self.assertEqual(self.scrape()[f'balancer_backend_admin_state{{{ONE},state="active"}}'], 1.0)

    def test_weightFollowsOverrides(self) -> None:
        """balancer_backend_weight is the effective weight: the override's while one is set."""
        self.assertEqual(self.scrape()[f"balancer_backend_weight{{{ONE}}}"], 1.0)
        self.successResultOf(self.control.set_override("127.0.0.1:9001", {"weight": 7}))
        found = self.scrape()
        self.assertEqual((found[f"balancer_backend_weight{{{ONE}}}"], found[f"balancer_backend_weight{{{TWO}}}"]),
                         (7.0, 1.0))
        self.successResultOf(self.control.set_override("127.0.0.1:9001", {"weight": None}))
        self.assertEqual(self.scrape()[f"balancer_backend_weight{{{ONE}}}"], 1.0)

    def test_healthChecks(self) -> None:
        """
        Once checked, each backend has its latest check's result, duration
        and end, and the counts of checks and failures; none before.
        """
        self.start(passing={9001})
        self.assertNotIn(f"balancer_backend_check_up{{{ONE}}}", self.scrape())
        self.clock.pump([0.25] * 45)
        found = self.scrape()
        figures = {
            backend: [found[f"balancer_backend_{name}{{{backend}}}"] for name in
                      ("check_up", "check_duration_seconds", "check_timestamp_seconds", "checks_total",
                       "check_failures_total")]
            for backend in (ONE, TWO)
        }
        self.assertEqual(figures, {ONE: [1.0, 0.25, 1010.25, 2.0, 0.0], TWO: [0.0, 0.25, 1005.25, 1.0, 1.0]})
        self.assertEqual((found[f"balancer_backend_live{{{ONE}}}"], found[f"balancer_backend_live{{{TWO}}}"]),
                         (1.0, 0.0))

    def test_discovery(self) -> None:
        """A running discovery's fetches, failures and the time of its latest good fetch (0 before any)."""
        self.assertNotIn('balancer_discovery_fetches_total{kind="static",server="web"}', self.scrape())
        self.start(passing=set())
        found = self.scrape()
        labels = '{kind="static",server="web"}'
        self.assertEqual(
            [found[f"balancer_discovery_{name}{labels}"]
             for name in ("fetches_total", "failures_total", "last_success_timestamp_seconds")],
            [1.0, 0.0, 1000.0],
        )

    def test_histogramsPerServer(self) -> None:
        """
        Each finished connection counts in its server's duration histogram,
        and in its connect-time histogram when it reached a backend.
        """
        for connection in (finished("web", 0.0004, 0.5), finished("web", 0.03, 20.0), finished("web", None, 0.001)):
            self.histograms.count(connection)
        found = self.scrape()
        connect = {le: found[f'balancer_server_connect_seconds_bucket{{le="{le}",server="web"}}']
                   for le in ("0.0005", "0.025", "0.05", "+Inf")}
        self.assertEqual(connect, {"0.0005": 1.0, "0.025": 1.0, "0.05": 2.0, "+Inf": 2.0})
        self.assertEqual(found['balancer_server_connect_seconds_count{server="web"}'], 2.0)
        self.assertAlmostEqual(found['balancer_server_connect_seconds_sum{server="web"}'], 0.0304)
        duration = {le: found[f'balancer_server_connection_duration_seconds_bucket{{le="{le}",server="web"}}']
                    for le in ("0.005", "0.5", "10.0", "30.0", "+Inf")}
        self.assertEqual(duration, {"0.005": 1.0, "0.5": 2.0, "10.0": 2.0, "30.0": 3.0, "+Inf": 3.0})
        self.assertEqual(found['balancer_server_connection_duration_seconds_sum{server="web"}'], 20.501)
        buckets = [k for k in found if k.startswith("balancer_server_connect_seconds_bucket")]
        self.assertEqual(len(buckets), len(CONNECT_BUCKETS) + 1)

    def test_histogramsAreThereAtZeroBeforeTheFirstConnection(self) -> None:
        """Every running server has its histograms' series from the start, each bucket at 0."""
        found = self.scrape()
        for family, bounds in (("connect_seconds", CONNECT_BUCKETS), ("connection_duration_seconds", DURATION_BUCKETS)):
            series = {k: v for k, v in found.items() if k.startswith(f"balancer_server_{family}_")}
            self.assertEqual(len(series), len(bounds) + 3, family)
            self.assertEqual(set(series.values()), {0.0})
            self.assertIn(f'balancer_server_{family}_bucket{{le="+Inf",server="web"}}', series)

    def test_histogramsOfARemovedServerAreDropped(self) -> None:
        """A server no longer running has no histograms left (a server of that name starts again from 0)."""
        self.histograms.count(finished("gone", 0.001, 1.0))
        self.histograms.count(finished("web", 0.001, 1.0))
        found = self.scrape()
        self.assertNotIn('balancer_server_connection_duration_seconds_count{server="gone"}', found)
        self.assertEqual(found['balancer_server_connection_duration_seconds_count{server="web"}'], 1.0)
        self.assertEqual(list(self.histograms.duration), ["web"])


class FollowingTests(SynchronousTestCase):
    """The metrics service counts the balancer's finished connections while it runs."""

    def test_countsWhatIsPublishedWhileRunning(self) -> None:
        clock = MemoryReactorClock()
        config = parse_config(CONFIG + b'[metrics]\nenabled = true\nbind = "127.0.0.1:0"\n', "x")
        balancer = BalancerService(config, clock)
        control = Controller(balancer, config, "x", clock)
        publisher = FinishedConnections()
        service: Any = metrics_service(config.metrics, control, clock, publisher)
        publisher.publish(finished("web", 0.001, 1.0))
        service.startService()
        publisher.publish(finished("web", 0.001, 2.0))
        publisher.publish(finished("web", None, 0.5))
        resource = clock.tcpServers[0][1].resource.children[b"metrics"]
        treq = StubTreq(resource)
        body = self.successResultOf(self.successResultOf(treq.get("http://metrics.test/")).text())
        self.assertEqual(samples(body)['balancer_server_connection_duration_seconds_count{server="web"}'], 2.0)
        self.successResultOf(service.stopService())
        publisher.publish(finished("web", 0.001, 2.0))
        body = self.successResultOf(self.successResultOf(treq.get("http://metrics.test/")).text())
        self.assertEqual(samples(body)['balancer_server_connection_duration_seconds_count{server="web"}'], 2.0)

    def test_buildServiceFollowsTheBalancersPublisher(self) -> None:
        """The service tree's metrics count what the balancer's C{finished} publishes."""
        from balancer.tap import build_service

        clock = MemoryReactorClock()
        config = parse_config(CONFIG + b'[metrics]\nenabled = true\nbind = "127.0.0.1:0"\n', "x")
        root = build_service(config, clock)
        root.startService()
        self.addCleanup(root.stopService)
        balancer = root.getServiceNamed("balancer")
        balancer.finished.publish(finished("web", 0.002, 3.0))
        sites = [factory for _, factory, _, _ in clock.tcpServers if hasattr(factory, "resource")]
        treq = StubTreq(sites[-1].resource.children[b"metrics"])
        body = self.successResultOf(self.successResultOf(treq.get("http://metrics.test/")).text())
        self.assertEqual(samples(body)['balancer_server_connect_seconds_count{server="web"}'], 1.0)


class HistogramTests(SynchronousTestCase):
    """L{balancer.histograms}: Prometheus' buckets (an observation on a bound counts in that bucket)."""

    def test_boundsAreInclusive(self) -> None:
        histograms = ConnectionHistograms()
        histograms.count(finished("web", CONNECT_BUCKETS[0], DURATION_BUCKETS[-1]))
        histograms.count(finished("web", 99.0, 5000.0))
        connect = dict(histograms.connect["web"].cumulative())
        duration = dict(histograms.duration["web"].cumulative())
        self.assertEqual((connect["0.0005"], connect["10.0"], connect["+Inf"]), (1, 1, 2))
        self.assertEqual((duration["900.0"], duration["3600.0"], duration["+Inf"]), (0, 1, 2))
        self.assertEqual(histograms.duration["web"].count, 2)
