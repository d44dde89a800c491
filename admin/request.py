"""
L{BoundedRequest}: the API's request.  A body over L{MAX_BODY} bytes is
refused with 413 as soon as that is known (at the headers for a
C{Content-Length}, at the limit for a chunked body), and none of the rest is
kept; the channel (L{admin.channel.ApiChannel}) writes the answer and closes.
A failure no route handled is answered 500 with the JSON error, never
Twisted's HTML page.
"""

from __future__ import annotations

from io import BytesIO

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from admin.channel import ApiChannel
from admin.errorbody import render_error
from admin.jsonbody import MAX_BODY

log = Logger()

class BoundedRequest(Request):
    """
    A L{Request} that refuses a body over C{max_body} bytes with 413 and never
    renders it.  Its channel is an L{admin.channel.ApiChannel} (for C{refuse}).
    """

    max_body = MAX_BODY
    _refused = False
    _received = 0

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

    def processingFailed(self, reason: Failure) -> Failure:
        """
        A failure no route handled: logged, and 500 with the JSON error
        (Twisted's own answer is an HTML page).
        """
        log.failure("api: {method} {uri} failed", reason, method=self.method, uri=self.uri)
        if self.startedWriting:
            # Too late to answer: end what was begun, as Twisted does.
            self.finish()
            return reason
        body = render_error(self, 500, "internal error (logged)")
        self.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
        self.write(body)
        self.finish()
        return reason

    def _refuse(self) -> None:
        self._refused = True
        channel = self.channel
        assert isinstance(channel, ApiChannel), "a BoundedRequest is served by an ApiChannel (admin.site.ApiSite)"
        channel.refuse(413, f"the request body is over the limit of {self.max_body} bytes")

