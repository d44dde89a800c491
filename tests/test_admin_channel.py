"""
L{ApiChannel}: the request head's deadline, the minimum body rate, the line
and head limits, and malformed HTTP, each answered with the API's JSON error
(a JSON string at the root, a JSON:API document under /v1) and the
connection closed; driven through an L{ApiSite} on a C{StringTransport} and
a clock.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from admin.channel import LINGER, MAX_FIELDS, MAX_HEAD, MAX_LINE, MIN_BODY_RATE
from admin.jsonbody import MAX_BODY
from admin.site import ApiSite

PEER = IPv4Address("TCP", "192.0.2.7", 40000)


class Recorder(Resource):
    """Answers C{taken} with the size of the body; remembers each request; C{/slow} answers later."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, int]] = []
        self.waiting: list[Request] = []

    def render(self, request: Request) -> Any:
        self.seen.append((request.path, len(request.content.read())))
        if request.path == b"/slow":
            self.waiting.append(request)
            return NOT_DONE_YET
        return b"taken"


def parse(answer: bytes) -> tuple[int, dict[bytes, bytes], Any]:
    """(code, headers, decoded JSON body) of one answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = dict(line.split(b": ", 1) for line in lines)
    return int(status.split(b" ")[1]), headers, json.loads(body)


class _ChannelTestCase(SynchronousTestCase):
    """One API connection on a StringTransport, with a clock."""

    header_timeout = 10.0

    def setUp(self) -> None:
        self.clock = Clock()
        self.resource = Recorder()
        self.site = ApiSite(self.resource, header_timeout=self.header_timeout, max_connections=10, reactor=self.clock)
        self.channel = self.site.buildProtocol(PEER)
        self.transport = StringTransport(peerAddress=PEER)
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def assertRefused(self, code: int, detail: str, v1: bool = False) -> None:
        """One answer C{code} with the JSON error C{detail}; nothing rendered; closed after LINGER, aborted after 2 LINGER."""
        answered, headers, body = parse(self.transport.value())
        self.assertEqual(answered, code)
        self.assertEqual((headers[b"Content-Type"], headers[b"Connection"]), (b"application/json", b"close"))
        self.assertEqual(body, {"errors": [{"detail": detail}]} if v1 else detail)
        self.assertEqual(self.resource.seen, [])
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(LINGER)
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.transport.disconnected)
        self.clock.advance(LINGER)
        self.assertTrue(self.transport.disconnected)

    def assertServed(self, *paths: bytes) -> None:
        """The requests for C{paths} reached the resource and were answered 200, the connection open."""
        self.assertEqual([path for path, _ in self.resource.seen], list(paths))
        self.assertEqual(self.transport.value().count(b"HTTP/1.1 200 OK"), len(paths))
        self.assertFalse(self.transport.disconnecting)


class HeadDeadlineTests(_ChannelTestCase):
    """The whole head within header_timeout of the moment the channel waits for it, whatever trickles."""

    def test_trickledHeadGets408AtTheDeadline(self) -> None:
        self.send(b"GET /servers HTTP/1.1\r\n")
        for byte in b"X-Slow: 0123456":
            self.clock.advance(0.6)
            self.send(bytes([byte]))
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(self.header_timeout - self.clock.seconds())
        self.assertRefused(408, "the request head did not arrive within 10s")

    def test_underV1TheErrorIsADocument(self) -> None:
        self.send(b"GET /v1/servers HTTP/1.1\r\nHost: a")
        self.clock.advance(self.header_timeout)
        self.assertRefused(408, "the request head did not arrive within 10s", v1=True)

    def test_silentConnectionGets408(self) -> None:
        self.clock.advance(self.header_timeout - 0.001)
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(0.001)
        self.assertRefused(408, "the request head did not arrive within 10s")

    def test_headInTimeIsServed(self) -> None:
        self.clock.advance(self.header_timeout - 0.1)
        self.send(b"GET /servers HTTP/1.1\r\nHost: api\r\n\r\n")
        self.assertServed(b"/servers")

    def test_eachRequestHasItsOwnDeadline(self) -> None:
        self.clock.advance(5)
        self.send(b"GET /first HTTP/1.1\r\nHost: api\r\n\r\nGET /second HTTP/1.1\r\n")
        self.clock.advance(self.header_timeout - 0.1)
        self.send(b"Host: api\r\n\r\n")
        self.assertServed(b"/first", b"/second")

    def test_idleKeepAliveIsClosedWithoutAnAnswer(self) -> None:
        self.send(b"GET /first HTTP/1.1\r\nHost: api\r\n\r\n")
        served = self.transport.value()
        self.clock.advance(self.header_timeout)
        self.assertEqual(self.transport.value(), served)
        self.assertTrue(self.transport.disconnecting)
        self.clock.advance(LINGER)
        self.assertTrue(self.transport.disconnected)

    def test_partialSecondHeadGets408(self) -> None:
        self.send(b"GET /first HTTP/1.1\r\nHost: api\r\n\r\nGET /v1/x HT")
        self.transport.clear()
        self.clock.advance(self.header_timeout)
        self.assertEqual(parse(self.transport.value())[0], 408)

    def test_noDeadlineWhileTheAnswerIsMade(self) -> None:
        self.send(b"GET /slow HTTP/1.1\r\nHost: api\r\n\r\n")
        self.clock.advance(100 * self.header_timeout)
        self.assertFalse(self.transport.disconnecting)
        request = self.resource.waiting.pop()
        request.write(b"late")
        request.finish()
        self.assertIn(b"late", self.transport.value())
        self.clock.advance(self.header_timeout)
        self.assertTrue(self.transport.disconnecting)

    def test_clientClosingFirstCancelsEverything(self) -> None:
        self.clock.advance(self.header_timeout)
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.site.open_connections, 0)

    def test_whatFollowsARefusalIsDropped(self) -> None:
        self.clock.advance(self.header_timeout)
        answered = self.transport.value()
        self.send(b"GET /servers HTTP/1.1\r\nHost: api\r\n\r\n")
        self.assertEqual(self.transport.value(), answered)
        self.assertEqual(self.resource.seen, [])

    def test_connectionClosingAfterHttp10ThatDoesNotGoIsAborted(self) -> None:
        self.send(b"GET /first HTTP/1.0\r\n\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.clock.advance(self.header_timeout)
        self.assertTrue(self.transport.disconnected)


class BodyRateTests(_ChannelTestCase):
    """After the head, header_timeout free, then the body at MIN_BODY_RATE bytes a second or more."""

    def test_bodyAtTheMinimumRateIsTaken(self) -> None:
        size = 30 * MIN_BODY_RATE
        self.send(b"POST /servers HTTP/1.1\r\nHost: api\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(30):
            self.clock.advance(1)
            self.send(b"x" * MIN_BODY_RATE)
        self.assertServed(b"/servers")
        self.assertEqual(self.resource.seen, [(b"/servers", size)])

    def test_bodyTooSlowGets408(self) -> None:
        self.send(b"POST /v1/servers HTTP/1.1\r\nHost: api\r\nContent-Length: 100000\r\n\r\n")
        while not self.transport.value():
            self.clock.advance(1)
            self.send(b"x" * (MIN_BODY_RATE // 2))
        # The free 10 s, then each half KiB (sent at 1, 2, ... 18 s) buys half a second: due at 19 s.
        self.assertEqual(self.clock.seconds(), 19)
        self.assertRefused(408, f"the request body arrived slower than {MIN_BODY_RATE} bytes a second", v1=True)

    def test_bodyThatNeverComesGets408AfterTheFreeTime(self) -> None:
        self.send(b"POST /servers HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.clock.advance(self.header_timeout - 0.001)
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(0.001)
        self.assertRefused(408, f"the request body arrived slower than {MIN_BODY_RATE} bytes a second")

    def test_slowChunkedBodyGets408(self) -> None:
        self.send(b"POST /servers HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(20):
            self.clock.advance(1)
            self.send(b"1\r\nx\r\n")
        self.assertEqual(parse(self.transport.value())[0], 408)


class SizeLimitTests(_ChannelTestCase):
    """414 for a long request line, 431 for a long header line, a long head, too many fields."""

    def test_requestLineOverTheLimitIs414(self) -> None:
        self.send(b"GET /servers?" + b"a" * MAX_LINE)
        self.assertRefused(414, f"the request line is over {MAX_LINE} bytes")

    def test_requestLineOverTheLimitUnderV1(self) -> None:
        self.send(b"GET /v1/servers?" + b"a" * MAX_LINE + b" HTTP/1.1\r\n\r\n")
        self.assertRefused(414, f"the request line is over {MAX_LINE} bytes", v1=True)

    def test_headerLineOverTheLimitIs431(self) -> None:
        self.send(b"GET /v1/servers HTTP/1.1\r\nX-Big: " + b"b" * MAX_LINE)
        self.assertRefused(431, f"a header line is over {MAX_LINE} bytes", v1=True)

    def test_headOverTheLimitIs431(self) -> None:
        lines = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"x" * 8000) for i in range(5))
        self.send(b"POST /servers HTTP/1.1\r\nHost: api\r\nContent-Length: 0\r\n" + lines + b"\r\n")
        self.assertRefused(431, f"the request head is over {MAX_HEAD} bytes")

    def test_tooManyFieldsIs431(self) -> None:
        lines = b"".join(b"X-F%d: 1\r\n" % i for i in range(MAX_FIELDS + 1))
        self.send(b"GET /servers HTTP/1.1\r\n" + lines + b"\r\n")
        self.assertRefused(431, f"the request has more than {MAX_FIELDS} header fields")

    def test_atTheLimitsServed(self) -> None:
        """Lines of MAX_LINE bytes, MAX_FIELDS fields, a head of MAX_HEAD bytes: taken."""
        line = b"GET /servers HTTP/1.1"
        big = b"X-Big: " + b"b" * (MAX_LINE - 7)
        small = [b"X-F%04d:" % i for i in range(MAX_FIELDS - 2)]
        last = b"X-Last: " + b"l" * (MAX_HEAD - len(line) - len(big) - sum(map(len, small)) - 8)
        self.send(b"\r\n".join([line, big, *small, last]) + b"\r\n\r\n")
        self.assertServed(b"/servers")


class MalformedTests(_ChannelTestCase):
    """Each malformed request: 400 (or 501, 505, 413) with the JSON error naming what is wrong."""

    def refused(self, data: bytes, code: int, detail: str, v1: bool = False) -> None:
        self.send(data)
        self.assertRefused(code, detail, v1)

    def test_garbageRequestLine(self) -> None:
        self.refused(b"HELLO\r\n\r\n", 400, "the request line is not METHOD TARGET HTTP/1.1: 'HELLO'")

    def test_requestLineWithTwoSpaces(self) -> None:
        self.refused(b"GET  /servers HTTP/1.1\r\n\r\n", 400,
                     "the request line is not METHOD TARGET HTTP/1.1: 'GET  /servers HTTP/1.1'")

    def test_targetNotAscii(self) -> None:
        self.refused(b"GET /v1/\xff HTTP/1.1\r\n\r\n", 400,
                     "the request line is not METHOD TARGET HTTP/1.1: 'GET /v1/\xff HTTP/1.1'", v1=True)

    def test_otherHttpVersionIs505(self) -> None:
        self.refused(b"GET /servers HTTP/2.0\r\n\r\n", 505, "HTTP/2.0 is not supported: HTTP/1.1 or HTTP/1.0")

    def test_blankLinesBeforeTheRequest(self) -> None:
        """Twisted forgives one blank line; the second is a malformed request line (Twisted's own check)."""
        self.refused(b"\r\n\r\nGET /servers HTTP/1.1\r\n\r\n", 400, "the request line is malformed")

    def test_headerWithoutColon(self) -> None:
        self.refused(b"GET /v1/servers HTTP/1.1\r\nHost api\r\n\r\n", 400,
                     "a header line is not NAME: VALUE: 'Host api'", v1=True)

    def test_spaceBeforeTheColon(self) -> None:
        self.refused(b"GET /servers HTTP/1.1\r\nHost : api\r\n\r\n", 400, "a header line is not NAME: VALUE: 'Host : api'")

    def test_nulInAHeaderValue(self) -> None:
        """Refused by Twisted's own check: the JSON 400 all the same."""
        self.refused(b"GET /servers HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", 400, "a header line is malformed")

    def test_contentLengthNotANumber(self) -> None:
        for value in (b"abc", b"-1", b"+5", b"1, 1", b"0x10", b""):
            with self.subTest(value=value):
                self.setUp()
                self.refused(b"POST /servers HTTP/1.1\r\nContent-Length: %s\r\n\r\n" % value, 400,
                             f"Content-Length is not a number: {value.decode()!r}")

    def test_contentLengthTwice(self) -> None:
        self.refused(b"POST /servers HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab", 400,
                     "Content-Length is given more than once")

    def test_contentLengthWithTransferEncoding(self) -> None:
        for first, second in ((b"Content-Length: 5", b"Transfer-Encoding: chunked"),
                              (b"Transfer-Encoding: chunked", b"Content-Length: 5")):
            with self.subTest(first=first):
                self.setUp()
                self.refused(b"POST /v1/servers HTTP/1.1\r\n%s\r\n%s\r\n\r\n" % (first, second), 400,
                             "Content-Length and Transfer-Encoding are both given", v1=True)

    def test_transferEncodingTwice(self) -> None:
        self.refused(b"POST /servers HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                     400, "Transfer-Encoding is given more than once")

    def test_otherTransferCodingIs501(self) -> None:
        self.refused(b"POST /servers HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501,
                     "Transfer-Encoding 'gzip, chunked' is not supported: only chunked")

    def test_contentLengthOfThousandsOfDigitsIs413(self) -> None:
        self.refused(b"POST /servers HTTP/1.1\r\nContent-Length: %s\r\n\r\n" % (b"9" * 5000), 413,
                     f"the request body is over the limit of {MAX_BODY} bytes")

    def test_crInAHeaderValue(self) -> None:
        self.refused(b"GET /servers HTTP/1.1\r\nX-A: a\rb\r\n\r\n", 400, "a header line is malformed")

    def test_malformedChunkFramings(self) -> None:
        """Each way Twisted's chunk decoder refuses a body: the JSON 400, never Twisted's bare one."""
        for body in (b"-5\r\n", b"0x5\r\n", b"\r\n", b"5;a\x01b\r\nhello\r\n", b"5\r\nhelloXX",
                     b"f" * 1025, b"1" * 1024 + b"\r\n", b"0\r\n" + b"X-T: t\r\n" * 8193):
            with self.subTest(body=body[:20]):
                self.setUp()
                self.refused(b"POST /servers HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body, 400,
                             "the chunked request body is malformed")

    def test_malformedMultipartBodyIsNotParsed(self) -> None:
        """Form bodies are not parsed (the API reads JSON only): a broken one reaches the resource like any other."""
        self.send(b"POST /servers HTTP/1.1\r\nHost: api\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                  b"Content-Length: 9\r\n\r\nnot--x-->")
        self.assertServed(b"/servers")

    def test_malformedChunk(self) -> None:
        """Refused by Twisted's chunk decoder: the JSON 400 all the same."""
        self.refused(b"POST /v1/servers HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n", 400,
                     "the chunked request body is malformed", v1=True)

    def test_pipelinedRequestAfterAMalformedOneIsNotServed(self) -> None:
        self.refused(b"GET /servers HTTP/1.1\r\nBad\r\n\r\nGET /servers HTTP/1.1\r\nHost: api\r\n\r\n", 400,
                     "a header line is not NAME: VALUE: 'Bad'")

    def test_wellFormedRequestsAreServed(self) -> None:
        self.send(b"POST /servers HTTP/1.1\r\nHost: api\r\ncontent-length: 2\r\n\r\nab"
                  b"POST /servers HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n")
        self.assertServed(b"/servers", b"/servers")

    def test_chunkedBodyWithExtensionsAndTrailersInPiecesIsServed(self) -> None:
        data = (b"POST /servers HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2;name=value\r\nab\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
                b"GET /next HTTP/1.1\r\nHost: api\r\n\r\n")
        for byte in range(len(data)):
            self.send(data[byte:byte + 1])
        self.assertEqual(self.resource.seen, [(b"/servers", 12), (b"/next", 0)])
        self.assertServed(b"/servers", b"/next")


_PIECES = st.sampled_from([b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b";", b"\x00", b"\x01", b"\x7f", b"\xff", b"0", b"5",
                           b"a", b"f", b"g", b"x", b"-", b"+", b"0x", b"X-A: b", b"Host: api", b"Content-Length: 3",
                           b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity", b"Content-Length: 1, 1"])
_CHUNKED = b"POST /servers HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n"
_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r]*\r\n")


@st.composite
def hostile(draw: Any) -> list[bytes]:
    """A request made of hostile pieces (in its head, or in a chunked body), split into random packets."""
    noise = b"".join(draw(st.lists(_PIECES, max_size=30)))
    data = draw(st.sampled_from([b"GET /servers HTTP/1.1\r\n" + noise + b"\r\n\r\n", _CHUNKED + noise,
                                 noise + b"\r\n\r\n", b"\r\n" + noise]))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


class NeverTwistedsBare400Tests(SynchronousTestCase):
    """Whatever the client sends, every error answer is the API's, with its JSON body."""

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(hostile())
    def test_everyErrorAnswerIsJson(self, packets: list[bytes]) -> None:
        clock = Clock()
        site = ApiSite(Recorder(), header_timeout=10.0, max_connections=10, reactor=clock)
        channel = site.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        channel.makeConnection(transport)
        for packet in packets:
            channel.dataReceived(packet)
        clock.advance(10.0)
        answer = transport.value()
        for status in _STATUS_LINE.finditer(answer):
            if status.group(1) != b"200":
                head = answer[status.end():].split(b"\r\n\r\n", 1)[0]
                self.assertIn(b"Content-Type: application/json", head, answer)
        channel.connectionLost(Failure(ConnectionDone()))
