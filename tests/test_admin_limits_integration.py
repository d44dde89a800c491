"""
The API's HTTP limits against a real C{twistd -n balancer}: a slowloris
flood closed by the head deadline while the data plane and C{/ping} serve,
C{[api] max_connections} keeping descriptors for the data plane under a low
C{ulimit -n}, and a process out of descriptors still answering a JSON 503.
Data-plane latencies during the floods are printed (p50, p99), not asserted.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults, inlineCallbacks, succeed
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from admin.reserve import DETAIL as OUT_OF_DESCRIPTORS
from tests.support.clients import Double, exchange, serve
from tests.support.paths import scratch_directory
from tests.support.peers import open_client
from tests.support.processes import spawn_balancer

CONFIG = """
[api]
enabled = true
bind = "127.0.0.1:0"
{api}

[servers.web]
bind = "127.0.0.1:0"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:{backend}"]
"""

PING = b"GET /ping HTTP/1.1\r\nHost: api.localhost\r\n\r\n"



class Client(Protocol):
    """Sends C{first}, collects what it receives; L{closed} fires with it when the connection ends."""

    def __init__(self, first: bytes = b"") -> None:
        self.first = first
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()
        self.settled: Deferred[None] = Deferred()
        self._until: list[tuple[bytes, Deferred[bytes]]] = []

    def connectionMade(self) -> None:
        if self.first:
            self.transport.write(self.first)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.settled.called:
            self.settled.callback(None)
        for entry in list(self._until):
            if entry[0] in self.received:
                self._until.remove(entry)
                entry[1].callback(self.received)

    def until(self, marker: bytes, seconds: float = 20) -> Deferred[bytes]:
        """Fires once C{marker} was received (within C{seconds})."""
        if marker in self.received:
            return succeed(self.received)
        waiting: Deferred[bytes] = Deferred()
        self._until.append((marker, waiting))
        return waiting.addTimeout(seconds, reactor)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.settled.called:
            self.settled.callback(None)
        self.closed.callback(self.received)


class Trickler(Client):
    """
    A slowloris: a request line, then one header byte every half second, never
    the end of the head.  L{waited} is how long after connecting the first answer came.
    """

    waited: float | None = None

    def __init__(self) -> None:
        super().__init__()
        self._connecting = reactor.seconds()

    def connectionMade(self) -> None:
        self.transport.write(b"GET /servers HTTP/1.1\r\nX-Slow: ")
        self._loop = LoopingCall(self.transport.write, b"a")
        self._loop.start(0.5, now=False)

    def dataReceived(self, data: bytes) -> None:
        if self.waited is None:
            self.waited = reactor.seconds() - self._connecting
        super().dataReceived(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._loop.running:
            self._loop.stop()
        super().connectionLost(reason)


def parse(answer: bytes) -> tuple[int, bytes, Any]:
    """(code, head, decoded JSON body) of one answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, json.loads(body)


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return f"{len(ordered)} relays, p50 {pick(0.5):.1f} ms, p99 {pick(0.99):.1f} ms"


