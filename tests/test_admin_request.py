"""
L{BoundedRequest}: a body over 1 MiB is refused with 413 as soon as that is
known, before the rest is taken in, and the connection closes once the client
had time to read the answer; a failure no route handled is a JSON 500.
Driven through an L{ApiSite}'s channel on a C{StringTransport} and a clock.
"""

from __future__ import annotations

import json

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from admin.channel import LINGER
from admin.jsonbody import MAX_BODY
from admin.site import ApiSite


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
        site = ApiSite(self.resource, header_timeout=10.0, max_connections=10, reactor=self.clock)
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


class Failing(Resource):
    """Raises while rendering, as a route no error handler catches would."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        raise OSError(24, "Too many open files")


class ProcessingFailedTests(SynchronousTestCase):
    """A failure no route handled is a JSON 500 in the API's error form, logged, never Twisted's HTML page."""

    def answer(self, path: bytes) -> tuple[bytes, bytes]:
        site = ApiSite(Failing(), header_timeout=10.0, max_connections=10, reactor=Clock())
        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: api\r\n\r\n")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 500 "), head)
        self.assertIn(b"Content-Type: application/json", head.split(b"\r\n"))
        return head, body

    def test_rootApiAnswersAJsonString(self) -> None:
        _, body = self.answer(b"/servers")
        self.assertEqual(json.loads(body), "internal error (logged)")

    def test_v1AnswersAnErrorDocument(self) -> None:
        _, body = self.answer(b"/v1/servers?x=1")
        self.assertEqual(json.loads(body), {"errors": [{"detail": "internal error (logged)"}]})
