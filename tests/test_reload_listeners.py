"""
A server's listener when its definition changes, on fakes: on another
address the new one binds before the old one closes (gently:
L{balancer.listeners.closing}); on the same address the new server takes
the old one's socket (L{balancer.listeners.handover}); a failure leaves the
old listener serving.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import attrs
from cryptography import x509
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from balancer.config.addresses import HostPort
from balancer.config.schema import (
    BackendsTlsConfig, Config, DefaultsConfig, SniConfig, TlsConfig, UdpConfig)
from balancer.listeners.closing import LINGER, close_gently, refuse_new_clients
from balancer.listeners.handover import hand_over, same_socket
from balancer.listening import BindError
from balancer.proxy.engine.path import EnginePath
from balancer.proxy.engine.tls_socket import TlsTransports
from balancer.proxy.paths import DataPaths
from balancer.proxy.sni import SniClientSide
from balancer.proxy.tcp import ClientSide, RelayFactory
from balancer.proxy.tls_path import TlsEnginePath
from balancer.proxy.tls_relay import TlsClientSide
from balancer.proxy.twisted_path import TwistedPath
from balancer.root_service import BalancerService
from balancer.server_service import ServerService
from balancer.stats import RateClock
from tests.support.certs import self_signed
from tests.support.clients import Echo, serve
from tests.support.hellos import client_hello
from tests.support.ports import free_port
from tests.support.reactors import ListeningReactor, UdpReactor
from tests.support.relays import server_config
from tests.support.skips import NO_ENGINE


class OrderedReactor(ListeningReactor):
    """A L{ListeningReactor} that notes, at each new listener, which ports were listening."""

    def __init__(self, taken: tuple[int, ...] = ()) -> None:
        super().__init__(taken)
        self.at_listen: list[tuple[int, list[int]]] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        self.at_listen.append((port, self.listening()))
        return super().listenTCP(port, factory, backlog, interface)


def started(reactor: Any, config: Any) -> BalancerService:
    """A started balancer of one server, "web", of C{config}."""
    balancer = BalancerService(Config(servers={"web": config}, defaults=DefaultsConfig(splice=False)), reactor)
    balancer.privilegedStartService()
    balancer.startService()
    return balancer


class RebindTests(SynchronousTestCase):
    """A new address: bind first, then close the old."""

    def test_newAddressBoundBeforeTheOldCloses(self) -> None:
        reactor = OrderedReactor()
        balancer = started(reactor, server_config(bind=HostPort("127.0.0.1", 3000)))
        self.successResultOf(balancer.update_server("web", server_config(bind=HostPort("127.0.0.1", 3001))))
        self.assertEqual(reactor.at_listen, [(3000, []), (3001, [3000])])
        self.assertEqual(reactor.listening(), [3001])

    def test_aFailedBindLeavesTheOldServing(self) -> None:
        reactor = OrderedReactor(taken=(3001,))
        balancer = started(reactor, server_config(bind=HostPort("127.0.0.1", 3000)))
        old = balancer.server("web")
        self.failureResultOf(balancer.update_server("web", server_config(bind=HostPort("127.0.0.1", 3001))), BindError)
        self.assertIs(balancer.server("web"), old)
        self.assertEqual(reactor.listening(), [3000])

    def test_aProtocolChangeOnTheSamePortIsANewSocket(self) -> None:
        self.assertFalse(same_socket(server_config(), server_config(protocol="udp")))
        self.assertTrue(same_socket(server_config(), server_config(sni=SniConfig())))
        self.assertFalse(same_socket(server_config(), server_config(bind=HostPort("127.0.0.1", 1))))


class SameSocketTests(SynchronousTestCase):
    """The same address: the socket stays, what serves it changes."""

    def test_listenerChangeKeepsThePortAndServesTheNewServer(self) -> None:
        reactor = ListeningReactor()
        balancer = started(reactor, server_config(bind=HostPort("127.0.0.1", 3000)))
        old = balancer.server("web")
        port: Any = reactor.ports[0]
        port.factory = RelayFactory(old)  # as listenTCP's port holds it
        self.successResultOf(balancer.update_server("web", server_config(bind=HostPort("127.0.0.1", 3000),
                                                                         sni=SniConfig())))
        new = balancer.server("web")
        self.assertIsNot(new, old)
        self.assertEqual(len(reactor.tcpServers), 1, "no new listener")
        self.assertFalse(port.stopped)
        self.assertIsInstance(port.factory, RelayFactory)
        self.assertIs(port.factory.server, new)
        self.assertIs(port.factory.side, SniClientSide)
        self.assertFalse(old.running)
        self.assertEqual(new.address, "127.0.0.1:3000")
        self.successResultOf(balancer.stopService())
        self.assertTrue(port.stopped, "the new server closes it when it stops")

    def test_listenerThatCannotBeSetUpLeavesTheOldServing(self) -> None:
        reactor = ListeningReactor()
        balancer = started(reactor, server_config(bind=HostPort("127.0.0.1", 3000)))
        old = balancer.server("web")
        port: Any = reactor.ports[0]
        port.factory = factory = RelayFactory(old)
        tls = TlsConfig(cert_path="/nonexistent/c.pem", key_path="/nonexistent/k.pem")
        failure = self.failureResultOf(
            balancer.update_server("web", server_config(bind=HostPort("127.0.0.1", 3000), protocol="tls", tls=tls)),
            BindError)
        self.assertIn("/nonexistent/c.pem", str(failure.value))
        self.assertIs(balancer.server("web"), old)
        self.assertIs(port.factory, factory)
        self.assertFalse(port.stopped)
        self.assertTrue(old.running)

    def test_udpSocketAdoptedByTheNewProxy(self) -> None:
        reactor = AdoptingUdpReactor()
        config = server_config(bind=HostPort("127.0.0.1", 5300), protocol="udp")
        balancer = started(reactor, config)
        old = balancer.server("web")
        port: Any = reactor.udpPorts[0]
        self.successResultOf(balancer.update_server("web", attrs.evolve(config, udp=UdpConfig(max_requests=1))))
        new = balancer.server("web")
        [(fileno, family, protocol, size)] = reactor.adoptedPorts
        self.assertEqual((fileno, family), (port.fileno(), socket.AF_INET))
        self.assertIs(protocol, new.udp)
        self.assertIsNot(protocol, old.udp)
        self.assertTrue(port.stopped)


class AdoptingUdpReactor(UdpReactor):
    """A L{UdpReactor} whose UDP ports have a descriptor and record being closed."""

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> Any:
        transport: Any = super().listenUDP(port, protocol, interface, maxPacketSize)
        transport.fileno = lambda: 42
        transport.stopped = False

        def stop() -> Deferred[None]:
            transport.stopped = True
            return succeed(None)

        transport.stopListening = stop
        return transport


class FakeEngine:
    """The part of the relay engine a hand-over uses: taking a listener out of its epoll set."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def unlisten(self, listener: Any) -> None:
        self.events.append("unlisten")


