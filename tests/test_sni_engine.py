"""
SNI routing on real sockets (127.0.0.1, port 0), on both data paths: the
relay engine (the ClientHello read through Python, the rest spliced) and
Twisted's transports (C{[defaults] splice = false}).

The client's first bytes are a real ClientHello; what follows it need not
be TLS (the balancer only reads the hello), so plain backends check that
every byte arrives once, in order, with ends of stream and resets relayed
as on the plain TCP path.
"""

from __future__ import annotations

import hashlib
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from balancer.config.schema import ProxyProtocolConfig, SniConfig
from balancer.proxy.finished import BACKEND_RESET, CLIENT_CLOSED, CLIENT_RESET, FinishedConnection
from balancer.proxy.sni_path import FirstBytes, SniEnginePath
from balancer.proxy.twisted_path import TwistedPath
from balancer.server_service import ServerService
from tests.support.balancers import start_balancer
from tests.support.clients import port_number, serve
from tests.support.hellos import client_hello
from tests.support.peers import Peer, open_client
from tests.support.proxy_protocol_peer import ProxyProtocolPeerFactory
from tests.support.streams import CHUNK, PacedEcho, Streamer, pattern
from tests.support.transports import ITCPStream
from tests.support.waiting import until

HELLO = client_hello(b"a.test")


class HelloStreamer(Streamer):
    """A L{Streamer} whose stream starts with L{HELLO}."""

    def connectionMade(self) -> None:
        self.sent.update(HELLO)
        self.transport.write(HELLO)
        super().connectionMade()


class Blurt(Protocol):
    """A backend that writes C{factory.banner} and closes as soon as it is connected."""

    def connectionMade(self) -> None:
        self.transport.write(self.factory.banner)
        self.transport.loseConnection()


@implementer(IHalfCloseableProtocol)
class Digest(Protocol):
    """Hashes its input; at its end, answers with the digest and byte count, and closes."""

    transport: ITCPStream

    def connectionMade(self) -> None:
        self.digest = hashlib.sha256()
        self.count = 0

    def dataReceived(self, data: bytes) -> None:
        self.digest.update(data)
        self.count += len(data)

    def readConnectionLost(self) -> None:
        self.transport.write(b"%d:%s" % (self.count, self.digest.hexdigest().encode()))
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class Source(Protocol):
    """A backend that sends C{factory.chunks} chunks of L{pattern} as its transport takes them, then closes."""

    def connectionMade(self) -> None:
        self.index = 0
        self.transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self.index >= self.factory.chunks:
            self.transport.unregisterProducer()
            self.transport.loseConnection()
            return
        self.transport.write(pattern(self.index))
        self.index += 1

    def stopProducing(self) -> None:
        pass


class SlowReader(Peer):
    """A client that reads a few chunks, then stops reading for a while, and so on."""

    def connectionMade(self) -> None:
        self.digest = hashlib.sha256()
        self.count = 0
        self.transport.write(HELLO)

    def dataReceived(self, data: bytes) -> None:
        self.digest.update(data)
        self.count += len(data)
        if self.count % (4 * CHUNK) < len(data):
            self.transport.pauseProducing()
            reactor.callLater(0.01, self.transport.resumeProducing)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()


class Recorder(Protocol):
    """A backend recording its bytes and how its connection ended (C{factory.seen})."""

    def connectionMade(self) -> None:
        self.data = b""
        self.factory.seen.append(self)
        self.ended: Deferred[Any] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.ended.callback([reason])


