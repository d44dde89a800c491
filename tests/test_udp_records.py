"""
Tests for the records of ended UDP sessions (L{FinishedConnection}) and for
the idle queues a session joins, on L{UdpReactor} (its UDP ports in memory)
and a L{task.Clock}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

import balancer.proxy.udp
from balancer.backends import Backend
from balancer.config.addresses import BackendSpec
from balancer.proxy.finished import CLIENT_IDLE, RESPONSES_DONE, FinishedConnection, FinishedConnections
from balancer.proxy.udp import UdpProxy
from balancer.stats import ServerCounters
from tests.support.reactors import UdpReactor

CLIENT = ("192.0.2.7", 5000)


class RecordTests(SynchronousTestCase):
    """An ended session is published with its figures, and costs no record when nobody listens."""

    def setUp(self) -> None:
        self.reactor = UdpReactor()
        self.clock = task.Clock()
        self.clock.advance(1000.0)
        self.counters = ServerCounters()
        self.backend = Backend(BackendSpec("127.0.0.1", 53))
        self.finished = FinishedConnections()
        self.released: list[Backend] = []

    def proxy(self, **options: Any) -> UdpProxy:
        """A proxy to L{backend} whose sessions' ports are in memory."""
        proxy = UdpProxy(lambda host: self.backend, self.counters, reactor=self.reactor, clock=self.clock,
                         name="dns", finished=self.finished, released=self.released.append, **options)
        self.sent: list[tuple[Any, bytes]] = []
        proxy.to_client = lambda data, client: self.sent.append((client, data))
        return proxy

    def answer(self, proxy: UdpProxy, data: bytes) -> None:
        """The backend answers the client's session with C{data}."""
        proxy.sessions[CLIENT]._link.datagramReceived(data, ("127.0.0.1", 53))  # type: ignore[union-attr]

    def test_noRecordIsMadeWithoutSubscribers(self) -> None:
        """With nobody subscribed (no access log, no metrics), an ending session builds no record."""

        def no_record(**fields: Any) -> FinishedConnection:
            raise AssertionError("a record was made for nobody")

        self.patch(balancer.proxy.udp, "FinishedConnection", no_record)
        proxy = self.proxy(max_responses=1)
        proxy.datagramReceived(b"query", CLIENT)
        self.answer(proxy, b"answer!")
        self.assertEqual((proxy.sessions, proxy.live_sessions(), self.sent), ({}, [], [(CLIENT, b"answer!")]))
        self.assertEqual((self.counters.active_connections, self.counters.total_connections), (0, 1))
        self.assertEqual((self.counters.traffic.tx, self.counters.traffic.rx), (5, 7))
        self.assertEqual(self.released, [self.backend])
        self.assertEqual(self.reactor.open, 0)

    def test_recordOfASessionEndedByItsAnswer(self) -> None:
        records: list[FinishedConnection] = []
        self.finished.subscribe(records.append)
        proxy = self.proxy(max_responses=1)
        proxy.datagramReceived(b"query", CLIENT)
        self.clock.advance(0.5)
        self.answer(proxy, b"answer!")
        self.assertEqual(
            records,
            [
                FinishedConnection(
                    server="dns",
                    protocol="udp",
                    client="192.0.2.7:5000",
                    backend="127.0.0.1:53",
                    started=1000.0,
                    connect_seconds=0.0,
                    duration_seconds=0.5,
                    rx=7,
                    tx=5,
                    reason=RESPONSES_DONE,
                )
            ],
        )

    def test_recordsStartWhenSomeoneSubscribes(self) -> None:
        """A subscriber added while a session is open gets its record when it ends."""
        records: list[FinishedConnection] = []
        proxy = self.proxy(max_responses=1)
        proxy.datagramReceived(b"one", CLIENT)
        self.answer(proxy, b"1")
        self.finished.subscribe(records.append)
        proxy.datagramReceived(b"two", CLIENT)
        self.answer(proxy, b"2")
        self.assertEqual([(r.tx, r.rx, r.reason) for r in records], [(3, 1, RESPONSES_DONE)])


