"""
Listening and connecting on the relay engine (L{balancer.proxy.engine.sockets})
with real sockets on the loopback (127.0.0.1 and ::1, port 0) and the
global reactor.  Each test has an engine of its own, nested in the reactor,
and leaves it watching nothing.
"""

from __future__ import annotations

import errno
import os
import select
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP6ClientEndpoint, connectProtocol
from twisted.internet.error import (
    CannotListenError,
    ConnectionDone,
    ConnectionRefusedError,
    DNSLookupError,
    TimeoutError,
    UserError,
)
from twisted.internet.protocol import Factory as TwistedFactory
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from balancer.proxy.engine import sockets
from balancer.proxy.engine.engine import Engine
from balancer.proxy.engine.splice import SplicedTransport
from tests.support.peers import open_client
from tests.support.skips import NO_ENGINE
from tests.support.waiting import until

skip = NO_ENGINE


class Recorder(Protocol):
    """The protocol in front of an engine socket: keeps its transport and why it ended."""

    reason: Failure | None = None

    def __init__(self, factory: Factory) -> None:
        self.factory = factory
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if not self.factory.built.called:
            self.factory.built.callback(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.reason = reason
        self.lost.callback(None)


class Factory:
    """
    A factory for the engine's listener or connector: records every
    C{buildProtocol} (and when, on the reactor's clock) and every failed
    connect; builds L{Recorder}s, or nothing with C{refuse}.  C{built} fires
    with the first protocol once it is connected.
    """

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.addresses: list[Any] = []
        self.built_at: list[float] = []
        self.protocols: list[Recorder] = []
        self.failures: list[tuple[Any, Failure]] = []
        self.built: Deferred[Recorder] = Deferred()
        self.failed: Deferred[None] = Deferred()

    def buildProtocol(self, address: Any) -> Recorder | None:
        self.addresses.append(address)
        self.built_at.append(reactor.seconds())
        if self.refuse:
            return None
        protocol = Recorder(self)
        self.protocols.append(protocol)
        return protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.failures.append((connector, reason))
        if not self.failed.called:
            self.failed.callback(None)

    def close_all(self) -> None:
        """Close the connections made (after the test)."""
        for protocol in self.protocols:
            protocol.transport.loseConnection()


class Client(Protocol):
    """A Twisted client (or server side) that collects what it receives until the connection ends."""

    reason: Failure | None = None

    def __init__(self) -> None:
        self.data = b""
        self.made: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.made.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.reason = reason
        self.closed.callback(None)


class Exhausted:
    """
    A listening socket whose first C{accept} fails with C{error} (by default
    as a process out of file descriptors does); later ones accept from the
    real socket.
    """

    def __init__(self, real: socket.socket, error: int = errno.EMFILE) -> None:
        self.real = real
        self.error = error
        self.accepts: list[float] = []

    def fileno(self) -> int:
        return self.real.fileno()

    def getsockname(self) -> Any:
        return self.real.getsockname()

    def close(self) -> None:
        self.real.close()

    def accept(self) -> tuple[socket.socket, Any]:
        self.accepts.append(reactor.seconds())
        if len(self.accepts) == 1:
            raise OSError(self.error, os.strerror(self.error))
        return self.real.accept()


class Resolving:
    """The global reactor, except that names resolve when the test says (C{pending})."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, Deferred[str]]] = []

    def resolve(self, name: str, timeout: Any = None) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        self.pending.append((name, d))
        return d

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


class _EngineTestCase(TestCase):
    """A test with an engine of its own on the global reactor, watching nothing at the end."""

    timeout = 10

    def setUp(self) -> None:
        self.engine = self.make_engine(reactor)

    def make_engine(self, outer: Any) -> Engine:
        engine = Engine(outer)

        def check() -> None:
            # Removing deadlines leaves their reactor call until the engine is idle.
            engine.deadlines.stop_if_idle()
            watched, nested = engine.watched, engine in reactor.getReaders()
            engine.close()
            self.assertEqual((watched, nested), (0, False), "the engine still watches sockets")

        self.addCleanup(check)
        return engine

    def nested(self) -> bool:
        """Whether the engine is one of the reactor's readers."""
        return self.engine in reactor.getReaders()

    def listen(
        self, factory: Factory, port: int = 0, interface: str = "127.0.0.1", **options: Any
    ) -> sockets.EngineListener:
        """A listener on the engine, stopped (and its clients closed) after the test."""
        listener = sockets.listen(self.engine, port, factory, interface, **options)
        self.addCleanup(listener.stopListening)
        self.addCleanup(factory.close_all)
        return listener

    def server(self, interface: str = "127.0.0.1") -> tuple[int, list[Client]]:
        """A Twisted server on port 0: its port and the list of its connections (closed after the test)."""
        connections: list[Client] = []

        def build() -> Client:
            client = Client()
            connections.append(client)
            return client

        def close() -> Deferred[Any]:
            for connection in connections:
                connection.transport.loseConnection()
            return port.stopListening()

        factory = TwistedFactory()
        factory.buildProtocol = lambda address: build()  # type: ignore[method-assign]
        port = reactor.listenTCP(0, factory, interface=interface)
        self.addCleanup(close)
        return port.getHost().port, connections

    def raw_listener(self, backlog: int) -> socket.socket:
        """A plain listening socket on 127.0.0.1 port 0 that nobody accepts from, closed after the test."""
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen(backlog)
        sock.setblocking(False)
        return sock


class ListenerTests(_EngineTestCase):
    """L{sockets.listen}: clients accepted into L{SplicedTransport}s."""

    @inlineCallbacks
    def test_clientGetsASplicedTransport(self) -> Any:
        factory = Factory()
        listener = self.listen(factory)
        port = listener.getHost().port
        client = Client()
        yield open_client(port, client)
        protocol = yield factory.built
        here = client.transport.getHost()
        transport = protocol.transport
        self.assertIsInstance(transport, SplicedTransport)
        self.assertIs(transport.protocol, protocol)
        self.assertEqual(factory.addresses, [IPv4Address("TCP", "127.0.0.1", here.port)])
        self.assertEqual(transport.getPeer(), IPv4Address("TCP", "127.0.0.1", here.port))
        self.assertEqual(transport.getHost(), IPv4Address("TCP", "127.0.0.1", port))
        handle = transport.getHandle()
        self.assertFalse(handle.getblocking())
        self.assertTrue(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        self.assertEqual(self.engine.watched, 1, "an accepted socket is watched once it reads or writes")
        transport.loseConnection()
        yield client.closed
        self.assertTrue(client.reason.check(ConnectionDone))
        yield protocol.lost
        self.assertTrue(protocol.reason.check(ConnectionDone))

    def test_getHostGivesTheRealPort(self) -> None:
        listener = self.listen(Factory())
        host = listener.getHost()
        self.assertIsInstance(host, IPv4Address)
        self.assertEqual((host.type, host.host), ("TCP", "127.0.0.1"))
        self.assertNotEqual(host.port, 0)
        self.assertEqual(host.port, listener._socket.getsockname()[1])
        self.assertTrue(self.nested())
        self.assertEqual(self.engine.getReaders(), [listener])

    @inlineCallbacks
    def test_stopListeningRefusesLaterClients(self) -> Any:
        listener = self.listen(Factory())
        port = listener.getHost().port
        listener.stopListening()
        listener.stopListening()
        self.assertEqual((self.engine.watched, self.nested()), (0, False))
        yield self.assertFailure(open_client(port, Client()), ConnectionRefusedError)

    def test_addressInUseRaisesCannotListenError(self) -> None:
        port = self.listen(Factory()).getHost().port
        error = self.assertRaises(CannotListenError, sockets.listen, self.engine, port, Factory(), "127.0.0.1")
        self.assertEqual(error.port, port)
        self.assertEqual(error.socketError.errno, errno.EADDRINUSE)
        self.assertEqual(self.engine.watched, 1)

    @inlineCallbacks
    def test_reusePortSharesOnePort(self) -> Any:
        first, second = Factory(), Factory()
        port = self.listen(first, reuse_port=True).getHost().port
        other = self.listen(second, port, reuse_port=True)
        self.assertEqual(other.getHost().port, port)
        self.assertEqual(self.engine.watched, 2)
        self.assertRaises(CannotListenError, sockets.listen, self.engine, port, Factory(), "127.0.0.1")
        clients = [Client() for _ in range(8)]
        for client in clients:
            yield open_client(port, client)
        yield until(lambda: len(first.addresses) + len(second.addresses) == len(clients))
        first.close_all()
        second.close_all()
        for client in clients:
            yield client.closed

    @inlineCallbacks
    def test_listensOnIPv6(self) -> Any:
        factory = Factory()
        listener = self.listen(factory, interface="::1")
        host = listener.getHost()
        self.assertIsInstance(host, IPv6Address)
        self.assertEqual(host.host, "::1")
        client = Client()
        yield connectProtocol(TCP6ClientEndpoint(reactor, "::1", host.port, timeout=5), client)
        protocol = yield factory.built
        here = client.transport.getHost()
        self.assertEqual(factory.addresses, [IPv6Address("TCP", "::1", here.port)])
        self.assertEqual(protocol.transport.getPeer(), IPv6Address("TCP", "::1", here.port))
        self.assertEqual(protocol.transport.getHost(), IPv6Address("TCP", "::1", host.port))
        protocol.transport.loseConnection()
        yield client.closed

    @inlineCallbacks
    def test_outOfFileDescriptorsPausesAccepting(self) -> Any:
        """
        C{accept} fails with EMFILE: the listener leaves the epoll set (so
        that the waiting client does not wake the engine again and again)
        for L{sockets.ACCEPT_PAUSE} seconds, then accepts the client.
        """
        factory = Factory()
        listener = self.listen(factory)
        exhausted = listener._socket = Exhausted(listener._socket)
        during: dict[str, Any] = {}
        pause = listener._pause

        def paused(error: OSError) -> None:
            pause(error)
            during["reader"] = listener in self.engine.getReaders()
            during["watched"] = self.engine.watched
            during["woken"] = bool(select.select([self.engine.fileno()], [], [], 0)[0])

        listener._pause = paused  # type: ignore[method-assign]
        client = Client()
        yield open_client(listener.getHost().port, client)
        yield until(lambda: bool(during))
        self.assertEqual(len(exhausted.accepts), 1)
        self.assertFalse(during["reader"])
        self.assertEqual(during["watched"], 0)
        self.assertFalse(during["woken"], "the paused listener is still in the epoll set")
        protocol = yield factory.built
        self.assertEqual(len(exhausted.accepts), 2)
        self.assertGreaterEqual(factory.built_at[0] - exhausted.accepts[0], sockets.ACCEPT_PAUSE)
        self.assertEqual(self.engine.getReaders(), [listener])
        protocol.transport.loseConnection()
        yield client.closed

    @inlineCallbacks
    def test_errorOfOneClientSkipsToTheNext(self) -> Any:
        """
        An error accept(2) reports for one connection (here EPERM, as
        netfilter may give) neither pauses nor stops the listener: the next
        C{accept} takes the waiting client.
        """
        factory = Factory()
        listener = self.listen(factory)
        refused = listener._socket = Exhausted(listener._socket, errno.EPERM)
        client = Client()
        yield open_client(listener.getHost().port, client)
        protocol = yield factory.built
        self.assertEqual(len(refused.accepts), 3)  # EPERM, the client, then EAGAIN
        self.assertEqual(self.engine.getReaders(), [listener])
        protocol.transport.loseConnection()
        yield client.closed

    @inlineCallbacks
    def test_stopListeningWhilePausedDoesNotResume(self) -> Any:
        factory = Factory()
        listener = self.listen(factory)
        exhausted = listener._socket = Exhausted(listener._socket)
        client = Client()
        yield open_client(listener.getHost().port, client)
        yield until(lambda: bool(exhausted.accepts))
        listener.stopListening()
        self.assertEqual([call for call in reactor.getDelayedCalls() if "_accept_again" in repr(call)], [])
        yield client.closed
        self.assertEqual(factory.addresses, [])

    @inlineCallbacks
    def test_factoryBuildingNothingClosesTheClient(self) -> Any:
        factory = Factory(refuse=True)
        listener = self.listen(factory)
        client = Client()
        yield open_client(listener.getHost().port, client)
        yield client.closed
        self.assertEqual(client.data, b"")
        self.assertTrue(client.reason.check(ConnectionDone))
        self.assertEqual(len(factory.addresses), 1)
        self.assertEqual(self.engine.watched, 1)


class ConnectorTests(_EngineTestCase):
    """L{sockets.EngineConnector}: connections to backends, or C{clientConnectionFailed}."""

    @inlineCallbacks
    def test_connectsAndHandsASplicedTransportToTheFactory(self) -> Any:
        port, connections = self.server()
        factory = Factory()
        connector = sockets.EngineConnector(self.engine, "127.0.0.1", port, factory, 10)
        self.assertEqual(len(self.engine.deadlines), 1)
        self.assertEqual(self.engine.getWriters(), [connector])
        protocol = yield factory.built
        transport = protocol.transport
        self.assertIsInstance(transport, SplicedTransport)
        self.assertEqual(factory.addresses, [None])
        self.assertEqual(transport.getPeer(), IPv4Address("TCP", "127.0.0.1", port))
        self.assertEqual((len(self.engine.deadlines), self.engine.getWriters(), factory.failures), (0, [], []))
        self.assertTrue(transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        yield until(lambda: bool(connections))
        (server_side,) = connections
        self.assertEqual(transport.getHost(), server_side.transport.getPeer())
        transport.write(b"hello")
        yield until(lambda: server_side.data == b"hello")
        transport.loseConnection()
        yield server_side.closed
        self.assertEqual(factory.failures, [])

    @inlineCallbacks
    def test_aConnectWritableWithoutAnErrorReadsNoError(self) -> Any:
        """
        Writable with no error or hang-up in the event, the socket is
        connected: no C{getsockopt(SO_ERROR)}.  A refusal is still read
        (L{test_refusedCallsClientConnectionFailed}).
        """
        reads: list[int] = []

        class Counting(socket.socket):
            def getsockopt(self, level: int, name: int, *rest: Any) -> Any:
                if (level, name) == (socket.SOL_SOCKET, socket.SO_ERROR):
                    reads.append(name)
                return super().getsockopt(level, name, *rest)

        self.patch(socket, "socket", Counting)
        port, connections = self.server()
        factory = Factory()
        sockets.EngineConnector(self.engine, "127.0.0.1", port, factory, 10)
        protocol = yield factory.built
        self.assertEqual((reads, factory.failures), ([], []))
        yield until(lambda: bool(connections))
        protocol.transport.loseConnection()
        yield connections[0].closed

    @inlineCallbacks
    def test_connectsOverIPv6(self) -> Any:
        port, connections = self.server("::1")
        factory = Factory()
        sockets.EngineConnector(self.engine, "::1", port, factory, 10)
        protocol = yield factory.built
        self.assertEqual(protocol.transport.getPeer(), IPv6Address("TCP", "::1", port))
        yield until(lambda: bool(connections))
        protocol.transport.loseConnection()
        yield connections[0].closed

    @inlineCallbacks
    def test_refusedCallsClientConnectionFailed(self) -> Any:
        # Bound but not listening: refused, and the port cannot be taken meanwhile.
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        factory = Factory()
        connector = sockets.EngineConnector(self.engine, "127.0.0.1", holder.getsockname()[1], factory, 10)
        sock = connector._socket
        yield factory.failed
        ((_, reason),) = factory.failures
        self.assertTrue(reason.check(ConnectionRefusedError))
        self.assertEqual([c for c, _ in factory.failures], [connector])
        self.assertEqual(sock.fileno(), -1, "the socket is closed")
        self.assertEqual((factory.addresses, len(self.engine.deadlines), self.engine.watched), ([], 0, 0))
        self.assertFalse(self.nested())

    @inlineCallbacks
    def test_timesOutOnABackendThatDoesNotAnswer(self) -> Any:
        """
        A listener whose backlog is full drops a new client's SYN: the
        connect times out, not before its timeout, and the socket is closed.
        """
        backend = self.raw_listener(0)
        filler = socket.create_connection(backend.getsockname(), timeout=5)
        self.addCleanup(filler.close)
        factory = Factory()
        start = reactor.seconds()
        connector = sockets.EngineConnector(self.engine, "127.0.0.1", backend.getsockname()[1], factory, 0.2)
        sock = connector._socket
        yield factory.failed
        ((_, reason),) = factory.failures
        elapsed = reactor.seconds() - start
        self.assertTrue(reason.check(TimeoutError))
        self.assertGreaterEqual(elapsed, 0.2)
        self.assertLess(elapsed, 2)
        self.assertEqual(sock.fileno(), -1)
        self.assertEqual((len(factory.failures), factory.addresses, self.engine.watched), (1, [], 0))
        self.assertEqual([call for call in reactor.getDelayedCalls() if "Deadlines" in repr(call)], [])

    def test_deadlinePassedReportsATimeoutOnce(self) -> None:
        backend = self.raw_listener(8)
        factory = Factory()
        connector = sockets.EngineConnector(self.engine, "127.0.0.1", backend.getsockname()[1], factory, 10)
        sock = connector._socket
        connector.deadline_passed()
        connector.deadline_passed()
        connector.stopConnecting()
        ((who, reason),) = factory.failures
        self.assertIs(who, connector)
        self.assertTrue(reason.check(TimeoutError))
        self.assertEqual(sock.fileno(), -1)
        self.assertEqual((len(self.engine.deadlines), self.engine.watched), (0, 0))

    @inlineCallbacks
    def test_stopConnectingFailsWithUserErrorOnce(self) -> Any:
        backend = self.raw_listener(8)
        factory = Factory()
        connector = sockets.EngineConnector(self.engine, "127.0.0.1", backend.getsockname()[1], factory, 10)
        sock = connector._socket
        connector.stopConnecting()
        connector.stopConnecting()
        connector.deadline_passed()
        ((who, reason),) = factory.failures
        self.assertIs(who, connector)
        self.assertIs(type(reason.value), UserError)
        self.assertEqual(sock.fileno(), -1)
        self.assertEqual((len(self.engine.deadlines), self.engine.watched), (0, 0))
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual((factory.addresses, len(factory.failures)), ([], 1))

    @inlineCallbacks
    def test_hostnameIsResolved(self) -> Any:
        port, connections = self.server()
        factory = Factory()
        sockets.EngineConnector(self.engine, "localhost", port, factory, 10)
        protocol = yield factory.built
        self.assertEqual(protocol.transport.getPeer(), IPv4Address("TCP", "127.0.0.1", port))
        yield until(lambda: bool(connections))
        protocol.transport.loseConnection()
        yield connections[0].closed

    def test_failedResolutionCallsClientConnectionFailed(self) -> None:
        outer = Resolving()
        engine = self.make_engine(outer)
        factory = Factory()
        connector = sockets.EngineConnector(engine, "backend.test", 80, factory, 10)
        ((name, resolved),) = outer.pending
        self.assertEqual(name, "backend.test")
        resolved.errback(DNSLookupError("backend.test"))
        ((who, reason),) = factory.failures
        self.assertIs(who, connector)
        self.assertTrue(reason.check(DNSLookupError))
        self.assertEqual((len(engine.deadlines), engine.watched), (0, 0))

    def test_stopConnectingWhileResolving(self) -> None:
        """Stopped before the name resolved: no socket is made when it does."""
        outer = Resolving()
        engine = self.make_engine(outer)
        factory = Factory()
        connector = sockets.EngineConnector(engine, "backend.test", 80, factory, 10)
        connector.stopConnecting()
        ((name, resolved),) = outer.pending
        resolved.callback("127.0.0.1")
        ((who, reason),) = factory.failures
        self.assertIs(type(reason.value), UserError)
        self.assertEqual((engine.watched, engine.getWriters(), connector.fileno()), (0, [], -1))

    @inlineCallbacks
    def test_factoryBuildingNothingClosesTheConnectionQuietly(self) -> Any:
        """As with C{connectTCP}: a factory that builds no protocol has the connection closed, and nothing is logged."""
        port, connections = self.server()
        factory = Factory(refuse=True)
        sockets.EngineConnector(self.engine, "127.0.0.1", port, factory, 10)
        yield until(lambda: bool(factory.addresses))
        self.assertEqual(factory.addresses, [None])
        yield until(lambda: bool(connections))
        yield connections[0].closed
        self.assertEqual((factory.failures, self.engine.watched), ([], 0))
        self.assertEqual(self.flushLoggedErrors(), [])
