"""
L{ApiSite}: the API's L{Site}, which pairs L{ApiChannel} with
L{BoundedRequest} and keeps at most C{[api] max_connections} connections
open, so the API cannot take the descriptors the data plane needs.

A connection past the limit gets L{Refusal}: 503 with the JSON error and
C{Retry-After: 1}, then closed.  Each one lingers a little (see
L{admin.channel.Linger}), so at most L{MAX_REFUSING} are answered at once;
past that, a new connection is closed at once without an answer.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Site

from admin.answers import connection, error_answer, target_of
from admin.channel import LINGER, ApiChannel, Linger
from admin.request import BoundedRequest

log = Logger()

#: Connections past the limit that are answered 503 at once; more are closed without an answer.
MAX_REFUSING = 64


class Refusal(Protocol):
    """
    A connection past the limit: answered 503 with the JSON error once the
    request line shows which API it is for (or after L{LINGER} seconds
    without it), then closed.
    """

    def __init__(self, detail: str, call_later: Callable[..., IDelayedCall], on_close: Callable[[], object]) -> None:
        self._detail = detail
        self._call_later = call_later
        self._on_close = on_close
        self._linger: Linger | None = None
        self._waiting: IDelayedCall | None = None

    def connectionMade(self) -> None:
        """Wait a little for the request line."""
        self._waiting = self._call_later(LINGER, self._answer, b"")

    def dataReceived(self, data: bytes) -> None:
        """Answer at the first bytes; drop the rest."""
        if self._linger is None:
            self._answer(target_of(data.split(b"\r\n", 1)[0]))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Cancel what was scheduled; this connection no longer counts."""
        if self._waiting is not None and self._waiting.active():
            self._waiting.cancel()
        if self._linger is not None:
            self._linger.cancel()
        self._on_close()

    def _answer(self, target: bytes) -> None:
        if self._waiting is not None and self._waiting.active():
            self._waiting.cancel()
        transport = connection(self.transport)
        transport.write(error_answer(503, self._detail, target, (b"Retry-After: 1",)))
        self._linger = Linger(self._call_later, transport.loseConnection, transport.abortConnection)


class Dropped(Protocol):
    """A connection closed at once, unanswered (past L{MAX_REFUSING} refusals)."""

    def connectionMade(self) -> None:
        """Close it."""
        connection(self.transport).abortConnection()


class ApiSite(Site):
    """
    A L{Site} of L{ApiChannel}s and L{BoundedRequest}s that keeps at most
    C{max_connections} of them open (see the module).  Twisted's idle
    timeout is off: the channel's deadlines replace it.
    """

    # Factory's public protocol attribute.  The API speaks HTTP/1.x only: Site's default protocol
    # (the one that would switch to HTTP/2 when TLS negotiates h2) is private, and wraps a plain
    # HTTPChannel whose 16 KiB head limit cannot be raised to the API's MAX_HEAD without private names.
    protocol = ApiChannel  # type: ignore[assignment]

    def __init__(self, resource: IResource, *, header_timeout: float, max_connections: int,
                 reactor: IReactorTime) -> None:
        """
        @param header_timeout: seconds a request head may take (C{[api] header_timeout}).
        @param max_connections: connections open at once (C{[api] max_connections}).
        """
        # The API reads JSON bodies only (L{admin.writes} refuses others), so form bodies are not parsed into
        # request.args: that keeps the query the only source of arguments, and a malformed multipart body
        # from reaching Twisted's bare 400.
        super().__init__(resource, requestFactory=BoundedRequest, reactor=reactor, timeout=None,
                         parsePOSTFormSubmission=False)
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.open_connections = 0
        self.refusing = 0

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """An L{ApiChannel} under the limit; past it, a L{Refusal} or, past L{MAX_REFUSING} of them, L{Dropped}."""
        if self.open_connections >= self.max_connections:
            return self._refusal()
        channel = super().buildProtocol(addr)
        channel.header_timeout = self.header_timeout
        channel.on_close = self._channel_closed
        self.open_connections += 1
        if self.open_connections == self.max_connections:
            log.warn("api: {count} connections open, the limit ([api] max_connections): new ones get 503 until one closes",
                     count=self.open_connections)
        return channel

    def _channel_closed(self) -> None:
        self.open_connections -= 1

    def _refusal(self) -> Protocol:
        if self.refusing >= MAX_REFUSING:
            return Dropped()
        self.refusing += 1
        detail = f"the API has {self.max_connections} connections open, its limit: try again later"
        return Refusal(detail, self.reactor.callLater, self._refusal_closed)

    def _refusal_closed(self) -> None:
        self.refusing -= 1