class IdleQueueChoiceTests(SynchronousTestCase):
    """Each session keeps the idle timeout in force when it opened, through changes of the configuration."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        backend = Backend(BackendSpec("127.0.0.1", 53))
        self.records: list[FinishedConnection] = []
        finished = FinishedConnections()
        finished.subscribe(self.records.append)
        self.proxy = UdpProxy(lambda host: backend, ServerCounters(), reactor=UdpReactor(), clock=self.clock,
                              client_idle_timeout=10.0, finished=finished)

    def ended(self) -> list[tuple[str, float]]:
        """Which clients' sessions ended, and when."""
        return [(r.client, r.started + r.duration_seconds) for r in self.records]

    def test_changedTimeoutAppliesToNewSessionsOnly(self) -> None:
        self.proxy.datagramReceived(b"a", ("192.0.2.1", 1))
        self.proxy.client_idle_timeout = 20.0
        self.proxy.datagramReceived(b"b", ("192.0.2.2", 1))
        self.proxy.client_idle_timeout = 10.0
        self.proxy.datagramReceived(b"c", ("192.0.2.3", 1))
        self.clock.advance(10.0)
        self.assertEqual(self.ended(), [("192.0.2.1:1", 10.0), ("192.0.2.3:1", 10.0)])
        self.clock.advance(10.0)
        self.assertEqual(self.ended()[2:], [("192.0.2.2:1", 20.0)])
        self.assertEqual({r.reason for r in self.records}, {CLIENT_IDLE})

    def test_firstDatagramStartsTheTimeout(self) -> None:
        """The session's first datagram counts as its activity: the timeout runs from it."""
        self.clock.advance(3.0)
        self.proxy.datagramReceived(b"a", ("192.0.2.1", 1))
        self.clock.advance(9.9)
        self.assertEqual(self.records, [])
        self.clock.advance(0.1)
        self.assertEqual(self.ended(), [("192.0.2.1:1", 13.0)])

    def test_endedSessionLeavesItsQueues(self) -> None:
        """A session ended by its answer is no longer watched, and the last one out stops the timer."""
        udp = UdpReactor()
        proxy = UdpProxy(lambda host: Backend(BackendSpec("127.0.0.1", 53)), ServerCounters(), reactor=udp,
                         clock=self.clock, client_idle_timeout=10.0, backend_idle_timeout=5.0, max_responses=1)
        udp.listenUDP(53, proxy)
        on_client, on_backend = proxy.idle
        assert on_client is not None and on_backend is not None
        proxy.datagramReceived(b"a", ("192.0.2.1", 1))
        proxy.datagramReceived(b"b", ("192.0.2.2", 1))
        first, second = proxy.sessions[("192.0.2.1", 1)], proxy.sessions[("192.0.2.2", 1)]
        self.assertEqual((len(on_client), len(on_backend), len(self.clock.getDelayedCalls())), (2, 2, 2))
        first.from_backend(b"answer")
        self.assertEqual((list(on_client.members), list(on_backend.members)), ([second], [second]))
        second.from_backend(b"answer")
        self.assertEqual((len(on_client), len(on_backend), self.clock.getDelayedCalls()), (0, 0, []))

    def test_liveSessionsAreThoseOfEveryQueue(self) -> None:
        """Every session not ended is listed once, whichever timeouts it opened with, and closing ends them all."""
        proxy = UdpProxy(lambda host: Backend(BackendSpec("127.0.0.1", 53)), ServerCounters(), reactor=UdpReactor(),
                         clock=self.clock, client_idle_timeout=10.0, backend_idle_timeout=5.0, max_requests=1)
        proxy.datagramReceived(b"both", ("192.0.2.1", 1))
        proxy.datagramReceived(b"retired, still live", ("192.0.2.1", 1))
        proxy.client_idle_timeout = 0.0
        proxy.datagramReceived(b"backend only", ("192.0.2.2", 1))
        proxy.backend_idle_timeout = 0.0
        proxy.datagramReceived(b"the default", ("192.0.2.3", 1))
        live = proxy.live_sessions()
        self.assertEqual(sorted(s.client for s in live), [("192.0.2.1", 1), ("192.0.2.1", 1), ("192.0.2.2", 1), ("192.0.2.3", 1)])
        self.assertEqual(len(set(live)), 4)
        proxy.close_all()
        self.assertEqual((proxy.live_sessions(), proxy.counters.active_connections), ([], 0))
        self.assertTrue(all(s.ended for s in live))
