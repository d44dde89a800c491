"""
The relay's fast path (the relay engine, L{balancer.proxy.engine}, with its
sockets spliced, L{balancer.proxy.engine.splice}) against its normal path (Twisted's
transports, bytes through Python).

The same scenarios run on real sockets (127.0.0.1, port 0) through a server
that takes each path (L{NormalPathTests}, L{SplicePathTests}), and expect
the same: the bytes, the statistics of the relay, its server and its backend,
half-closes in both directions, idle timeouts, aborts, and a stalled backend
stopping the reading from its client.  Idle timeouts run on a L{Clock} given
to the server, so that they are exact while the bytes move on the reactor.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import socket
import struct
from typing import Any

import attrs

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from balancer.config.schema import BackendsTlsConfig, Config, DefaultsConfig, ProxyProtocolConfig
from balancer.proxy.engine import pipes, splice
from balancer.proxy.engine.engine import Engine
from balancer.proxy.engine.path import EnginePath
from balancer.proxy.engine.sockets import EngineListener
from balancer.proxy.tcp import Relay
from balancer.proxy.twisted_path import TwistedPath
from balancer.root_service import BalancerService
from balancer.server_service import ServerService
from tests.support.balancers import start_balancer
from tests.support.clients import exchange, port_number, serve
from tests.support.peers import Peer, open_client
from tests.support.ports import refusing_port
from tests.support.loops import use_loop
from tests.support.relays import server_config
from tests.support.skips import NO_ENGINE
from tests.support.streams import CHUNK, Answer, Greeter, PacedEcho, StalledSink, Streamer, buffered, pattern
from tests.support.waiting import until


class Watcher(Peer):
    """A L{Peer} that keeps why its connection ended."""

    reason: Any = None

    def connectionLost(self, reason: Any = None) -> None:
        self.reason = reason
        super().connectionLost(reason)


@implementer(IHalfCloseableProtocol)
class Sink(Protocol):
    """
    Reads and keeps everything, answers nothing, and stays open after the
    end of its input (noted in C{eof}); C{factory.ended} fires with (bytes
    read, reason) when its connection ends.
    """

    def connectionMade(self) -> None:
        self.data = b""
        self.eof = False
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def readConnectionLost(self) -> None:
        self.eof = True

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.ended.callback((self.data, reason))


class _Scenarios:
    """
    Scenarios for both paths; a subclass says which path by L{splice}.

    Each checks through L{established} that its relay took that path.
    """

    splice: bool
    timeout = 60

    # Set up by the TestCase this is mixed into
    addCleanup: Any
    assertEqual: Any
    assertFalse: Any
    assertIsInstance: Any
    assertNotIsInstance: Any
    assertGreaterEqual: Any
    assertLess: Any
    assertTrue: Any

    def listen(self, protocol: type[Protocol], **attributes: Any) -> Deferred[int]:
        """A backend on 127.0.0.1 port 0; fires with its port (closed after the test)."""
        return serve(self, protocol, **attributes).addCallback(port_number)

    def balancer(self, backend: int, **options: Any) -> ServerService:
        """A started server on this test's path, with one backend on 127.0.0.1."""
        return start_balancer(self, (f"127.0.0.1:{backend}",), splice=self.splice, **options)

    @inlineCallbacks
    def established(self, server: ServerService) -> Any:
        """Fires with the server's only relay once its backend is connected, checking its path."""
        yield until(lambda: bool(server.relays and next(iter(server.relays.values())).backend_side))
        relay = next(iter(server.relays.values()))
        for transport in (relay.client.transport, relay.backend_side.transport):
            if self.splice:
                self.assertIsInstance(transport, splice.SplicedTransport)
            else:
                self.assertNotIsInstance(transport, splice.SplicedTransport)
        return relay

    def assertTraffic(self, server: ServerService, relay: Relay, tx: int, rx: int) -> None:
        """The relay, its server and its backend counted C{tx} bytes to and C{rx} from the backend."""
        stats = server.stats()
        backend = stats["backends"][0]["stats"]
        counted = {
            "relay": (relay.tx, relay.rx),
            "server": (stats["tx_total"], stats["rx_total"]),
            "backend": (backend["tx"], backend["rx"]),
        }
        self.assertEqual(counted, {"relay": (tx, rx), "server": (tx, rx), "backend": (tx, rx)})

    @inlineCallbacks
    def ended(self, server: ServerService) -> Any:
        """Fires once every relay of C{server} is over; checks that nothing stays counted as active."""
        yield until(lambda: not server.relays)
        stats = server.stats()
        self.assertEqual((stats["active_connections"], stats["backends"][0]["stats"]["active_connections"]), (0, 0))

    # Bytes and statistics

    @inlineCallbacks
    def test_exactBytesAndStatisticsBothWays(self) -> Any:
        body = b"".join(pattern(i) for i in range(40)) + b"tail"
        server = self.balancer((yield self.listen(Answer, body=body)))
        request = b"".join(pattern(i) for i in range(200, 230)) + b"end"
        client = Watcher()
        yield open_client(server.port, client)
        relay = yield self.established(server)
        client.transport.write(request)
        client.transport.loseWriteConnection()
        answer = yield client.ended
        self.assertEqual(answer, hashlib.sha256(request).hexdigest().encode() + body)
        yield self.ended(server)
        self.assertTraffic(server, relay, len(request), 64 + len(body))
        stats = server.stats()["backends"][0]["stats"]
        self.assertEqual((stats["total_connections"], stats["refused_connections"]), (1, 0))

    @inlineCallbacks
    def test_50MBThroughEchoComeBackIdentical(self) -> Any:
        server = self.balancer((yield self.listen(PacedEcho)))
        client = Streamer(chunks=800)
        yield open_client(server.port, client)
        relay = yield self.established(server)
        yield client.closed
        self.assertEqual(client.received_count, 800 * CHUNK)
        self.assertEqual(client.received.hexdigest(), client.sent.hexdigest())
        yield self.ended(server)
        self.assertTraffic(server, relay, 800 * CHUNK, 800 * CHUNK)

    @inlineCallbacks
    def test_backendClosesAfterItsAnswerClientGetsAllOfIt(self) -> Any:
        """The backend writes 4 MB and closes (not a half-close): all of it reaches the client, then the end."""
        server = self.balancer((yield self.listen(Answer, body=b"".join(pattern(i) for i in range(64)))))
        client = Watcher()
        yield open_client(server.port, client)
        relay = yield self.established(server)
        client.transport.loseWriteConnection()
        answer = yield client.ended
        self.assertEqual(answer[64:], b"".join(pattern(i) for i in range(64)))
        yield client.closed
        self.assertTrue(client.reason.check(ConnectionDone))
        yield self.ended(server)
        self.assertTraffic(server, relay, 0, 64 + 64 * CHUNK)

    # Half-close

    @inlineCallbacks
    def test_clientHalfClosesThenGetsTheWholeAnswer(self) -> Any:
        body = b"".join(pattern(i) for i in range(32))
        server = self.balancer((yield self.listen(Answer, body=body)))
        request = b"".join(pattern(i) for i in range(100, 104))
        answer = yield exchange(server.port, request, half_close=True)
        self.assertEqual(answer, hashlib.sha256(request).hexdigest().encode() + body)
        yield self.ended(server)

    @inlineCallbacks
    def test_backendHalfClosesFirstAndStillGetsTheRequest(self) -> Any:
        banner = b"".join(pattern(i) for i in range(16))
        got: Deferred[bytes] = Deferred()
        server = self.balancer((yield self.listen(Greeter, banner=banner, got=got)))
        client = Watcher()
        yield open_client(server.port, client)
        relay = yield self.established(server)
        self.assertEqual((yield client.ended), banner)
        self.assertFalse(client.closed.called)
        request = b"".join(pattern(i) for i in range(50, 58))
        client.transport.write(request)
        client.transport.loseWriteConnection()
        self.assertEqual((yield got), request)
        yield client.closed
        self.assertTrue(client.reason.check(ConnectionDone))
        yield self.ended(server)
        self.assertTraffic(server, relay, len(request), len(banner))

    @inlineCallbacks
    def sink_relay(self, client: Protocol) -> Any:
        """
        C{client} connected through the balancer to a L{Sink} backend; fires with
        (server, relay, the backend's connections, the backend's end) once the
        relay is established.
        """
        connections: list[Sink] = []
        ended: Deferred[tuple[bytes, Any]] = Deferred()
        server = self.balancer((yield self.listen(Sink, connections=connections, ended=ended)))
        yield open_client(server.port, client)
        relay = yield self.established(server)
        return server, relay, connections, ended

    @inlineCallbacks
    def test_halfClosedClientKeepsItsConnectionWhileTheBackendStaysOpen(self) -> Any:
        """The client's end of input reaches the backend, which keeps its side open: so does the relay."""
        client = Watcher()
        server, _, connections, ended = yield self.sink_relay(client)
        client.transport.write(b"request")
        client.transport.loseWriteConnection()
        yield until(lambda: bool(connections) and connections[0].data == b"request")
        for _ in range(10):
            yield deferLater(reactor, 0, lambda: None)
        self.assertFalse(client.ended.called or ended.called)
        self.assertEqual(len(server.relays), 1)
        connections[0].transport.write(b"late answer")
        connections[0].transport.loseConnection()
        self.assertEqual((yield client.ended), b"late answer")
        yield self.ended(server)

    # Idle timeouts and aborts

    def idle_clock(self, server: ServerService) -> Clock:
        """Make the server's idle timers run on a clock the test advances."""
        clock = server.clock = Clock()
        return clock

    @inlineCallbacks
    def test_clientIdleClosesBothAtTheDeadlineAndActivityPushesIt(self) -> Any:
        server = self.balancer((yield self.listen(PacedEcho)), client_idle_timeout=10.0)
        clock = self.idle_clock(server)
        client = Watcher()
        yield open_client(server.port, client)
        yield self.established(server)
        clock.advance(6)
        client.transport.write(b"ping")
        self.assertEqual((yield client.expect(4)), b"ping")
        clock.advance(9.75)
        self.assertEqual(len(server.relays), 1)
        self.assertFalse(client.closed.called)
        clock.advance(0.25)
        yield client.closed
        self.assertTrue(client.reason.check(ConnectionLost))
        yield self.ended(server)

    @inlineCallbacks
    def test_backendIdleIgnoresClientTraffic(self) -> Any:
        connections: list[Sink] = []
        ended: Deferred[tuple[bytes, Any]] = Deferred()
        server = self.balancer(
            (yield self.listen(Sink, connections=connections, ended=ended)), backend_idle_timeout=5.0
        )
        clock = self.idle_clock(server)
        client = Watcher()
        yield open_client(server.port, client)
        yield self.established(server)
        clock.advance(4)
        client.transport.write(b"not for the backend's timer")
        yield until(lambda: bool(connections) and connections[0].data == b"not for the backend's timer")
        clock.advance(0.75)
        self.assertFalse(client.closed.called or ended.called)
        clock.advance(0.25)
        data, reason = yield ended
        self.assertTrue(reason.check(ConnectionLost))
        yield client.closed
        yield self.ended(server)

    @inlineCallbacks
    def test_finishedDirectionCannotBeIdle(self) -> Any:
        """A client that sent its request and shut down its write side waits for the answer, up to the backend's timeout."""
        connections: list[Sink] = []
        ended: Deferred[tuple[bytes, Any]] = Deferred()
        server = self.balancer(
            (yield self.listen(Sink, connections=connections, ended=ended)),
            client_idle_timeout=10.0,
            backend_idle_timeout=30.0,
        )
        clock = self.idle_clock(server)
        client = Watcher()
        yield open_client(server.port, client)
        relay = yield self.established(server)
        client.transport.loseWriteConnection()
        yield until(lambda: relay.client.read_closed)
        clock.advance(29)
        self.assertFalse(client.closed.called)
        clock.advance(1)
        yield client.closed
        yield self.ended(server)

    @inlineCallbacks
    def test_closeAbortsBothEnds(self) -> Any:
        """A closed relay (session kill, end of grace) resets both of its connections."""
        client = Watcher()
        server, relay, connections, ended = yield self.sink_relay(client)
        client.transport.write(b"hello")
        yield until(lambda: bool(connections) and connections[0].data == b"hello")
        relay.close()
        data, reason = yield ended
        self.assertTrue(reason.check(ConnectionLost))
        yield client.closed
        self.assertTrue(client.reason.check(ConnectionLost))
        yield self.ended(server)
        self.assertTraffic(server, relay, 5, 0)

    @inlineCallbacks
    def test_clientResetResetsTheBackend(self) -> Any:
        """A client's reset reaches the backend as a reset (not an end of stream), and the relay ends."""
        client = Watcher()
        server, _, connections, ended = yield self.sink_relay(client)
        client.transport.write(b"bye")
        yield until(lambda: bool(connections) and connections[0].data == b"bye")
        client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.transport.abortConnection()
        data, reason = yield ended
        self.assertEqual((data, connections[0].eof), (b"bye", False))
        self.assertIsInstance(reason.value, ConnectionLost)
        yield self.ended(server)

    @inlineCallbacks
    def test_backendResetEndsTheRelayAndTheClientsConnection(self) -> Any:
        """The backend resets its connection while the client streams: the relay ends, having counted what it moved."""
        client = Streamer(chunks=1 << 20)
        server, relay, connections, ended = yield self.sink_relay(client)
        yield until(lambda: bool(connections) and len(connections[0].data) > CHUNK)
        connections[0].transport.abortConnection()
        data, reason = yield ended
        yield client.closed
        yield self.ended(server)
        self.assertGreaterEqual(relay.tx, len(data))

    # Flow control

    @inlineCallbacks
    def stalled_relay(self) -> Any:
        """
        A client streaming as fast as it can to a backend that does not read,
        with small fixed kernel buffers towards the backend; fires with
        (server, relay, client, sink, sink done) once the relay is established.
        """
        done: Deferred[tuple[int, str]] = Deferred()
        sinks: list[StalledSink] = []
        backend = yield serve(self, StalledSink, sinks=sinks, done=done)
        backend.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        server = self.balancer(backend.getHost().port)
        client = Streamer(chunks=1 << 20)
        yield open_client(server.port, client)
        relay = yield self.established(server)
        relay.backend_side.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        return server, relay, client, sinks[0], done

    @inlineCallbacks
    def test_stalledBackendStopsTheReadingFromItsClient(self) -> Any:
        """
        The backend does not read, the client writes as fast as it can: once
        the (small, fixed) kernel buffers and the relay's one buffer are
        full, the balancer stops reading from the client.  Once the backend
        reads again, it gets every byte.
        """
        server, relay, client, sink, done = yield self.stalled_relay()
        from_client = relay.client.transport
        marks: list[int] = []

        def stalled() -> bool:
            marks.append(relay.tx)
            return bool(
                len(marks) > 20
                and len(set(marks[-20:])) == 1
                and from_client not in reactor.getReaders()
                and buffered(client.transport) > 0
            )

        yield until(stalled)
        self.assertLess(relay.tx, client.index * CHUNK)
        client.chunks = client.index
        sink.transport.resumeProducing()
        count, digest = yield done
        self.assertEqual((count, digest), (client.chunks * CHUNK, client.sent.hexdigest()))
        self.assertEqual(relay.tx, count)
        yield self.ended(server)

    @inlineCallbacks
    def test_clientResetWhileBackendStalledResetsTheBackend(self) -> Any:
        """
        The client vanishes (its socket reset) while the balancer holds
        bytes for its stalled backend.  Relaying the backend's next bytes,
        the balancer finds the client reset, and resets the backend at once:
        the bytes held are dropped, so the cut transfer cannot look complete.
        """
        server, relay, client, sink, done = yield self.stalled_relay()
        from_client = relay.client.transport
        yield until(lambda: from_client not in reactor.getReaders() and buffered(client.transport) > 0)
        client.transport.abortConnection()
        yield client.closed
        sink.transport.write(b"?")
        yield until(lambda: relay.client.lost)
        sink.transport.resumeProducing()  # a paused transport would not see the reset
        count, digest = yield done
        self.assertLess(count, relay.tx)
        self.assertIsInstance(sink.reason.value, ConnectionLost)
        yield self.ended(server)