class SniEngineTests(TestCase):
    """SNI routing through real sockets on the relay engine."""

    timeout = 60
    splice = True

    def balancer(self, backend: int, **options: Any) -> ServerService:
        """A started balancer routing by SNI to the backend on port C{backend}."""
        options.setdefault("sni", SniConfig())
        server = start_balancer(self, (f"127.0.0.1:{backend} sni=a.test",), splice=self.splice, **options)
        self.records: list[FinishedConnection] = []
        server.finished.subscribe(self.records.append)
        return server

    def backend(self, protocol: type[Protocol], **attributes: Any) -> Deferred[int]:
        """A backend on 127.0.0.1 port 0; fires with its port."""
        return serve(self, protocol, **attributes).addCallback(port_number)

    @inlineCallbacks
    def relayed(self, sent: bytes) -> Any:
        """
        A client through a balancer to a L{Recorder} backend that received
        what the client C{sent}; fires with (the server, the client, the recorder).
        """
        seen: list[Recorder] = []
        server = self.balancer((yield self.backend(Recorder, seen=seen)))
        client = Peer()
        yield open_client(server.port, client)
        client.transport.write(sent)
        yield until(lambda: bool(seen) and seen[0].data == sent)
        return server, client, seen[0]

    def test_pathOfTheRelays(self) -> None:
        """Spliced after the hello when splicing is on; else on Twisted's transports."""
        server = self.balancer(1)
        self.assertIsInstance(server.path, SniEnginePath if self.splice else TwistedPath)

    @inlineCallbacks
    def test_bigTransfersBothWaysComeBackIdentical(self) -> None:
        """The hello, then 10 MiB, echoed: every byte once, in order, counted once."""
        server = self.balancer((yield self.backend(PacedEcho)))
        client = HelloStreamer(chunks=160)
        yield open_client(server.port, client)
        yield client.closed
        total = len(HELLO) + 160 * CHUNK
        self.assertEqual(client.received_count, total)
        self.assertEqual(client.received.hexdigest(), client.sent.hexdigest())
        yield until(lambda: bool(self.records))
        self.assertEqual((server.counters.traffic.tx, server.counters.traffic.rx), (total, total))
        record = self.records[0]
        self.assertEqual((record.tx, record.rx, record.reason), (total, total, CLIENT_CLOSED))
        self.assertEqual(server.counters.sni_failures, 0)

    @inlineCallbacks
    def test_backendThatWritesAndClosesAtOnce(self) -> None:
        """A backend's answer and end, coming before the hello reached it, still reach the client."""
        server = self.balancer((yield self.backend(Blurt, banner=b"bye")))
        for _ in range(20):
            client = Peer()
            yield open_client(server.port, client)
            client.transport.write(HELLO)
            self.assertEqual((yield client.ended), b"bye")
            client.transport.loseConnection()
            yield client.closed
        yield until(lambda: len(self.records) == 20 and not server.relays)
        self.assertEqual({r.rx for r in self.records}, {3})
        self.assertEqual([b.counters.active_connections for b in server.pool], [0])

    @inlineCallbacks
    def test_helloInTinyPiecesThenHalfClose(self) -> None:
        """
        A hello sent a few bytes at a time, then more bytes and a
        half-close: the backend gets all of it once, and its answer comes
        back after the client's end.
        """
        server = self.balancer((yield self.backend(Digest)))
        client = Peer()
        yield open_client(server.port, client)
        client.transport.setTcpNoDelay(True)
        for at in range(0, len(HELLO), 7):
            client.transport.write(HELLO[at : at + 7])
            yield deferLater(reactor, 0.002, lambda: None)
        client.transport.write(b"after the hello")
        client.transport.loseWriteConnection()
        sent = HELLO + b"after the hello"
        answer = yield client.ended
        self.assertEqual(answer, b"%d:%s" % (len(sent), hashlib.sha256(sent).hexdigest().encode()))
        yield until(lambda: bool(self.records))
        self.assertEqual(self.records[0].reason, CLIENT_CLOSED)
        self.assertEqual(self.records[0].tx, len(sent))

    @inlineCallbacks
    def test_slowReaderGetsEverything(self) -> None:
        """A client that keeps pausing its reading gets the backend's 4 MiB whole."""
        server = self.balancer((yield self.backend(Source, chunks=64)))
        client = SlowReader()
        yield open_client(server.port, client)
        yield client.closed
        expected = hashlib.sha256(b"".join(pattern(i) for i in range(64)))
        self.assertEqual((client.count, client.digest.hexdigest()), (64 * CHUNK, expected.hexdigest()))
        yield until(lambda: bool(self.records))
        self.assertEqual(self.records[0].rx, 64 * CHUNK)

    @inlineCallbacks
    def test_clientResetMidTransferResetsTheBackend(self) -> None:
        """A client reset after its hello and some bytes: the backend is reset, not closed in order."""
        _, client, recorder = yield self.relayed(HELLO + b"x" * 1000)
        client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.transport.abortConnection()
        (reason,) = yield recorder.ended
        self.assertIsInstance(reason.value, ConnectionLost)
        yield until(lambda: bool(self.records))
        self.assertEqual(self.records[0].reason, CLIENT_RESET)

    @inlineCallbacks
    def test_backendResetMidTransferResetsTheClient(self) -> None:
        """A backend reset mid-transfer: the client is reset."""
        _, client, recorder = yield self.relayed(HELLO)
        backend = recorder.transport
        backend.write(b"y" * 100000)
        backend.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        backend.abortConnection()
        yield client.closed
        yield until(lambda: bool(self.records))
        self.assertEqual(self.records[0].reason, BACKEND_RESET)

    @inlineCallbacks
    def test_proxyHeaderThenTheHello(self) -> None:
        """With C{[proxy_protocol]}, the backend gets the header, then the hello, then the rest."""
        backends = ProxyProtocolPeerFactory()
        listening = reactor.listenTCP(0, backends, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        server = self.balancer(listening.getHost().port, proxy_protocol=ProxyProtocolConfig(version="2"))
        client = Peer()
        yield open_client(server.port, client)
        client.transport.write(HELLO + b"ping")
        self.assertEqual((yield client.expect(len(HELLO) + 4)), HELLO + b"ping")
        seen = yield backends.next_peer()
        local = client.transport.getHost()
        self.assertEqual((seen.version, seen.source), (2, (local.host, local.port)))
        client.transport.loseConnection()
        yield client.closed
        yield until(lambda: bool(self.records))
        self.assertEqual(seen.received, HELLO + b"ping")
        self.assertEqual((self.records[0].tx, self.records[0].rx), (len(HELLO) + 4, len(HELLO) + 4))

    @inlineCallbacks
    def test_sessionListedWithItsServerName(self) -> None:
        """While it lasts, the relay is one of the server's sessions, with the name it asked for."""
        server, client, recorder = yield self.relayed(HELLO)
        (relay,) = server.relays.values()
        self.assertEqual((relay.server_name, relay.tx), ("a.test", len(HELLO)))
        client.transport.loseConnection()
        (reason,) = yield recorder.ended
        self.assertIsInstance(reason.value, ConnectionDone)
        yield until(lambda: not server.relays)


class SniTwistedPathTests(SniEngineTests):
    """The same, on Twisted's transports (C{[defaults] splice = false})."""

    splice = False


class FirstBytesTests(TestCase):
    """L{FirstBytes} on a socket pair and a recording engine."""

    def setUp(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.addCleanup(self.theirs.close)
        self.ours.setblocking(False)
        self.engine = RecordingEngine()
        self.client = RecordingClient(self.ours)
        self.first = FirstBytes(self.engine, self.client)  # type: ignore[arg-type]

    def test_readsUntilStopped(self) -> None:
        self.assertEqual(self.engine.calls, [("add", self.ours.fileno())])
        self.theirs.sendall(b"hello")
        self.first.doRead()
        self.assertEqual(self.client.received, [b"hello"])
        self.first.stop()
        self.assertEqual(self.engine.calls[-1], ("remove", self.ours.fileno()))
        self.assertFalse(self.first.active)
        self.ours.close()

    def test_endOfInputPassedOn(self) -> None:
        self.theirs.shutdown(socket.SHUT_WR)
        self.first.doRead()
        self.assertTrue(self.client.ended)
        self.assertFalse(self.first.active)
        self.ours.close()

    def test_stopAfterTheSocketClosedLeavesTheDescriptorAlone(self) -> None:
        """Its descriptor may already be a new socket's, with a reader of its own."""
        self.ours.close()
        self.first.stop()
        self.assertEqual([call for call in self.engine.calls if call[0] == "remove"], [])


class RecordingEngine:
    """What L{FirstBytes} asks of the engine, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def addReader(self, reader: Any) -> None:
        self.calls.append(("add", reader.fileno()))

    def removeReader(self, reader: Any) -> None:
        self.calls.append(("remove", reader.fileno()))

    def read_again(self, reader: Any) -> None:
        self.calls.append(("again", reader.fileno()))


class RecordingTransport:
    """The part of a L{SplicedTransport} that L{FirstBytes} uses."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.aborted = False

    def getHandle(self) -> socket.socket:
        return self.sock

    def fileno(self) -> int:
        return self.fd

    def abortConnection(self) -> None:
        self.aborted = True


class RecordingClient:
    """A client side recording what L{FirstBytes} gives it."""

    def __init__(self, sock: socket.socket) -> None:
        self.transport = RecordingTransport(sock)
        self.received: list[bytes] = []
        self.ended = False

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def readConnectionLost(self) -> None:
        self.ended = True
