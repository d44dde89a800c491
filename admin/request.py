"""
Requests whose body is bounded: over L{MAX_BODY} bytes, the API answers 413
as soon as it knows (at the headers for a C{Content-Length}, at the limit for
a chunked body), keeps none of the rest, and closes the connection.  The body
says why: a JSON string (gobetween's form), or under C{/v1} a JSON:API error
document.

The close waits for the client to close first, for up to L{LINGER} seconds
(whatever it still sends is dropped): closing a socket with unread bytes
resets the connection, and a reset can destroy the 413 before the client
reads it (Go's C{net/http} waits the same way).
"""

from __future__ import annotations

import json
from io import BytesIO

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Request

log = Logger()

#: The largest request body the API takes, in bytes (1 MiB).
MAX_BODY = 1 << 20

#: How long a refused connection stays open for the client to read the 413, in seconds.
LINGER = 2.0


class BoundedRequest(Request):
    """A L{Request} that refuses a body over C{max_body} bytes with 413 and never renders."""

    max_body = MAX_BODY
    _refused = False
    _received = 0
    _closing: IDelayedCall | None = None

    def gotLength(self, length: int | None) -> None:
        """Refuse at once when C{Content-Length} is over the limit (before any C{100 Continue})."""
        if length is not None and length > self.max_body:
            self.content = BytesIO()
            self.requestHeaders.removeHeader(b"Expect")
            self._refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        """Keep the body until it goes over the limit; then refuse, and drop whatever follows."""
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """Render the request, unless it was refused."""
        if not self._refused:
            super().requestReceived(command, path, version)

    def connectionLost(self, reason: Failure) -> None:
        """The client closed: no need to close it later."""
        if self._closing is not None and self._closing.active():
            self._closing.cancel()
        super().connectionLost(reason)

    def _refuse(self) -> None:
        """Answer 413 directly on the connection, and close it after L{LINGER} seconds at most."""
        self._refused = True
        peer = self.channel.transport.getPeer()
        log.info(
            "api: refused a request body over {limit} bytes from {client}",
            limit=self.max_body,
            client=getattr(peer, "host", peer),
        )
        detail = f"the request body is over the limit of {self.max_body} bytes"
        path = getattr(self.channel, "_path", b"") or b""
        if path == b"/v1" or path.startswith((b"/v1/", b"/v1?")):
            body = json.dumps({"errors": [{"detail": detail}]}).encode("utf-8")
        else:
            body = json.dumps(detail).encode("utf-8")
        head = (
            b"HTTP/1.1 413 Content Too Large\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(body)
        )
        self.channel.transport.write(head + body)
        self._closing = self.channel.callLater(LINGER, self.channel.loseConnection)


#: Request line plus headers the channel takes before answering 431 itself.
#: Under it, C{/v1} answers 431 past its own, lower limits (one header over
#: 8 KiB, all over 16 KiB), with its usual error document.
MAX_HEAD = 32768


class BoundedChannel(HTTPChannel):
    """
    An C{HTTPChannel} that answers a request head over L{MAX_HEAD} bytes with
    431 and a JSON error, where Twisted's own answer is a bare 400.
    """

    totalHeadersSize = MAX_HEAD

    def lineReceived(self, line: bytes) -> None:
        """Refuse the head once it passes L{MAX_HEAD}; otherwise as Twisted does."""
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            body = json.dumps({"errors": [{"detail": f"the request head is over {MAX_HEAD} bytes"}]}).encode()
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            self.loseConnection()
            return
        super().lineReceived(line)