class NormalPathTests(_Scenarios, TestCase):
    """The scenarios through the relay's normal path (bytes through Python)."""

    splice = False


class SplicePathTests(_Scenarios, TestCase):
    """The scenarios through the fast path, and what only the fast path does, the engine's loop in Python."""

    skip = NO_ENGINE

    splice = True
    compiled = False

    def setUp(self) -> None:
        use_loop(self, self.compiled)

    @inlineCallbacks
    def test_noPipeCopiesTheBytesWithOneWarning(self) -> Any:
        """
        Out of descriptors for pipes (EMFILE), relays go on through Python's
        C{recv} and C{send}: every byte arrives, both ways, the ends too, and
        the want of pipes is logged once, as a warning, not a traceback.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def no_pipe() -> tuple[int, int]:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

        server = self.balancer((yield self.listen(PacedEcho)))
        self.patch(server.path.engine.pipes, "acquire", no_pipe)
        refused = server.path.engine.pipes.refused
        clients = [Streamer(chunks=40) for _ in range(3)]
        yield gatherResults([open_client(server.port, client) for client in clients])
        yield gatherResults([client.closed for client in clients])
        for client in clients:
            self.assertEqual((client.received_count, client.received.hexdigest()), (40 * CHUNK, client.sent.hexdigest()))
        yield self.ended(server)
        self.assertGreater(server.path.engine.pipes.refused, refused)
        warnings = [e for e in events if "no pipe for a relay" in e.get("log_format", "")]
        self.assertEqual([e["log_level"] for e in warnings], [LogLevel.warn])
        self.assertFalse([e for e in events if e.get("log_level") in (LogLevel.error, LogLevel.critical)])

    def test_availableOnThisPlatform(self) -> None:
        """These tests run on Linux, where the fast path exists: they must not pass by falling back."""
        self.assertTrue(splice.AVAILABLE)

    @inlineCallbacks
    def test_idleRelayReadsBothWritesNeitherHoldsNoPipe(self) -> Any:
        """
        No pipe is taken before bytes flow.  Once 4 MB went through a
        socket too small to take them at once (so that the relay had to
        wait for it to drain), the open, idle relay holds no pipe and waits
        only to read.
        """
        server = self.balancer((yield self.listen(PacedEcho)))
        lent, created = server.path.engine.pipes.lent, server.path.engine.pipes.created
        client = Watcher()
        yield open_client(server.port, client)
        relay = yield self.established(server)
        self.assertEqual((server.path.engine.pipes.lent, server.path.engine.pipes.created), (lent, created))
        relay.backend_side.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = b"".join(pattern(i) for i in range(64))
        client.transport.write(data)
        self.assertEqual((yield client.expect(len(data))), data)
        self.assertEqual(server.path.engine.pipes.lent, lent)
        ends = {relay.client.transport, relay.backend_side.transport}
        self.assertEqual(ends & set(server.path.engine.getWriters()), set())
        self.assertEqual(ends & set(server.path.engine.getReaders()), ends)
        self.assertEqual(len(server.relays), 1)


class CompiledSplicePathTests(SplicePathTests):
    """The same, on the engine's compiled dispatch loop."""

    compiled = True


