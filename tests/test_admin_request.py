"""
L{BoundedRequest}: a body over 1 MiB is refused with 413 as soon as that is
known, before the rest is taken in, and the connection closes once the client
had time to read the answer; driven through a real C{HTTPChannel} on a
C{StringTransport} and a clock.
"""

from __future__ import annotations

import json

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from admin.request import LINGER, MAX_BODY, MAX_HEAD, BoundedChannel, BoundedRequest


class Recorder(Resource):
    """Answers with the size of the body it was given; remembers each."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[int] = []

    def render_POST(self, request: Request) -> bytes:
        self.bodies.append(len(request.content.read()))
        return b"taken"


class BodyLimitTests(SynchronousTestCase):
    """Bodies up to the limit are taken; over it, 413 and the connection closes."""

    def setUp(self) -> None:
        self.resource = Recorder()
        self.clock = Clock()
        site = Site(self.resource, requestFactory=BoundedRequest, reactor=self.clock)
        self.channel = site.buildProtocol(None)
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def send_head(self, *headers: bytes) -> None:
        self.channel.dataReceived(b"POST /servers/x HTTP/1.1\r\nHost: api\r\n" + b"".join(h + b"\r\n" for h in headers)
                                  + b"\r\n")

    def assertRefused(self) -> None:
        """A 413 with a JSON string naming the limit, nothing rendered; the connection closes after LINGER."""
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.1 413 Content Too Large")
        self.assertIn(b"Content-Type: application/json", lines)
        self.assertIn(b"Connection: close", lines)
        self.assertIn(str(MAX_BODY), json.loads(body))
        self.assertEqual(self.resource.bodies, [])
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(LINGER)
        self.assertTrue(self.transport.disconnecting)

    def test_contentLengthOverLimitRefusedBeforeTheBody(self) -> None:
        self.send_head(b"Content-Length: %d" % (MAX_BODY + 1))
        self.assertRefused()
        self.channel.dataReceived(b"x" * (MAX_BODY + 1))
        self.assertEqual(self.resource.bodies, [])

    def test_noContinueForARefusedBody(self) -> None:
        self.send_head(b"Content-Length: %d" % (10 * MAX_BODY), b"Expect: 100-continue")
        self.assertNotIn(b"100 Continue", self.transport.value())
        self.assertRefused()

    def test_chunkedBodyRefusedAtTheLimit(self) -> None:
        self.send_head(b"Transfer-Encoding: chunked")
        chunk = b"x" * 65536
        for _ in range(MAX_BODY // len(chunk)):
            self.channel.dataReceived(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.assertEqual(self.transport.value(), b"")
        self.channel.dataReceived(b"1\r\nx\r\n")
        self.assertRefused()
        self.channel.dataReceived(b"0\r\n\r\n")
        self.assertEqual(self.resource.bodies, [])

    def test_clientClosingFirstCancelsTheClose(self) -> None:
        self.send_head(b"Content-Length: %d" % (MAX_BODY + 1))
        self.assertIn(b"413", self.transport.value())
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bodyAtTheLimitTaken(self) -> None:
        self.send_head(b"Content-Length: %d" % MAX_BODY)
        self.channel.dataReceived(b"x" * MAX_BODY)
        self.assertEqual(self.resource.bodies, [MAX_BODY])
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 200 OK"))

    def test_chunkedBodyUnderTheLimitTaken(self) -> None:
        self.send_head(b"Transfer-Encoding: chunked")
        self.channel.dataReceived(b"5\r\nhello\r\n0\r\n\r\n")
        self.assertEqual(self.resource.bodies, [5])
        self.assertFalse(self.transport.disconnecting)


class HeadLimitTests(SynchronousTestCase):
    """A request head over MAX_HEAD gets 431 with a JSON error, not Twisted's bare 400."""

    def setUp(self) -> None:
        self.resource = Recorder()
        site = Site(self.resource, requestFactory=BoundedRequest, reactor=Clock())
        site.protocol = BoundedChannel
        self.channel = site.buildProtocol(None)
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def send(self, header_lines: int, size: int) -> None:
        headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"x" * size) for i in range(header_lines))
        self.channel.dataReceived(b"POST /servers/x HTTP/1.1\r\nHost: api\r\nContent-Length: 0\r\n" + headers + b"\r\n")

    def test_overTheLimit431(self) -> None:
        self.send(5, 8000)
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        self.assertEqual(head.split(b"\r\n")[0], b"HTTP/1.1 431 Request Header Fields Too Large")
        self.assertEqual(json.loads(body), {"errors": [{"detail": f"the request head is over {MAX_HEAD} bytes"}]})
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.resource.bodies, [])

    def test_underTheLimitServed(self) -> None:
        """Between Twisted's default 16 KiB and MAX_HEAD, the request reaches the API (which has its own limits)."""
        self.send(3, 8000)
        self.assertEqual(self.resource.bodies, [0])
        self.assertIn(b"200 OK", self.transport.value())
