"""
L{ApiChannel}: the API's HTTP/1.1 connection, with limits that hold against
a hostile client, each refused with the API's JSON error and the connection
closed:

 - the request head (request line and headers) must arrive whole within
   C{header_timeout} of the moment the channel waits for it (the connection
   opened, or the previous answer was written): a deadline that trickling
   bytes do not push back (Twisted's idle timeout restarts on every byte).
   Past it: 408.  An idle keep-alive connection (no byte of a next request)
   is closed without an answer instead, as nginx and Go do, since a client
   may be sending its next request at that very moment;
 - after the head, the body must arrive at L{MIN_BODY_RATE} bytes a second
   or more, after a first C{header_timeout} free (each chunk moves the
   deadline later by its size over the rate, as Apache's mod_reqtimeout
   does): else 408;
 - a request line over L{MAX_LINE} bytes: 414; a header line over
   L{MAX_LINE}, headers over L{MAX_HEAD} bytes in all, or more than
   L{MAX_FIELDS} of them: 431;
 - a request that is not HTTP/1.1: 400 naming what is wrong (the request
   line, a header line, C{Content-Length} not a number, given twice, or with
   C{Transfer-Encoding}; a malformed chunked body, L{admin.chunked}); 501 for
   a transfer coding other than chunked, 505 for an HTTP version other than
   1.0 and 1.1.

Each of these is checked here before Twisted's parser sees the bytes, at
least as strictly as Twisted checks them, so Twisted's own answer to a
request it cannot parse (a bare 400, which has no public hook) is never
the one written.

Every refusal goes through L{ApiChannel.refuse}: the answer is written, what
the client still sends is dropped, and the connection is closed once the
client closed it or L{LINGER} seconds passed (closing a socket with unread
bytes resets the connection, and a reset can destroy the answer before the
client reads it, so the close waits; Go's C{net/http} does the same), and
aborted L{LINGER} seconds later if the client does not read.
"""

from __future__ import annotations

import re
from typing import Callable

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from admin.answers import connection, error_answer, target_of
from admin.chunked import ChunkedFraming, MalformedChunks
from admin.jsonbody import MAX_BODY
from balancer.config.durations import format_duration

log = Logger()

#: The longest request line, and the longest header line, in bytes (longer: 414, 431).
MAX_LINE = 16384

#: The request line and the headers together, in bytes (more: 431).  C{/v1}
#: answers 431 past its own, lower limits (one header over 8 KiB, all over 16 KiB).
MAX_HEAD = 32768

#: The most header fields one request may have (more: 431).
MAX_FIELDS = 100

#: The slowest a request body may arrive, in bytes a second, after a first C{header_timeout} free.
MIN_BODY_RATE = 1024

#: How long a refused connection stays open for the client to read the answer, in
#: seconds; it is aborted if it is not closed after as long again.
LINGER = 2.0

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(%s) ([\x21-\x7e]+) (HTTP/\d\.\d)" % _TOKEN)
_FIELD_NAME = re.compile(_TOKEN)

CallLater = Callable[..., IDelayedCall]


class Linger:
    """
    Closes a connection whose last answer is written: C{lose} once
    L{LINGER} seconds have passed (unless cancelled first, when the client
    closed), then C{abort} if the connection is still open L{LINGER} later.
    """

    def __init__(self, call_later: CallLater, lose: Callable[[], object], abort: Callable[[], object],
                 delay: float | None = None) -> None:
        """@param delay: seconds before C{lose}; L{LINGER} when not given."""
        self._call_later = call_later
        self._abort = abort
        self._lose = lose
        self._call = call_later(LINGER if delay is None else delay, self._close)

    def _close(self) -> None:
        self._call = self._call_later(LINGER, self._abort)
        self._lose()

    def cancel(self) -> None:
        """The connection is closed: nothing left to do."""
        if self._call.active():
            self._call.cancel()