class EngineChurnTests(TestCase):
    """Many short relays at once on the engine, as a load balancer sees them."""

    skip = NO_ENGINE

    timeout = 60

    @inlineCallbacks
    def test_churnThroughALiveAndADeadBackendLeavesNothingBehind(self) -> Any:
        """
        200 clients at once, round robin over a live backend and one that
        refuses: every client gets its own bytes back, each refusal is
        counted and retried on the live backend, the byte counts add up, and
        afterwards the engine watches only the listener and no pipe is lent.
        """
        # A backlog for all 200 at once: with Twisted's default of 50, a burst overflows the
        # backend's queue under load and the kernel resets some of the connections it queued.
        factory = Factory.forProtocol(PacedEcho)
        backend = reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        live, dead = backend.getHost().port, refusing_port(self)
        server = start_balancer(self, (f"127.0.0.1:{live}", f"127.0.0.1:{dead}"))
        lent = server.path.engine.pipes.lent
        payloads = [b"".join(pattern(i) for i in range(1 + i % 3))[: 1000 + i] for i in range(200)]
        answers = yield gatherResults([exchange(server.port, payload) for payload in payloads])
        self.assertEqual(answers, payloads)
        yield until(lambda: not server.relays)
        stats = server.stats()
        backends = {int(b["port"]): b["stats"] for b in stats["backends"]}
        self.assertEqual(
            (backends[live]["total_connections"], backends[dead]["total_connections"]), (200, 0)
        )
        self.assertGreaterEqual(backends[dead]["refused_connections"], 99)
        self.assertEqual([b["active_connections"] for b in backends.values()], [0, 0])
        size = sum(map(len, payloads))
        self.assertEqual((stats["tx_total"], stats["rx_total"], stats["active_connections"]), (size, size, 0))
        self.assertEqual(server.path.engine.pipes.lent, lent)
        (listener,) = server.path.engine.getReaders()
        self.assertIsInstance(listener, EngineListener)
        self.assertEqual((server.path.engine.getWriters(), server.path.engine.watched), ([], 1))


