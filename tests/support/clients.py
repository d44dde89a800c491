"""Small real-socket TCP clients and servers for integration tests (127.0.0.1, port 0)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHalfCloseableProtocol, IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.support.transports import ITCPStream


@implementer(IHalfCloseableProtocol)
class Collector(Protocol):
    """Sends a payload, optionally shuts down its write side, and collects the answer until close."""

    transport: ITCPStream

    def __init__(self, payload: bytes, half_close: bool) -> None:
        self.payload = payload
        self.half_close = half_close
        self.received: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        if self.payload:
            self.transport.write(self.payload)
        if self.half_close:
            self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(b"".join(self.received))


def exchange(port: int, payload: bytes = b"", *, half_close: bool = True, host: str = "127.0.0.1",
             bind_host: str | None = None) -> Deferred[bytes]:
    """Connect to C{host:port}, send C{payload}, and fire with everything received until close."""
    bind = (bind_host, 0) if bind_host else None
    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=10, bindAddress=bind)
    collector = Collector(payload, half_close)
    connected = connectProtocol(endpoint, collector)
    connected.addCallback(lambda _: collector.done)
    return connected


@inlineCallbacks
def answers(port: int, count: int) -> Generator[Deferred[bytes], bytes, list[bytes]]:
    """Fires with what each of C{count} connections to C{port}, one after the other, received (a backend's name)."""
    seen = []
    for _ in range(count):
        seen.append((yield exchange(port)))
    return seen


@implementer(IHalfCloseableProtocol)
class Echo(Protocol):
    """Echoes everything; closes once the peer has finished sending."""

    transport: ITCPStream

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class Double(Echo):
    """A backend that answers every byte with two, and closes once the peer has finished sending."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data * 2)


class Named(Protocol):
    """Answers every connection with a fixed name and closes."""

    transport: ITCPStream

    def connectionMade(self) -> None:
        self.transport.write(self.factory.name)
        self.transport.loseConnection()


def listen(protocol: type[Protocol], **attributes: Any) -> Deferred[Any]:
    """Listen on 127.0.0.1 port 0 with C{protocol}; fires with the listening port."""
    factory = Factory.forProtocol(protocol)
    for key, value in attributes.items():
        setattr(factory, key, value)
    return TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)


def serve(test: SynchronousTestCase, protocol: type[Protocol], **attributes: Any) -> Deferred[IListeningPort]:
    """L{listen}, and stop listening when C{test} ends; fires with the listening port."""

    def started(port: IListeningPort) -> IListeningPort:
        test.addCleanup(port.stopListening)
        return port

    return listen(protocol, **attributes).addCallback(started)


def port_number(port: IListeningPort) -> int:
    """The TCP port number that C{port} listens on."""
    address = port.getHost()
    assert isinstance(address, IPv4Address), address
    return address.port