class LimitsTests(TestCase):
    """Each test starts its own balancer."""

    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:
        self.directory = scratch_directory(self)
        backend = yield serve(self, Double)
        self.backend = backend.getHost().port
        self.clients: list[Client] = []

    def tearDown(self) -> Any:
        for client in self.clients:
            if client.transport is not None:
                client.transport.abortConnection()
        return DeferredList([c.closed for c in self.clients if c.transport is not None])

    @inlineCallbacks
    def start(self, api: str, descriptors: int | None = None) -> Any:
        """Start the balancer (under C{ulimit -n DESCRIPTORS}); fires with (process, API port, web port)."""
        path = os.path.join(self.directory, "balancer.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(CONFIG.format(api=api, backend=self.backend))
        process = spawn_balancer(self, path, descriptors=descriptors)
        api_port = yield process.wait_for(rb"api: listening on 127\.0\.0\.1:(\d+)")
        web_port = yield process.wait_for(rb"web: listening on 127\.0\.0\.1:(\d+)")
        return process, int(api_port.group(1)), int(web_port.group(1))

    @inlineCallbacks
    def open(self, port: int, client: Client) -> Any:
        self.clients.append(client)
        yield open_client(port, client)
        return client

    @inlineCallbacks
    def open_in_batches(self, port: int, make: Any, count: int, batch: int = 25) -> Any:
        """
        Open C{count} clients of C{make()}, C{batch} at a time, each batch followed by a
        C{/ping} (answered or refused) so that the balancer has accepted it before the
        next: a burst past the kernel's accept queue would have connections wait for
        SYN-ACK retries, seconds apart.
        """
        clients = []
        for start in range(0, count, batch):
            opened = yield gatherResults([self.open(port, make()) for _ in range(min(batch, count - start))])
            clients.extend(opened)
            barrier = yield self.open(port, Client(b"GET /ping HTTP/1.0\r\n\r\n"))
            yield barrier.closed.addTimeout(20, reactor)
        return clients

    @inlineCallbacks
    def relay(self, web: int, samples: list[float]) -> Any:
        """One data-plane round trip through server web; its time joins C{samples}."""
        started = reactor.seconds()
        answer = yield exchange(web, b"ping")
        samples.append(reactor.seconds() - started)
        self.assertEqual(answer, b"pingping")

    @inlineCallbacks
    def ping(self, api: int) -> Any:
        """Fires with (code, JSON body) of C{GET /ping} on a new connection."""
        client = yield self.open(api, Client(b"GET /ping HTTP/1.0\r\n\r\n"))
        answer = yield client.closed.addTimeout(20, reactor)
        code, _, body = parse(answer)
        return code, body

    @inlineCallbacks
    def test_slowlorisClosedByTheHeadDeadlineWhileTheDataPlaneServes(self) -> Any:
        process, api, web = yield self.start('header_timeout = "2s"')
        started = reactor.seconds()
        tricklers = yield self.open_in_batches(api, Trickler, 200)
        samples: list[float] = []
        for _ in range(20):
            yield self.relay(web, samples)
        code, pong = yield self.ping(api)
        self.assertEqual((code, pong), (200, "OK"))
        answers = yield gatherResults([t.closed.addTimeout(20, reactor) for t in tricklers])
        elapsed = reactor.seconds() - started
        self.assertGreaterEqual(min(t.waited for t in tricklers), 2.0)
        for answer in answers:
            code, head, body = parse(answer)
            self.assertEqual((code, body), (408, "the request head did not arrive within 2s"))
            self.assertIn(b"Content-Type: application/json", head)
        for _ in range(20):
            yield self.relay(web, samples)
        print(f"\nslowloris: 200 connections, all answered 408 and closed within {elapsed:.1f} s; "
              f"data plane meanwhile: {percentiles(samples)}")

    @inlineCallbacks
    def test_maxConnectionsKeepsDescriptorsForTheDataPlane(self) -> Any:
        process, api, web = yield self.start('max_connections = 20\nheader_timeout = "60s"', descriptors=128)
        held = []
        for _ in range(20):
            client = yield self.open(api, Client(PING))
            yield client.until(b'"OK"')
            held.append(client)
        # Far more connections than descriptors are left: without the cap they would take them all.
        # Past the refusals answered at once, some are reset before the client saw them connect.
        flood: list[Client] = []
        for _ in range(6):
            opened = yield DeferredList([self.open(api, Client(PING)) for _ in range(25)], consumeErrors=True)
            self.assertTrue(all(ok or client.check(ConnectError) for ok, client in opened))
            batch = [client for ok, client in opened if ok]
            yield gatherResults([c.settled.addTimeout(20, reactor) for c in batch])
            flood.extend(batch)
        samples: list[float] = []
        for _ in range(20):
            yield self.relay(web, samples)
        answers = yield gatherResults([c.closed.addTimeout(20, reactor) for c in flood])
        code, body = yield self.ping(api)
        self.assertEqual((code, body), (503, "the API has 20 connections open, its limit: try again later"))
        answered = [parse(a) for a in answers if a]
        self.assertTrue(answered)
        for code, head, body in answered:
            self.assertEqual((code, body), (503, "the API has 20 connections open, its limit: try again later"))
            self.assertIn(b"Retry-After: 1", head)
        self.assertFalse(any(c.closed.called for c in held))
        for client in held:
            client.transport.loseConnection()
        yield gatherResults([c.closed for c in held])
        code, pong = yield self.ping(api)
        self.assertEqual((code, pong), (200, "OK"))
        print(f"\nmax_connections = 20 under ulimit -n 128: 150 more connections, {len(answered)} answered 503, "
              f"{150 - len(answered)} closed unanswered; data plane meanwhile: {percentiles(samples)}")

    @inlineCallbacks
    def test_outOfDescriptorsAnswersAJson503(self) -> Any:
        process, api, web = yield self.start('max_connections = 1000\nheader_timeout = "60s"', descriptors=64)
        clients = yield self.open_in_batches(api, Client, 100)
        yield process.wait_for(rb"api: out of file descriptors")
        # Connections are accepted in order: once this one is answered, each of the
        # others was either accepted (and is held) or answered.  The answer is in
        # /v1's form only if the request was there to read when it was accepted.
        v1 = yield self.open(api, Client(b"GET /v1/services HTTP/1.1\r\nHost: api.localhost\r\n\r\n"))
        answer = yield v1.closed.addTimeout(20, reactor)
        self.assertIn(parse(answer)[2], ({"errors": [{"detail": OUT_OF_DESCRIPTORS}]}, OUT_OF_DESCRIPTORS))
        answered = [c for c in clients if c.received]
        yield gatherResults([c.closed.addTimeout(20, reactor) for c in answered])
        self.assertTrue(answered)
        for client in answered:
            code, head, body = parse(client.received)
            self.assertEqual((code, body), (503, OUT_OF_DESCRIPTORS))
            self.assertIn(b"Content-Type: application/json", head)
        held = [c for c in clients if not c.received]
        self.assertTrue(held)
        for client in held:
            client.transport.loseConnection()
        yield gatherResults([c.closed for c in held])
        code, pong = yield self.ping(api)
        self.assertEqual((code, pong), (200, "OK"))
        yield process.wait_for(rb"api: accepting again; \d+ connections were refused")
        print(f"\nout of descriptors (ulimit -n 64): {len(held)} API connections held, "
              f"{len(answered)} more answered a JSON 503")
