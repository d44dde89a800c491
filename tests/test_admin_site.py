"""
L{ApiSite}: at most C{max_connections} API connections open; past it, 503
with the JSON error and C{Retry-After} (in the API's form once the request
line shows it), and past L{MAX_REFUSING} refusals at once, closed unanswered.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from admin.channel import LINGER, ApiChannel
from admin.site import MAX_REFUSING, ApiSite, Dropped, Refusal

PEER = IPv4Address("TCP", "192.0.2.7", 40000)
DETAIL = "the API has 2 connections open, its limit: try again later"


class Ok(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return b"ok"


class ConnectionLimitTests(SynchronousTestCase):
    """max_connections = 2."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.site = ApiSite(Ok(), header_timeout=10.0, max_connections=2, reactor=self.clock)

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.site.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        protocol.makeConnection(transport)
        return protocol, transport

    def refused(self, transport: StringTransport) -> tuple[bytes, Any]:
        head, _, body = transport.value().partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.1 503 Service Unavailable")
        self.assertIn(b"Content-Type: application/json", lines)
        self.assertIn(b"Retry-After: 1", lines)
        return head, json.loads(body)

    def test_pastTheLimitA503InTheFormOfTheApi(self) -> None:
        self.connect(), self.connect()
        third, transport = self.connect()
        self.assertIsInstance(third, Refusal)
        self.assertEqual(transport.value(), b"")
        third.dataReceived(b"GET /v1/servers HTTP/1.1\r\nHost: api\r\n\r\n")
        self.assertEqual(self.refused(transport)[1], {"errors": [{"detail": DETAIL}]})
        third.dataReceived(b"more")
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)
        self.clock.advance(LINGER)
        self.assertTrue(transport.disconnecting)
        self.clock.advance(LINGER)
        self.assertTrue(transport.disconnected)

    def test_silentClientGetsTheRootFormAfterLinger(self) -> None:
        self.connect(), self.connect()
        _, transport = self.connect()
        self.clock.advance(LINGER)
        self.assertEqual(self.refused(transport)[1], DETAIL)

    def test_aClosedConnectionFreesItsPlace(self) -> None:
        first, _ = self.connect()
        self.connect()
        first.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.site.open_connections, 1)
        again, transport = self.connect()
        self.assertIsInstance(again, ApiChannel)
        again.dataReceived(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))

    def test_refusalsCountOnlyWhileOpen(self) -> None:
        self.connect(), self.connect()
        refusal, _ = self.connect()
        self.assertEqual(self.site.refusing, 1)
        refusal.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.site.refusing, 0)
        self.assertEqual([c.func.__name__ for c in self.clock.getDelayedCalls()], ["_head_too_slow"] * 2)

    def test_pastMaxRefusingClosedAtOnce(self) -> None:
        self.connect(), self.connect()
        for _ in range(MAX_REFUSING):
            self.assertIsInstance(self.connect()[0], Refusal)
        dropped, transport = self.connect()
        self.assertIsInstance(dropped, Dropped)
        self.assertEqual((transport.value(), transport.disconnected), (b"", True))