class ApiChannel(HTTPChannel):
    """
    An C{HTTPChannel} with a deadline for the request head, a minimum body
    rate, size limits, and the API's JSON error for each (see the module).

    Built by L{admin.site.ApiSite}, which sets L{header_timeout} and
    L{on_close}.

    @ivar header_timeout: seconds the whole request head may take.
    @ivar on_close: called once when the connection is lost (the site's count of open connections).
    """

    MAX_LENGTH = MAX_LINE
    totalHeadersSize = MAX_HEAD
    maxHeaders = MAX_FIELDS

    header_timeout = 10.0
    on_close: Callable[[], object] | None = None

    _deadline: IDelayedCall | None = None
    _linger: Linger | None = None
    _answered = False
    _phase = "head"
    _served = 0
    _head_size = 0
    _fields = 0
    _request_line = True
    _blank_lines = 0
    _target = b""
    _framing: tuple[bytes, ...] = ()
    _chunks: ChunkedFraming | None = None

    # The connection

    def connectionMade(self) -> None:
        """Start waiting for the first request head."""
        super().connectionMade()
        self._await_head()

    def dataReceived(self, data: bytes) -> None:
        """Drop everything once answered."""
        if not self._answered:
            super().dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Cancel what was scheduled, and give back the connection's place."""
        self._cancel_deadline()
        if self._linger is not None:
            self._linger.cancel()
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()
        super().connectionLost(reason)

    # The request head

    def lineReceived(self, line: bytes) -> None:
        """Check the size of the head, the request line and the count of fields, then parse as Twisted does."""
        if self._answered:
            return
        self._head_size += len(line)
        if self._head_size > MAX_HEAD:
            self.refuse(431, f"the request head is over {MAX_HEAD} bytes")
            return
        if self._request_line and not line:
            # Twisted forgives one empty line before a request line (RFC 9112 §2.2); a second is malformed.
            self._blank_lines += 1
            if self._blank_lines > 1:
                self.refuse(400, "the request line is malformed")
                return
        elif self._request_line:
            self._request_line = False
            self._target = target_of(line)
            if not self._request_line_ok(line):
                return
        elif line and line[:1] not in b" \t":
            self._fields += 1
            if self._fields > MAX_FIELDS:
                self.refuse(431, f"the request has more than {MAX_FIELDS} header fields")
                return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        """A line over L{MAX_LINE}: 414 for the request line, 431 for a header line."""
        if self._answered:
            return
        if self._request_line:
            self._target = target_of(line.lstrip(b"\r\n"))
            self.refuse(414, f"the request line is over {MAX_LINE} bytes")
        else:
            self.refuse(431, f"a header line is over {MAX_LINE} bytes")

    def headerReceived(self, line: bytes) -> bool:
        """Refuse a header line that is malformed or frames the body ambiguously; else as Twisted does."""
        if self._answered:
            return False
        name, colon, value = line.partition(b":")
        if not colon or not _FIELD_NAME.fullmatch(name):
            self.refuse(400, f"a header line is not NAME: VALUE: {_quote(line)}")
            return False
        key, value = name.lower(), value.strip(b" \t")
        if len(value.translate(None, b"\x00\r\n")) != len(value):
            self.refuse(400, "a header line is malformed")
            return False
        if key == b"content-length":
            if not value.isdigit():
                self.refuse(400, f"Content-Length is not a number: {_quote(value)}")
                return False
            if len(value.lstrip(b"0")) > 15:
                # Over any body limit; and int() of thousands of digits is an error in itself.
                self.refuse(413, f"the request body is over the limit of {MAX_BODY} bytes")
                return False
        elif key == b"transfer-encoding" and value.lower() != b"chunked":
            self.refuse(501, f"Transfer-Encoding {_quote(value)} is not supported: only chunked")
            return False
        if key in (b"content-length", b"transfer-encoding"):
            if key in self._framing:
                self.refuse(400, f"{name.decode('ascii')} is given more than once")
                return False
            if self._framing:
                self.refuse(400, "Content-Length and Transfer-Encoding are both given")
                return False
            self._framing += (key,)
        return bool(super().headerReceived(line))

    def allHeadersReceived(self) -> None:
        """The head is whole: the body now has its own deadline, moved later as it arrives."""
        self._phase = "body"
        if b"transfer-encoding" in self._framing:
            self._chunks = ChunkedFraming()
        self._arm(self.header_timeout, self._body_too_slow)
        super().allHeadersReceived()

    # The request body

    def rawDataReceived(self, data: bytes) -> None:
        """
        Each piece of the body moves its deadline later by its size over
        L{MIN_BODY_RATE}; a chunked body's framing is checked first.
        """
        if self._answered:
            return
        if self._phase == "body":
            if self._chunks is not None:
                try:
                    self._chunks.feed(data)
                except MalformedChunks as e:
                    log.debug("api: malformed chunked body: {reason}", reason=str(e))
                    self.refuse(400, "the chunked request body is malformed")
                    return
            if self._deadline is not None:
                self._deadline.delay(len(data) / MIN_BODY_RATE)
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        """The request is whole: no deadline while it is answered."""
        self._phase = "answering"
        self._chunks = None
        self._cancel_deadline()
        super().allContentReceived()

    def requestDone(self, request: object) -> None:
        """The answer is written: wait for the next request head (Twisted may replay one it kept)."""
        self._served += 1
        self._await_head()
        super().requestDone(request)

    # Refusals

    def refuse(self, code: int, detail: str) -> None:
        """
        Answer C{code} with the JSON error C{detail}, drop whatever the
        client sends next, and close the connection (see L{Linger}).
        Only the first refusal on a connection is written.
        """
        if self._answered:
            return
        self._answered = True
        self._cancel_deadline()
        transport = connection(self.transport)
        peer = transport.getPeer()
        log.info("api: answered {code} to {client} and closed: {detail}",
                 code=code, client=getattr(peer, "host", peer), detail=detail)
        transport.write(error_answer(code, detail, self._target))
        self.setRawMode()
        self._linger = Linger(self.callLater, self.loseConnection, transport.abortConnection)

    # Deadlines

    def _await_head(self) -> None:
        self._phase = "head"
        self._request_line = True
        self._head_size = self._fields = self._blank_lines = 0
        self._framing = ()
        self._chunks = None
        self._arm(self.header_timeout, self._head_too_slow)

    def _head_too_slow(self) -> None:
        self._deadline = None
        # What was received of a request line not whole yet (the connection closes either way).
        partial = self.clearLineBuffer()
        transport = connection(self.transport)
        if transport.disconnecting:
            transport.abortConnection()
        elif self._served and self._request_line and not partial.strip():
            self._answered = True
            self._linger = Linger(self.callLater, self.loseConnection, transport.abortConnection, delay=0)
        else:
            self.refuse(408, f"the request head did not arrive within {format_duration(self.header_timeout)}")

    def _body_too_slow(self) -> None:
        self._deadline = None
        self.refuse(408, f"the request body arrived slower than {MIN_BODY_RATE} bytes a second")

    def _request_line_ok(self, line: bytes) -> bool:
        match = _REQUEST_LINE.fullmatch(line)
        if match is None:
            self.refuse(400, f"the request line is not METHOD TARGET HTTP/1.1: {_quote(line)}")
            return False
        if match.group(3) not in (b"HTTP/1.1", b"HTTP/1.0"):
            self.refuse(505, f"{match.group(3).decode('ascii')} is not supported: HTTP/1.1 or HTTP/1.0")
            return False
        return True

    def _arm(self, seconds: float, then: Callable[[], None]) -> None:
        self._cancel_deadline()
        self._deadline = self.callLater(seconds, then)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None


def _quote(data: bytes, limit: int = 60) -> str:
    """C{data} for an error message: decoded, shortened, quoted."""
    text = data[:limit].decode("latin-1")
    return repr(text + ("..." if len(data) > limit else ""))
