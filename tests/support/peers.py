"""
Peers for integration tests on real sockets (127.0.0.1): a TCP client that
sends when told and waits for what it expects, and a UDP endpoint that
records and answers datagrams.
"""

from __future__ import annotations

from typing import Any, Generator, TypeVar

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IUDPTransport
from twisted.internet.protocol import DatagramProtocol, Protocol
from zope.interface import implementer

from tests.support.transports import ITCPStream

Address = tuple[str, int]
ProtocolT = TypeVar("ProtocolT", bound=Protocol)


@implementer(IHalfCloseableProtocol)
class Peer(Protocol):
    """A client that sends when told, and waits for a number of bytes or for the end of input."""

    transport: ITCPStream

    def __init__(self) -> None:
        self.data = b""
        self.write_closed = False
        self._waiting: tuple[int, Deferred[bytes]] | None = None
        self.ended: Deferred[bytes] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def expect(self, size: int) -> Deferred[bytes]:
        """Fires with the first C{size} bytes received."""
        d: Deferred[bytes] = Deferred()
        self._waiting = (size, d)
        self._check()
        return d

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self._check()

    def _check(self) -> None:
        if self._waiting is not None and len(self.data) >= self._waiting[0]:
            size, d = self._waiting
            self._waiting = None
            d.callback(self.data[:size])

    def readConnectionLost(self) -> None:
        self.ended.callback(self.data)
        if self.write_closed:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self.write_closed = True
        if self.ended.called:
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.ended.called:
            self.ended.callback(self.data)
        self.closed.callback(None)


class DatagramPeer(DatagramProtocol):
    """
    A UDP endpoint for tests: records what it receives and answers each
    datagram with C{replies} datagrams C{b"<i>:" + datagram}.
    """

    transport: IUDPTransport

    noisy = False

    def __init__(self, replies: int = 0) -> None:
        self.replies = replies
        self.received: list[tuple[bytes, Address]] = []
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append((datagram, (addr[0], addr[1])))
        for i in range(self.replies):
            self.transport.write(b"%d:" % i + datagram, addr)
        still = []
        for count, waiting in self._waiting:
            if len(self.received) >= count:
                waiting.callback(None)
            else:
                still.append((count, waiting))
        self._waiting = still

    def wait_for(self, count: int) -> Deferred[None]:
        """Fires once C{count} datagrams in all have arrived."""
        waiting: Deferred[None] = Deferred()
        if len(self.received) >= count:
            waiting.callback(None)
        else:
            self._waiting.append((count, waiting))
        return waiting

    def data(self) -> list[bytes]:
        """The datagrams received, in order."""
        return [datagram for datagram, _ in self.received]

    def sources(self) -> list[Address]:
        """Where each datagram came from, in order."""
        return [source for _, source in self.received]


def open_client(port: int, protocol: ProtocolT, bind_host: str | None = None) -> Deferred[ProtocolT]:
    """Connect C{protocol} to 127.0.0.1:C{port} (from C{bind_host}, if given); fires with C{protocol}."""
    bind = (bind_host, 0) if bind_host else None
    return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10, bindAddress=bind), protocol)


def listen_proxy(test: Any, proxy: Any) -> Address:
    """
    Listen with the UDP C{proxy} on 127.0.0.1 port 0; after C{test} the port
    is closed, then every session of the proxy.  Returns the address.
    """
    port = reactor.listenUDP(0, proxy, interface="127.0.0.1")  # type: ignore[attr-defined]

    @inlineCallbacks
    def stop() -> Generator[Any, Any, None]:
        yield port.stopListening()
        yield proxy.close_all()

    test.addCleanup(stop)
    return ("127.0.0.1", port.getHost().port)
