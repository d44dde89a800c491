"""
Statistics (L{balancer.stats}) and a server's gobetween stats document:
bytes counted where they move, rates driven by the injected clock.
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from balancer.stats import RateClock, Traffic
from tests.support.relays import accept, connect, fail, make_server, relayed


class TrafficTests(SynchronousTestCase):
    """A traffic counter's rate is what moved during the last period."""

    def test_rateIsBytesSincePreviousTick(self) -> None:
        traffic = Traffic()
        traffic.rx, traffic.tx = 1000, 30
        traffic.tick()
        self.assertEqual((traffic.rx_second, traffic.tx_second), (1000, 30))
        traffic.rx += 500
        traffic.tick()
        self.assertEqual((traffic.rx_second, traffic.tx_second), (500, 0))
        self.assertEqual((traffic.rx, traffic.tx), (1500, 30))

    def test_longerPeriodIsAveraged(self) -> None:
        traffic = Traffic(rx=3000, tx=90)
        traffic.tick(3)
        self.assertEqual((traffic.rx_second, traffic.tx_second), (1000, 30))


class RateClockTests(SynchronousTestCase):
    """The rate clock ticks registered counters once a second of the injected clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.rates = RateClock(self.clock)
        self.traffic = Traffic()
        self.rates.add(lambda: [self.traffic])
        self.rates.start()

    def test_firstRatesOneSecondAfterStart(self) -> None:
        self.traffic.rx = 4096
        self.clock.advance(0.5)
        self.assertEqual(self.traffic.rx_second, 0)
        self.clock.advance(0.5)
        self.assertEqual(self.traffic.rx_second, 4096)
        self.clock.advance(1)
        self.assertEqual(self.traffic.rx_second, 0)

    def test_lateTickAveragesOverTheSecondsItCovers(self) -> None:
        self.traffic.tx = 6000
        self.clock.advance(3)
        self.assertEqual(self.traffic.tx_second, 2000)

    def test_removedSourceNoLongerTicks(self) -> None:
        other = Traffic()
        source = lambda: [other]  # noqa: E731
        self.rates.add(source)
        self.rates.remove(source)
        other.rx = 10
        self.clock.advance(1)
        self.assertEqual(other.rx_second, 0)

    def test_stopStopsTicking(self) -> None:
        self.rates.stop()
        self.traffic.rx = 10
        self.clock.advance(5)
        self.assertEqual((self.traffic.rx_second, self.clock.getDelayedCalls()), (0, []))


class ServerStatsTests(SynchronousTestCase):
    """C{ServerService.stats()}: gobetween's documented document, with exact figures."""

    def test_documentHasGobetweensFieldsAndTypes(self) -> None:
        server = make_server(backends=("10.0.0.1:80 weight=2 priority=3", "10.0.0.2:80 sni=example.com"))
        stats = server.stats()
        expected = {
            "active_connections": 0,
            "rx_total": 0,
            "tx_total": 0,
            "rx_second": 0,
            "tx_second": 0,
            "backends": [
                {
                    "host": "10.0.0.1",
                    "port": "80",
                    "priority": 3,
                    "weight": 2,
                    "stats": {
                        "live": True,
                        "discovered": True,
                        "total_connections": 0,
                        "active_connections": 0,
                        "refused_connections": 0,
                        "rx": 0,
                        "tx": 0,
                        "rx_second": 0,
                        "tx_second": 0,
                    },
                },
                {
                    "host": "10.0.0.2",
                    "port": "80",
                    "priority": 1,
                    "weight": 1,
                    "sni": "example.com",
                    "stats": stats["backends"][0]["stats"],
                },
            ],
        }
        # through JSON, so that a type slip (1 for true, 80 for "80") shows
        self.assertEqual(json.dumps(stats, sort_keys=True), json.dumps(expected, sort_keys=True))

    def test_exactBytesAndConnectionsOfKnownPayloads(self) -> None:
        server, relay, client, side, backend = relayed()
        relay.client.dataReceived(b"x" * 1000)
        side.dataReceived(b"y" * 250)
        side.dataReceived(b"y" * 250)
        stats = server.stats()
        first = stats["backends"][0]["stats"]
        self.assertEqual((stats["rx_total"], stats["tx_total"], stats["active_connections"]), (500, 1000, 1))
        self.assertEqual((first["rx"], first["tx"]), (500, 1000))
        self.assertEqual((first["total_connections"], first["active_connections"]), (1, 1))
        self.assertEqual([b["stats"]["rx"] + b["stats"]["tx"] for b in stats["backends"][1:]], [0, 0])

    def test_ratesFromTheClock(self) -> None:
        reactor = MemoryReactorClock()
        rates = RateClock(reactor)
        server = make_server(reactor, rates=rates)
        rates.start()
        relay, client = accept(server)
        side, backend = connect(server)
        relay.client.dataReceived(b"a" * 300)
        side.dataReceived(b"b" * 700)
        reactor.advance(1)
        stats = server.stats()
        self.assertEqual((stats["rx_second"], stats["tx_second"]), (700, 300))
        self.assertEqual(
            (stats["backends"][0]["stats"]["rx_second"], stats["backends"][0]["stats"]["tx_second"]), (700, 300)
        )
        reactor.advance(1)
        self.assertEqual((server.stats()["rx_second"], server.stats()["tx_second"]), (0, 0))

    def test_idleConnectionAddsNothing(self) -> None:
        reactor = MemoryReactorClock()
        rates = RateClock(reactor)
        server = make_server(reactor, rates=rates)
        rates.start()
        relay, client = accept(server)
        connect(server)
        before = server.stats()
        reactor.advance(60)
        self.assertEqual(server.stats(), before)
        self.assertEqual((before["rx_total"], before["tx_total"]), (0, 0))

    def test_refusalsCountedPerBackend(self) -> None:
        server = make_server()
        accept(server)
        fail(server)
        refused = [b["stats"]["refused_connections"] for b in server.stats()["backends"]]
        self.assertEqual(refused, [1, 0, 0])
