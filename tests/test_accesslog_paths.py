"""
Finished connections on real sockets (127.0.0.1), on both data paths: the
relay engine (C{[defaults] splice}, sockets spliced in the kernel) and
Twisted's transports.  Each ending gets its reason, its backend, its bytes
and its times.
"""

from __future__ import annotations

from typing import Any, Generator

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from balancer.config.schema import AccessConfig
from balancer.proxy import finished as reasons
from balancer.proxy.engine.path import EnginePath
from balancer.proxy.finished import FinishedConnection
from balancer.proxy.tcp import reset_connection
from balancer.proxy.twisted_path import TwistedPath
from balancer.server_service import ServerService
from tests.support.balancers import start_balancer
from tests.support.clients import Echo, Named, exchange, listen, port_number, serve
from tests.support.peers import Peer, open_client
from tests.support.skips import NO_ENGINE
from tests.support.waiting import until


class Silent(Protocol):
    """A backend that reads and never answers nor closes."""


class EndingsOnAPath:
    """The endings, on the data path of C{splice}."""

    splice: bool
    timeout = 20

    def balancer(self, lines: tuple[str, ...], **options: Any) -> tuple[ServerService, list[FinishedConnection]]:
        """A balancer in front of C{lines}, and the connections it will publish."""
        test: Any = self
        server = start_balancer(test, lines, splice=self.splice, **options)
        path_class = EnginePath if self.splice else TwistedPath
        test.assertIsInstance(server.path, path_class)
        records: list[FinishedConnection] = []
        server.finished.subscribe(records.append)
        return server, records

    @inlineCallbacks
    def backend(self, protocol: type[Protocol], **attributes: Any) -> Generator[Deferred[Any], Any, str]:
        port = yield serve(self, protocol, **attributes)  # type: ignore[arg-type]
        return f"127.0.0.1:{port_number(port)}"

    @inlineCallbacks
    def record(self, records: list[FinishedConnection]) -> Generator[Deferred[Any], Any, FinishedConnection]:
        """The one connection published, once it is."""
        yield until(lambda: bool(records), 10, "a finished connection")
        [record] = records
        return record

    @inlineCallbacks
    def test_backendClosed(self) -> Generator[Deferred[Any], Any, None]:
        backend = yield self.backend(Named, name=b"backend-one")
        server, records = self.balancer((backend,))
        answer = yield exchange(server.port, half_close=False)
        record = yield self.record(records)
        test: Any = self
        test.assertEqual(answer, b"backend-one")
        test.assertEqual((record.reason, record.backend, record.rx, record.tx, record.protocol, record.server),
                         (reasons.BACKEND_CLOSED, backend, 11, 0, "tcp", "web"))
        test.assertTrue(record.client.startswith("127.0.0.1:"))
        test.assertGreaterEqual(record.duration_seconds, record.connect_seconds)
        test.assertGreaterEqual(record.connect_seconds, 0.0)

    @inlineCallbacks
    def test_clientClosed(self) -> Generator[Deferred[Any], Any, None]:
        backend = yield self.backend(Echo)
        server, records = self.balancer((backend,))
        answer = yield exchange(server.port, b"ping" * 1000)
        record = yield self.record(records)
        test: Any = self
        test.assertEqual(len(answer), 4000)
        test.assertEqual((record.reason, record.rx, record.tx), (reasons.CLIENT_CLOSED, 4000, 4000))

    @inlineCallbacks
    def test_clientReset(self) -> Generator[Deferred[Any], Any, None]:
        backend = yield self.backend(Echo)
        server, records = self.balancer((backend,))
        client = yield open_client(server.port, Peer())
        client.transport.write(b"x")
        yield client.expect(1)
        reset_connection(client.transport)
        record = yield self.record(records)
        test: Any = self
        test.assertEqual((record.reason, record.rx, record.tx), (reasons.CLIENT_RESET, 1, 1))

    @inlineCallbacks
    def test_clientIdle(self) -> Generator[Deferred[Any], Any, None]:
        backend = yield self.backend(Silent)
        server, records = self.balancer((backend,), client_idle_timeout=0.2)
        yield exchange(server.port, half_close=False)
        record = yield self.record(records)
        test: Any = self
        test.assertEqual(record.reason, reasons.CLIENT_IDLE)
        test.assertGreaterEqual(record.duration_seconds, 0.2)

    @inlineCallbacks
    def test_connectRefused(self) -> Generator[Deferred[Any], Any, None]:
        port = yield listen(Protocol)
        backend = f"127.0.0.1:{port_number(port)}"
        yield port.stopListening()
        server, records = self.balancer((backend,))
        yield exchange(server.port, half_close=False)
        record = yield self.record(records)
        test: Any = self
        test.assertEqual((record.reason, record.backend, record.connect_seconds), (reasons.CONNECT_FAILED, backend, None))

    @inlineCallbacks
    def test_noBackend(self) -> Generator[Deferred[Any], Any, None]:
        server, records = self.balancer(())
        yield exchange(server.port, half_close=False)
        record = yield self.record(records)
        test: Any = self
        test.assertEqual((record.reason, record.backend), (reasons.NO_BACKEND, None))

    @inlineCallbacks
    def test_denied(self) -> Generator[Deferred[Any], Any, None]:
        backend = yield self.backend(Echo)
        server, records = self.balancer((backend,), access=AccessConfig(default="deny"))
        yield exchange(server.port, b"x")
        record = yield self.record(records)
        test: Any = self
        test.assertEqual((record.reason, record.backend, record.tx), (reasons.DENIED, None, 0))

    @inlineCallbacks
    def test_closedByTheBalancer(self) -> Generator[Deferred[Any], Any, None]:
        backend = yield self.backend(Silent)
        server, records = self.balancer((backend,))
        client = yield open_client(server.port, Peer())
        yield until(lambda: any(relay.backend_side is not None for relay in server.relays.values()), 10, "a relay")
        for relay in list(server.relays.values()):
            relay.close()
        yield client.closed
        record = yield self.record(records)
        test: Any = self
        test.assertEqual(record.reason, reasons.CLOSED_BY_BALANCER)


class EngineEndingsTests(EndingsOnAPath, TestCase):
    """On the relay engine."""

    splice = True
    skip = NO_ENGINE


class TwistedEndingsTests(EndingsOnAPath, TestCase):
    """On Twisted's transports."""

    splice = False