class EnginePort:
    """A listener on the engine: a descriptor, an address; closing it is recorded."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def fileno(self) -> int:
        return 7

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 3000)

    def stopListening(self) -> None:
        self.events.append("closed")

    def serve(self, factory: Any, transport: Any = None) -> None:
        self.events.append("serve")
        self.served = (factory, transport)


class HandOverTests(SynchronousTestCase):
    """Between data paths."""

    def setUp(self) -> None:
        self.events: list[str] = []
        self.reactor = MemoryReactorClock()
        engine: Any = FakeEngine(self.events)
        self.paths = DataPaths(self.reactor)
        self.engine = self.paths.engine = EnginePath(engine)
        self.tls_engine = self.paths.tls_engine = TlsEnginePath(engine)

    def server(self, **options: Any) -> ServerService:
        return ServerService("web", server_config(**options), self.reactor, RateClock(self.reactor), paths=self.paths)

    def test_fromTheEngineToTwistedAdoptsTheSocket(self) -> None:
        server = self.server(sni=SniConfig())
        path, port = hand_over(EnginePort(self.events), self.engine, server, self.paths)
        self.assertIsInstance(path, TwistedPath)
        [(fileno, family, factory)] = self.reactor.adoptedPorts
        self.assertEqual((fileno, family, factory.side), (7, socket.AF_INET, SniClientSide))
        self.assertIs(factory.server, server)
        self.assertEqual(self.events, ["unlisten", "closed"])

    def test_onTwistedStaysOnTwisted(self) -> None:
        server = self.server()
        self.assertIs(server.path, self.paths.engine, "plain TCP would run on the engine")
        port = EnginePort(self.events)
        path, kept = hand_over(port, self.paths.twisted, server, self.paths)
        self.assertIs(path, self.paths.twisted)
        self.assertIs(kept, port)
        self.assertIs(port.factory.side, ClientSide)  # type: ignore[attr-defined]
        self.assertEqual((self.events, self.reactor.adoptedPorts), ([], []))

    def test_samePathOnTheEngineServesTheNewServer(self) -> None:
        """A new definition that runs on the same engine path keeps the engine: its listener serves the new server."""
        server = self.server()
        port = EnginePort(self.events)
        path, kept = hand_over(port, self.engine, server, self.paths)
        self.assertEqual((path, kept, self.events), (self.engine, port, ["serve"]))
        factory, _ = port.served
        self.assertEqual((factory.side, factory.server), (ClientSide, server))

    def test_tlsFilesReadAgainStayOnTheEngine(self) -> None:
        """
        A TLS server on the engine whose files are read again stays there
        (its relays in flight go on with the engine): the listener makes
        the next clients' TLS transports with the new certificate.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        cert, key, _ = self_signed(directory)
        server = self.server(protocol="tls", tls=TlsConfig(cert_path=cert, key_path=key))
        self.assertIs(server.path, self.tls_engine)
        port = EnginePort(self.events)
        path, kept = hand_over(port, self.tls_engine, server, self.paths)
        self.assertEqual((path, kept, self.events), (self.tls_engine, port, ["serve"]))
        factory, transports = port.served
        self.assertEqual((factory.side, factory.server), (TlsClientSide, server))
        self.assertIsInstance(transports, TlsTransports)
        with open(cert, "rb") as f:
            expected = x509.load_pem_x509_certificate(f.read())
        served = SSL.Connection(transports.context, None).get_certificate()
        assert served is not None
        self.assertEqual(served.to_cryptography(), expected)

    def test_backendTlsOnTheEngineTakesTheSocketToTwisted(self) -> None:
        server = self.server(backends_tls=BackendsTlsConfig())
        path, _ = hand_over(EnginePort(self.events), self.engine, server, self.paths)
        self.assertIsInstance(path, TwistedPath)


