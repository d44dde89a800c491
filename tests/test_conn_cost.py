"""
A plain TCP relay on the relay engine leaves no reference cycle once it is
over: reference counting frees its objects, and Python's cyclic garbage
collector never has to walk them (bench/conn_cost.py counts the rest of
the work per connection).
"""

from __future__ import annotations

import cProfile
import gc
import pstats
import random
import select
import socket
from typing import Any, Iterator

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from balancer.config.addresses import HostPort, parse_backend_line
from balancer.config.schema import DiscoveryConfig, ServerConfig
from balancer.proxy.engine import sockets, splice
from balancer.proxy.engine.engine import Engine
from balancer.proxy.engine.path import EnginePath
from balancer.proxy.engine.sockets import EngineConnector
from balancer.proxy.engine.splice import SplicedTransport
from balancer.proxy.paths import DataPaths
from balancer.proxy.tcp import Attempt, BackendSide, ClientSide, Relay
from balancer.server_service import ServerService
from balancer.stats import RateClock
from tests.support import waiting
from tests.support.clients import Echo, exchange, port_number, serve
from tests.support.ports import refusing_port

#: The classes of a relay's objects on the engine.
RELAY_OBJECTS = (Relay, ClientSide, BackendSide, Attempt, SplicedTransport, EngineConnector)


def relay_objects() -> list[str]:
    """The names of the classes of the relay objects alive in this process."""
    return [type(o).__name__ for o in gc.get_objects() if isinstance(o, RELAY_OBJECTS)]


class FreedByReferenceCountingTests(TestCase):
    """With the cyclic collector off, every object of an ended relay is gone."""

    def setUp(self) -> None:
        if not splice.AVAILABLE:
            self.skipTest("no relay engine on this platform")
        engine = Engine(reactor)
        self.addCleanup(engine.close)
        self.paths = DataPaths(reactor, engine)

    @inlineCallbacks
    def server(self, *backends: int) -> Iterator[Deferred[Any]]:
        """A started server on the engine in front of C{backends} (ports on 127.0.0.1)."""
        config = ServerConfig(
            bind=HostPort("127.0.0.1", 0),
            balance="roundrobin",
            discovery=DiscoveryConfig(
                kind="static", static_list=tuple(parse_backend_line(f"127.0.0.1:{port}") for port in backends)
            ),
        )
        server = ServerService("cost", config, reactor, RateClock(reactor), rng=random.Random(0), paths=self.paths)
        self.assertIsInstance(server.path, EnginePath)
        server.startService()
        self.addCleanup(server.stopService)
        yield waiting.until(lambda: True)
        return server

    def collector_off(self) -> None:
        """Collect what earlier tests left, then turn the cyclic collector off for this test."""
        gc.collect()
        self.assertEqual(relay_objects(), [])
        gc.disable()
        self.addCleanup(gc.enable)

    @inlineCallbacks
    def test_relayedConnections(self) -> Iterator[Deferred[Any]]:
        """Relays that carried a request and its answer each way leave nothing."""
        backend = yield serve(self, Echo)
        server = yield self.server(port_number(backend))
        self.collector_off()
        answers = yield gatherResults([exchange(server.port, b"ping %d" % i) for i in range(20)])
        self.assertEqual(answers, [b"ping %d" % i for i in range(20)])
        yield waiting.until(lambda: not server.relays, what="the relays' end")
        yield waiting.until(lambda: not relay_objects(), timeout=5, what="relay objects freed")
        self.assertEqual(server.counters.total_connections, 20)

    @inlineCallbacks
    def test_noBackendTookTheClient(self) -> Iterator[Deferred[Any]]:
        """A relay whose only backend refused it (its client never joined to anything) leaves nothing."""
        server = yield self.server(refusing_port(self))
        self.collector_off()
        answers = yield gatherResults([exchange(server.port, b"ping") for _ in range(5)])
        self.assertEqual(answers, [b""] * 5)
        yield waiting.until(lambda: not server.relays, what="the relays' end")
        yield waiting.until(lambda: not relay_objects(), timeout=5, what="relay objects freed")
        self.assertEqual(server.counters.no_backend, 5)


class AcceptTests(TestCase):
    """A listening socket of the engine accepts without Python's enum conversions (L{sockets.accepting})."""

    def setUp(self) -> None:
        plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        plain.bind(("127.0.0.1", 0))
        plain.listen(8)
        self.listening = sockets.accepting(plain)
        self.addCleanup(self.listening.close)

    def accept(self) -> tuple[socket.socket, list[str]]:
        """Accept one client, profiled: the socket and the Python functions called."""
        client = socket.create_connection(self.listening.getsockname())
        self.addCleanup(client.close)
        profiler = cProfile.Profile()
        accepted = waiting_accept(self.listening, profiler)
        self.addCleanup(accepted.close)
        called = [name for (_, _, name) in pstats.Stats(profiler).stats]  # type: ignore[attr-defined]
        return accepted, called

    def test_acceptedSocket(self) -> None:
        """Accepted sockets have the listener's family and type; the listener stays non-blocking."""
        accepted, _ = self.accept()
        self.assertEqual((accepted.family, accepted.type), (socket.AF_INET, socket.SOCK_STREAM))
        self.assertEqual((self.listening.family, self.listening.type), (socket.AF_INET, socket.SOCK_STREAM))
        self.assertEqual(self.listening.gettimeout(), 0.0)

    def test_duplicate(self) -> None:
        """A duplicate of the listening socket knows its family and type too."""
        duplicate = self.listening.dup()
        self.addCleanup(duplicate.close)
        self.assertIsInstance(duplicate, sockets.AcceptingSocket)
        self.assertEqual((duplicate.family, duplicate.type), (socket.AF_INET, socket.SOCK_STREAM))

    def test_noEnumConversion(self) -> None:
        """Neither the family nor the type of the listening socket is converted to an enum for a client."""
        _, called = self.accept()
        self.assertIn("accept", called)
        self.assertNotIn("_intenum_converter", called)


def waiting_accept(listening: socket.socket, profiler: cProfile.Profile) -> socket.socket:
    """C{listening.accept()} under C{profiler}, once the client is queued (a non-blocking socket: poll first)."""
    poller = select.poll()
    poller.register(listening, select.POLLIN)
    assert poller.poll(5000), "no client queued within 5 s"
    profiler.enable()
    try:
        accepted, _ = listening.accept()
    finally:
        profiler.disable()
    return accepted
