"""
Backends and clients that move long patterned streams over real sockets with
flow control, so that loss, duplication, reordering and a stall all show.
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IPullProducer
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from tests.support.transports import ITCPStream

CHUNK = 64 * 1024


def pattern(index: int) -> bytes:
    """Chunk C{index} of a stream: distinct per index, so loss, duplication and reordering all show."""
    return hashlib.sha256(index.to_bytes(8, "big")).digest() * (CHUNK // 32)


def buffered(transport: Any) -> int:
    """Bytes a Twisted TCP transport holds, written but not yet sent."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


@implementer(IHalfCloseableProtocol)
class PacedEcho(Protocol):
    """
    Echoes, pausing its own reading while its answer is not sent (unlike
    L{tests.support.clients.Echo}); closes after the end of input.
    """

    transport: ITCPStream

    def connectionMade(self) -> None:
        self.transport.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class Answer(Protocol):
    """Reads until the end of input, then answers with the digest of it and C{factory.body}, and closes."""

    transport: ITCPStream

    def connectionMade(self) -> None:
        self.digest = hashlib.sha256()

    def dataReceived(self, data: bytes) -> None:
        self.digest.update(data)

    def readConnectionLost(self) -> None:
        self.transport.write(self.digest.hexdigest().encode() + self.factory.body)
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class Greeter(Protocol):
    """Sends C{factory.banner}, shuts down its write side first, then collects the client's input."""

    transport: ITCPStream

    def connectionMade(self) -> None:
        self.received: list[bytes] = []
        self.transport.write(self.factory.banner)
        self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def readConnectionLost(self) -> None:
        self.factory.got.callback(b"".join(self.received))
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class StalledSink(Protocol):
    """Does not read until told to; then hashes everything and reports it at the end."""

    transport: ITCPStream

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        self.digest = hashlib.sha256()
        self.count = 0
        self.factory.sinks.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.digest.update(data)
        self.count += len(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.reason = reason
        self.factory.done.callback((self.count, self.digest.hexdigest()))


@implementer(IHalfCloseableProtocol, IPullProducer)
class Streamer(Protocol):
    """
    Sends C{chunks} chunks of L{pattern} as fast as its transport takes them,
    then shuts down its write side; hashes what it sends and what it receives.
    """

    transport: ITCPStream

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.index = 0
        self.sent = hashlib.sha256()
        self.received = hashlib.sha256()
        self.received_count = 0
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self.index >= self.chunks:
            self.transport.unregisterProducer()
            self.transport.loseWriteConnection()
            return
        chunk = pattern(self.index)
        self.index += 1
        self.sent.update(chunk)
        self.transport.write(chunk)

    def stopProducing(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        self.received.update(data)
        self.received_count += len(data)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)
