"""
L{Gate} in a real L{Site}, one HTTP connection per client over a
C{StringTransport}, with the whole guard (L{admin.auth.guard}) behind it and a
fake blocking runner in place of the thread pool: 401, 429 and 503 with their
JSON bodies and C{Retry-After}, logins dropped when their client leaves, and
the avatar rendering the rest of the path.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import bcrypt
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site

from admin.auth import Account, guard
from balancer.config.schema import ApiConfig, ApiUserConfig, BasicAuthConfig
from tests.support.runners import BlockingRunner

HASH = bcrypt.hashpw(b"viewer-secret", bcrypt.gensalt(rounds=4)).decode()


class Shown(Resource):
    """The API as an account sees it: answers with the account kind and the path it was given."""

    isLeaf = True

    def __init__(self, account: Account) -> None:
        super().__init__()
        self.account = account

    def render(self, request: IRequest) -> bytes:
        return f"{self.account.value} {b'/'.join(request.postpath).decode()}".encode()


class Answer:
    """One parsed HTTP answer."""

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        self.code = int(status.split(b" ")[1])
        self.headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower()] = value.strip()

    def json(self) -> Any:
        return json.loads(self.body)


class Api:
    """The guard in a site, with a blocking runner and a memory clock."""

    def __init__(self, concurrency: int = 1, per_second: int = 5) -> None:
        self.runner = BlockingRunner()
        self.reactor = MemoryReactorClock()
        config = ApiConfig(
            enabled=True,
            basic_auth=BasicAuthConfig(login="admin", password="1111"),
            users=(ApiUserConfig(login="viewer", password_hash=HASH, account="basic"),),
            auth_concurrency=concurrency,
            auth_failures_per_second=per_second,
        )
        self.site = Site(guard(config, Shown, self.runner, self.reactor), reactor=self.reactor)

    def send(self, path: str = "/servers", auth: tuple[str, str] | None = None, host: str = "192.0.2.1",
             method: str = "GET", headers: str = "") -> tuple[Any, StringTransport]:
        """Open a connection from C{host} and send one request; returns (channel, transport)."""
        address = (IPv6Address if ":" in host else IPv4Address)("TCP", host, 40000)
        channel = self.site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        channel.makeConnection(transport)
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers += f"Authorization: Basic {token}\r\n"
        channel.dataReceived(f"{method} {path} HTTP/1.1\r\nHost: api.localhost\r\n{headers}\r\n".encode())
        return channel, transport

    def answer(self, transport: StringTransport) -> Answer:
        return Answer(transport.value())


class GateTests(SynchronousTestCase):

    def test_noCredentialsIs401WithAJsonBodyAndTheChallenge(self) -> None:
        api = Api()
        for path, expected in (("/servers", "credentials missing or not valid: use HTTP Basic authentication"),
                               ("/v1/services", {"errors": [{"detail": "credentials missing or not valid: "
                                                                        "use HTTP Basic authentication"}]})):
            _, transport = api.send(path)
            answer = api.answer(transport)
            self.assertEqual((answer.code, answer.headers[b"www-authenticate"], answer.headers[b"content-type"]),
                             (401, b'Basic realm="balancer"', b"application/json"))
            self.assertEqual(answer.json(), expected)
        self.assertEqual(api.runner.running, 0)

    def test_headGets401WithoutABody(self) -> None:
        _, transport = Api().send(method="HEAD")
        answer = Answer(transport.value())
        self.assertEqual((answer.code, answer.body), (401, b""))

    def test_unreadableCredentialsAre401WithoutACheck(self) -> None:
        api = Api()
        for header in ("Basic !!!", "Basic YWRtaW4=", "Bearer abc", "Basic", "basic"):
            _, transport = api.send(headers=f"Authorization: {header}\r\n")
            self.assertEqual(api.answer(transport).code, 401, header)
        self.assertEqual(api.runner.running, 0)

    def test_avatarRendersTheRestOfThePath(self) -> None:
        api = Api()
        _, transport = api.send("/v1/services/web", auth=("admin", "1111"))
        answer = api.answer(transport)
        self.assertEqual((answer.code, answer.body), (200, b"admin v1/services/web"))

    def test_hashedLoginWaitsForItsCheck(self) -> None:
        api = Api()
        _, transport = api.send(auth=("viewer", "viewer-secret"))
        self.assertEqual((transport.value(), api.runner.running), (b"", 1))
        api.runner.finish()
        self.assertEqual(api.answer(transport).body, b"basic servers")

    def test_wrongPasswordAfterItsCheckIs401(self) -> None:
        api = Api()
        _, transport = api.send(auth=("viewer", "nope"))
        api.runner.finish()
        self.assertEqual(api.answer(transport).code, 401)

    def test_pastTheQueueIs503AtOnceWithRetryAfter(self) -> None:
        api = Api(concurrency=1)
        waiting = [api.send(auth=("viewer", "nope"), host=f"192.0.2.{i}")[1] for i in range(1, 6)]
        self.assertEqual((api.runner.running, [t.value() for t in waiting]), (1, [b""] * 5))
        for path, body in (("/servers", "too many logins are being checked: retry after 1s"),
                           ("/v1/services", {"errors": [{"detail": "too many logins are being checked: "
                                                                  "retry after 1s"}]})):
            _, transport = api.send(path, auth=("viewer", "viewer-secret"), host="192.0.2.100")
            answer = api.answer(transport)
            self.assertEqual((answer.code, answer.headers[b"retry-after"], answer.headers[b"content-type"]),
                             (503, b"1", b"application/json"))
            self.assertEqual(answer.json(), body)
        while api.runner.started:
            api.runner.finish()
        self.assertEqual(len(api.runner.ran), 5, "the refused logins were never checked")
        self.assertEqual([api.answer(t).code for t in waiting], [401] * 5)

    def test_pastTheFailureLimitIs429WithRetryAfterAndNoCheck(self) -> None:
        api = Api(concurrency=2, per_second=3)
        for _ in range(3):
            _, transport = api.send(auth=("viewer", "nope"))
            api.runner.finish()
            self.assertEqual(api.answer(transport).code, 401)
        for auth in (("viewer", "nope"), ("viewer", "viewer-secret"), ("admin", "1111"), ("nobody", "x")):
            _, transport = api.send(auth=auth)
            answer = api.answer(transport)
            self.assertEqual((answer.code, answer.headers[b"retry-after"]), (429, b"1"), auth)
            self.assertEqual(answer.json(), "too many failed logins from this address: retry after 1s")
        self.assertEqual((api.runner.running, len(api.runner.ran)), (0, 3))
        _, transport = api.send(auth=("admin", "1111"), host="192.0.2.2")
        self.assertEqual(api.answer(transport).code, 200, "other addresses are not limited")
        api.reactor.advance(1 / 3)
        _, transport = api.send(auth=("admin", "1111"))
        self.assertEqual(api.answer(transport).code, 200, "a token came back")

    def test_ipv6ClientsOfOneSlash64ShareALimit(self) -> None:
        api = Api(per_second=1)
        api.send(auth=("admin", "x"), host="2001:db8::1")
        _, transport = api.send(auth=("admin", "1111"), host="2001:db8::2")
        self.assertEqual(api.answer(transport).code, 429)
        _, transport = api.send(auth=("admin", "1111"), host="2001:db8:0:1::2")
        self.assertEqual(api.answer(transport).code, 200)

    def test_loginOfAClientThatLeftIsNeverChecked(self) -> None:
        api = Api(concurrency=1)
        _, first = api.send(auth=("viewer", "nope"), host="192.0.2.1")
        gone = [api.send(auth=("viewer", f"gone-{i}"), host=f"192.0.2.{10 + i}") for i in range(4)]
        for channel, _ in gone:
            channel.connectionLost(Failure(ConnectionDone()))
        _, kept = api.send(auth=("viewer", "viewer-secret"), host="192.0.2.99")
        while api.runner.started:
            api.runner.finish()
        self.assertEqual([args[0] for args in api.runner.ran], [b"nope", b"viewer-secret"])
        self.assertEqual((api.answer(first).code, api.answer(kept).code), (401, 200))
        self.assertEqual([t.value() for _, t in gone], [b""] * 4)

    def test_clientThatLeftDuringItsCheckGetsNothingWritten(self) -> None:
        api = Api(concurrency=1)
        channel, transport = api.send(auth=("viewer", "viewer-secret"))
        channel.connectionLost(Failure(ConnectionDone()))
        api.runner.finish()
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.flushLoggedErrors(), [], "nothing was written to the lost connection")

    def test_successIsCachedAcrossConnections(self) -> None:
        api = Api()
        _, transport = api.send(auth=("viewer", "viewer-secret"))
        api.runner.finish()
        for _ in range(10):
            _, transport = api.send(auth=("viewer", "viewer-secret"))
            self.assertEqual(api.answer(transport).code, 200)
        self.assertEqual((len(api.runner.ran), api.runner.running), (1, 0))
        api.reactor.advance(60)
        _, transport = api.send(auth=("viewer", "viewer-secret"))
        self.assertEqual((transport.value(), api.runner.running), (b"", 1), "checked again after a minute")