class ChoiceTests(TestCase):
    """Which relays take the fast path."""

    skip = NO_ENGINE

    timeout = 30

    def started(self, config: Config) -> ServerService:
        """Server "web" of a balancer started on the reactor with C{config} (stopped after the test)."""
        service = BalancerService(config, reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        self.service = service
        return service.server("web")

    @inlineCallbacks
    def test_relaysSendingAProxyHeaderAreSplicedHeaderFirst(self) -> Any:
        """The PROXY header goes through the pipe ahead of the client's bytes."""
        backend = yield serve(self, PacedEcho)
        config = Config(
            servers={
                "web": server_config(
                    (f"127.0.0.1:{backend.getHost().port}",), proxy_protocol=ProxyProtocolConfig(version="1")
                )
            }
        )
        server = self.started(config)
        self.assertIsInstance(server.path, EnginePath)
        client = Watcher()
        yield open_client(server.port, client)
        yield until(lambda: bool(server.relays and next(iter(server.relays.values())).backend_side))
        relay = next(iter(server.relays.values()))
        self.assertIsInstance(relay.backend_side.transport, splice.SplicedTransport)
        client.transport.write(b"ping")
        yield until(lambda: client.data.endswith(b"\r\nping"))
        self.assertTrue(client.data.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 "))
        self.assertEqual(server.stats()["tx_total"], 4)

    def test_tlsToBackendsTakesTheNormalPath(self) -> None:
        """A server with [backends_tls] has its relays on Twisted's transports, not on the engine."""
        server = self.started(Config(servers={"web": server_config(("127.0.0.1:1",), backends_tls=BackendsTlsConfig())}))
        self.assertIsNotNone(self.service.engine)
        self.assertIsInstance(server.path, TwistedPath)
        self.assertNotIsInstance(server._port, EngineListener)

    def test_addingTlsToBackendsNeedsANewListenerAProxyHeaderDoesNot(self) -> None:
        """Only a change of where its relays run (engine or not) makes an engine server rebind."""
        plain = server_config(("127.0.0.1:1",))
        server = BalancerService(Config(servers={"web": plain}), reactor).server("web")
        self.assertTrue(server.needs_new_listener(attrs.evolve(plain, backends_tls=BackendsTlsConfig())))
        self.assertFalse(server.needs_new_listener(attrs.evolve(plain, proxy_protocol=ProxyProtocolConfig())))
        off = BalancerService(Config(defaults=DefaultsConfig(splice=False), servers={"web": plain}), reactor)
        self.assertFalse(off.server("web").needs_new_listener(attrs.evolve(plain, backends_tls=BackendsTlsConfig())))


class CopyingPathTests(SynchronousTestCase):
    """A transport that could not get a pipe keeps the order of its bytes once pipes can be had again."""

    skip = NO_ENGINE

    def test_bytesCopiedForWantOfAPipeStayAheadOfLaterOnes(self) -> None:
        pool = pipes.PipePool()
        engine = Engine(MemoryReactorClock(), pool)
        self.addCleanup(engine.close)
        near, far = socket.socketpair()
        self.addCleanup(far.close)
        near.setblocking(False)
        far.setblocking(False)
        refusing = [True]
        make_pipe = pool.acquire

        def acquire() -> tuple[int, int]:
            if refusing[0]:
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            return make_pipe()

        self.patch(pool, "acquire", acquire)
        transport = splice.SplicedTransport(engine, near)
        transport.protocol = Protocol()
        first = os.urandom(4 << 20)  # more than the socket takes at once: the rest waits in Python
        transport.write(first)
        self.assertEqual((pool.refused, pool.lent), (1, 0))
        refusing[0] = False
        transport.write(b"second")
        received = b""
        while len(received) < len(first) + 6:
            try:
                received += far.recv(1 << 20)
            except BlockingIOError:
                transport.doWrite()
        self.assertEqual(received, first + b"second")
        self.assertEqual(pool.lent, 0)
        transport.loseConnection()


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Both ends of a TCP connection on 127.0.0.1 (the accepted one first)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        far = socket.create_connection(listener.getsockname())
        near, _ = listener.accept()
    return near, far


def reads_so_far() -> int:
    """How many read(2) calls this process made (its C{syscr} in C{/proc/self/io})."""
    with open("/proc/self/io", "rb") as io:
        return int(io.read().split(b"syscr: ", 1)[1].split(b"\n", 1)[0])


class CountingReads:
    """
    The read(2) calls of this process from the counter's making on, less
    those of the counting itself.  Both dispatch loops read a copying
    socket with read(2), the compiled one in C, where no Python hook sees
    it; while a test drives the engine, nothing else in the process reads
    (a C{recv} is not a read(2)).
    """

    def __init__(self) -> None:
        first = reads_so_far()
        self.cost = reads_so_far() - first
        self.start = reads_so_far()

    @property
    def receives(self) -> int:
        """The reads since the counter was made."""
        return reads_so_far() - self.start - self.cost


@implementer(IHalfCloseableProtocol)
class Ends(Protocol):
    """A relay side that notes the end of its input and closes nothing."""

    ended = False

    def readConnectionLost(self) -> None:
        self.ended = True

    def writeConnectionLost(self) -> None:
        pass


class CopyingFirstTests(SynchronousTestCase):
    """
    Each direction copies (C{read}, C{write}) until a read fills
    L{splice.COPY_SIZE}, then splices; a short copying read ends the reading
    of an edge unless the edge brought the end of the input.  The engine's
    loop in Python.
    """

    skip = NO_ENGINE

    compiled = False

    def setUp(self) -> None:
        use_loop(self, self.compiled)

    def joined(
        self, backend_class: type[splice.SplicedTransport] = splice.SplicedTransport
    ) -> tuple[pipes.PipePool, Engine, socket.socket, CountingReads, socket.socket, Ends]:
        """
        Two joined transports on a new engine (the backend's of
        C{backend_class}): returns the pool, the engine, the client's far
        end, the count of the client socket's reads, the backend's far end
        and the client's protocol.
        """
        pool = pipes.PipePool()
        engine = Engine(MemoryReactorClock(), pool)
        self.addCleanup(engine.close)
        ends = []
        for _ in range(2):
            near, far = tcp_pair()
            self.addCleanup(near.close)
            self.addCleanup(far.close)
            near.setblocking(False)
            far.setblocking(False)
            ends.append((near, far))
        (client_near, client_far), (backend, backend_far) = ends
        sides = []
        for sock, kind in ((client_near, splice.SplicedTransport), (backend, backend_class)):
            transport = kind(engine, sock)
            transport.protocol = Ends()
            transport.protocol.makeConnection(transport)
            sides.append(transport.protocol)
        splice.splice(sides[0], sides[1], lambda size: None, lambda size: None)
        return pool, engine, client_far, CountingReads(), backend_far, sides[0]

    def python_reads(self) -> list[splice.SplicedTransport]:
        """The transports whose Python C{doRead} is called from now on, in the order of the calls."""
        calls: list[splice.SplicedTransport] = []
        python_read = splice.SplicedTransport.doRead

        def counted(transport: splice.SplicedTransport) -> None:
            calls.append(transport)
            python_read(transport)

        self.patch(splice.SplicedTransport, "doRead", counted)
        return calls

    def test_aShortRequestIsCopiedWithOneReadAndNoPipe(self) -> None:
        pool, engine, client_far, client, backend_far, _ = self.joined()
        client_far.send(b"GET / HTTP/1.0\r\n\r\n")
        engine.doRead()
        self.assertEqual(backend_far.recv(100), b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual((client.receives, pool.created), (1, 0))

    def test_theCompiledLoopCopiesWithoutTheTransportsDoRead(self) -> None:
        """
        On the compiled loop a short copy is done in C: the transport's
        Python C{doRead} is not called (on the Python loop, once).
        """
        pool, engine, client_far, client, backend_far, _ = self.joined()
        calls = self.python_reads()
        client_far.send(b"GET / HTTP/1.0\r\n\r\n")
        engine.doRead()
        self.assertEqual(backend_far.recv(100), b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(len(calls), 0 if self.compiled else 1)

    def test_aPeerWhoseFlagsRunPythonIsLeftToTheTransportsDoRead(self) -> None:
        """
        When the peer's flags are not plain bools and ints (here a
        subclass's C{takes_pipes} whose truth is Python code), the
        transport's own C{doRead} reads, on either loop: the compiled loop
        runs no Python code between a read and the write of its bytes
        (such code could free the peer's buffer under it).
        """
        truths: list[bool] = []

        class Truthy:
            def __bool__(self) -> bool:
                truths.append(True)
                return True

        class TakesPipes(splice.SplicedTransport):
            __slots__ = ()
            takes_pipes = Truthy()  # type: ignore[assignment]

        pool, engine, client_far, client, backend_far, _ = self.joined(TakesPipes)
        calls = self.python_reads()
        client_far.send(b"GET / HTTP/1.0\r\n\r\n")
        engine.doRead()
        self.assertEqual(backend_far.recv(100), b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual((len(calls), truths), (1, [True]))

    def test_theEndInTheSameEdgeIsReadToo(self) -> None:
        pool, engine, client_far, client, backend_far, protocol = self.joined()
        client_far.send(b"last words")
        client_far.shutdown(socket.SHUT_WR)
        engine.doRead()
        self.assertEqual(backend_far.recv(100), b"last words")
        self.assertTrue(protocol.ended)

    def test_theEndInTheSameEdgeCostsNoReadOfNothing(self) -> None:
        """A short read in an edge that brought the end (and no error) is the last one: the input ends without another."""
        pool, engine, client_far, client, backend_far, protocol = self.joined()
        client_far.send(b"last words")
        client_far.shutdown(socket.SHUT_WR)
        engine.doRead()
        self.assertEqual((client.receives, protocol.ended), (1, True))

    def test_anEndNotKnownIsReadForAnError(self) -> None:
        """
        Called for an event the engine does not know the bits of (as from a
        remembered event), a short read reads again: a reset is a reset.
        """
        pool, engine, client_far, client, backend_far, protocol = self.joined()
        client_far.send(b"last words")
        client_far.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client_far.close()
        lost: list[Any] = []
        protocol.connectionLost = lost.append  # type: ignore[method-assign]
        engine.removeReader(protocol.transport)
        engine.addReader(protocol.transport)
        engine.reactor.advance(0)
        engine.reactor.advance(0)
        self.assertFalse(protocol.ended)
        self.assertEqual([reason.type for reason in lost], [ConnectionLost])

    def test_aReadFillingTheCopySizeTurnsToSplicing(self) -> None:
        pool, engine, client_far, client, backend_far, _ = self.joined()
        client_far.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        data = os.urandom(4 * splice.COPY_SIZE)
        received = b""
        sent = 0
        while len(received) < len(data):
            try:
                sent += client_far.send(data[sent : sent + (1 << 20)])
            except BlockingIOError:
                pass
            engine.doRead()
            try:
                received += backend_far.recv(1 << 20)
            except BlockingIOError:
                pass
        self.assertEqual(received, data)
        self.assertGreater(pool.created, 0)


class CompiledCopyingFirstTests(CopyingFirstTests):
    """The same, on the engine's compiled dispatch loop (which copies in C)."""

    compiled = True


class PipePoolTests(SynchronousTestCase):
    """The pipes of the fast path."""

    skip = NO_ENGINE

    def pool(self, **options: Any) -> pipes.PipePool:
        pool = pipes.PipePool(**options)
        self.addCleanup(pool.close)
        return pool

    def test_pipesAreNonBlockingAndSized(self) -> None:
        pool = self.pool(size=1 << 20)
        read, write = pipe = pool.acquire()
        self.addCleanup(pool.discard, pipe)
        self.assertEqual(fcntl.fcntl(write, fcntl.F_GETPIPE_SZ), 1 << 20)
        self.assertTrue(fcntl.fcntl(read, fcntl.F_GETFL) & os.O_NONBLOCK)
        self.assertTrue(fcntl.fcntl(write, fcntl.F_GETFL) & os.O_NONBLOCK)
        self.assertEqual((pool.created, pool.lent, pool.free), (1, 1, 0))

    def test_sizeTheKernelRefusesFallsBackToItsDefault(self) -> None:
        with open("/proc/sys/fs/pipe-max-size") as f:
            limit = int(f.read())
        pool = self.pool(size=limit * 2)
        read, write = pipe = pool.acquire()
        self.addCleanup(pool.discard, pipe)
        self.assertEqual(pool.size, fcntl.fcntl(write, fcntl.F_GETPIPE_SZ))
        self.assertLess(pool.size, limit * 2)

    def test_releasedPipesAreReusedUpToKeep(self) -> None:
        pool = self.pool(keep=1)
        first, second = pool.acquire(), pool.acquire()
        pool.release(first)
        pool.release(second)
        self.assertEqual((pool.lent, pool.free), (0, 1))
        self.assertRaises(OSError, os.fstat, second[0])
        self.assertEqual(pool.acquire(), first)
        self.assertEqual(pool.created, 2)

    def test_discardClosesAPipeThatHoldsBytes(self) -> None:
        pool = self.pool()
        read, write = pipe = pool.acquire()
        os.write(write, b"left over")
        pool.discard(pipe)
        self.assertEqual((pool.lent, pool.free), (0, 0))
        for fd in pipe:
            with self.assertRaises(OSError) as caught:
                os.fstat(fd)
            self.assertEqual(caught.exception.errno, errno.EBADF)

    def test_closeClosesTheKeptPipes(self) -> None:
        pool = self.pool()
        pipe = pool.acquire()
        pool.release(pipe)
        pool.close()
        self.assertEqual(pool.free, 0)
        self.assertRaises(OSError, os.fstat, pipe[1])