class GentleCloseTests(SynchronousTestCase):
    """Closing a listening socket without resetting a queued client."""

    def listener(self) -> socket.socket:
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        return sock

    def test_filterRefusesNewClientsAndKeepsQueuedOnes(self) -> None:
        listener = self.listener()
        address = listener.getsockname()
        queued = socket.create_connection(address)
        self.addCleanup(queued.close)
        self.assertTrue(refuse_new_clients(listener.fileno()))
        late = socket.socket()
        self.addCleanup(late.close)
        late.setblocking(False)
        self.assertEqual(late.connect_ex(address), errno.EINPROGRESS)
        accepted, _ = listener.accept()
        self.addCleanup(accepted.close)
        queued.sendall(b"served")
        self.assertEqual(accepted.recv(6), b"served")
        listener.setblocking(False)
        self.assertRaises(BlockingIOError, listener.accept)

    def test_closesAfterTheLinger(self) -> None:
        listener = self.listener()
        clock = Clock()
        closed: list[bool] = []
        port = type("Port", (), {
            "fileno": lambda self: listener.fileno(),
            "getHost": lambda self: IPv4Address("TCP", "127.0.0.1", 1),
            "stopListening": lambda self: closed.append(True),
        })()
        done = close_gently(port, clock)
        self.assertEqual(closed, [])
        clock.advance(LINGER)
        self.assertEqual(closed, [True])
        self.successResultOf(done)

    def test_withoutADescriptorAtOnce(self) -> None:
        closed: list[bool] = []
        port = type("Port", (), {"stopListening": lambda self: closed.append(True)})()
        self.successResultOf(close_gently(port, Clock()))
        self.assertEqual(closed, [True])



class QueuedClientTests(TestCase):
    """
    On 127.0.0.1, in this process: a client the kernel has queued in a
    server's backlog while its definition changes (the reactor has not run
    in between, so none was accepted) is served, not reset.
    """

    timeout = 30

    @inlineCallbacks
    def start(self, splice: bool, **options: Any) -> Any:
        """A started balancer of "web" relaying to an echo backend; fires with (balancer, its config)."""
        echo = yield serve(self, Echo)
        config = server_config((f"127.0.0.1:{echo.getHost().port}",), **options)
        balancer = BalancerService(Config(servers={"web": config}, defaults=DefaultsConfig(splice=splice)), reactor)
        balancer.privilegedStartService()
        balancer.startService()
        self.addCleanup(balancer.stopService)
        return balancer, config

    def queue(self, port: int, payload: bytes) -> socket.socket:
        """A client connected to C{port} (in its backlog: the reactor has not run), that sent C{payload} and its end of stream."""
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(client.close)
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        return client

    def answer(self, client: socket.socket) -> Deferred[bytes]:
        """Everything C{client} receives until the end of stream (read in a thread); a reset fails it."""

        def read() -> bytes:
            chunks: list[bytes] = []
            while True:
                chunk = client.recv(65536)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)

        return deferToThread(read)

    @inlineCallbacks
    def sameSocket(self, splice: bool) -> Any:
        balancer, config = yield self.start(splice)
        hello = client_hello(b"web.test")
        client = self.queue(balancer.server("web").port, hello)
        sni = attrs.evolve(config, sni=SniConfig(unexpected_hostname_strategy="any"))
        yield balancer.update_server("web", sni)
        self.assertEqual(balancer.server("web").config, sni)
        received = yield self.answer(client)
        self.assertEqual(received, hello)

    def test_sameSocketOnTwisted(self) -> Any:
        return self.sameSocket(splice=False)

    def test_sameSocketFromTheEngineToTwisted(self) -> Any:
        return self.sameSocket(splice=True)

    test_sameSocketFromTheEngineToTwisted.skip = NO_ENGINE  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_newAddressServesThoseQueuedOnTheOld(self) -> Any:
        balancer, config = yield self.start(True)
        old = balancer.server("web").port
        client = self.queue(old, b"queued on the old address")
        yield balancer.update_server("web", attrs.evolve(config, bind=HostPort("127.0.0.1", free_port())))
        received = yield self.answer(client)
        self.assertEqual(received, b"queued on the old address")
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", old), timeout=10).close()
