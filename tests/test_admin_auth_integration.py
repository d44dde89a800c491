"""
A flood of wrong passwords against a real C{twistd} balancer whose admin
account has a cost-12 bcrypt hash: many concurrent connections, each from its
own loopback address (127.0.0.2 and up), half of them leaving before their
answer.  Every flood request is answered 401, 429 or 503; a valid admin
request right after the flood is answered; and a plain TCP relay through the
balancer keeps serving during it.  The figures (answer time, relay p99 before
and during the flood) are printed, not asserted as times: the machine is shared.
"""

from __future__ import annotations

import base64
import collections
import os
import re
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from tests.support.clients import Echo, exchange, serve
from tests.support.paths import scratch_directory
from tests.support.processes import spawn_balancer

#: C{bcrypt.hashpw(b"admin-secret", bcrypt.gensalt(12))}: about 0.3 s a check on one core.
ADMIN_HASH = "$2b$12$wJWOaLu5b/.Rj4FyOpAIy.VGrNkd0uExCA1tZuWfUnjlbSyJxVS1e"

CONFIG = f"""
[api]
enabled = true
bind = "127.0.0.1:0"

[[api.users]]
login = "admin"
password_hash = "{ADMIN_HASH}"

[servers.web]
bind = "127.0.0.1:0"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:{{backend}}"]
"""

#: Flood clients at once, each on its own source address, and requests each sends.
FLOODERS = 40
REQUESTS_EACH = 6


class Answer(Protocol):
    """Sends one HTTP request (C{Connection: close}); L{done} fires with the status code, or None if it left."""

    def __init__(self, request: bytes, leave: bool) -> None:
        self.request = request
        self.leave = leave
        self.received = b""
        self.done: Deferred[int | None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)
        if self.leave:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        match = re.match(rb"HTTP/1\.1 (\d{3}) ", self.received)
        self.done.callback(int(match.group(1)) if match else None)


def http_get(port: int, path: str, login: str, password: str, source: str = "127.0.0.1",
             leave: bool = False) -> Deferred[int | None]:
    """GET C{path} with Basic credentials from C{source}; fires with the status code."""
    token = base64.b64encode(f"{login}:{password}".encode()).decode()
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic {token}\r\n"
               f"Connection: close\r\n\r\n").encode()
    protocol = Answer(request, leave)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10, bindAddress=(source, 0))
    return connectProtocol(endpoint, protocol).addCallback(lambda _: protocol.done)


def p99(samples: list[float]) -> float:
    """The 99th percentile of C{samples} (nearest rank), in milliseconds."""
    ordered = sorted(samples)
    return 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


class FloodTests(TestCase):
    """Wrong passwords from many connections: the API stays answerable and the relay serves."""

    timeout = 180

    @inlineCallbacks
    def test_wrongPasswordFloodLeavesTheApiAnswerableAndTheRelayServing(self) -> Any:
        backend = yield serve(self, Echo)
        directory = scratch_directory(self)
        config = os.path.join(directory, "balancer.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(CONFIG.format(backend=backend.getHost().port))
        process = spawn_balancer(self, config)
        yield process.seen
        api = int(re.search(rb"api: listening on 127\.0\.0\.1:(\d+)", process.output).group(1))
        web = int(re.search(rb"web: listening on 127\.0\.0\.1:(\d+)", process.output).group(1))

        relayed = yield self.relay_latencies(web, count=100)
        baseline = p99(relayed)

        codes: collections.Counter[int | None] = collections.Counter()

        @inlineCallbacks
        def flooder(index: int) -> Any:
            source = f"127.0.0.{2 + index}"
            for n in range(REQUESTS_EACH):
                code = yield http_get(api, "/servers", "admin", f"wrong-{index}-{n}", source, leave=n % 2 == 1)
                codes[code] += 1

        started = time.monotonic()
        flood = DeferredList([flooder(i) for i in range(FLOODERS)], fireOnOneErrback=True, consumeErrors=True)
        during: list[float] = []
        while not flood.called:
            during.extend((yield self.relay_latencies(web, count=10)))
        yield flood
        flood_seconds = time.monotonic() - started

        sent = time.monotonic()
        code = yield http_get(api, "/servers", "admin", "admin-secret")
        answered = time.monotonic() - sent
        self.assertEqual(code, 200)
        sent = time.monotonic()
        code = yield http_get(api, "/servers", "admin", "admin-secret")
        cached = time.monotonic() - sent
        self.assertEqual(code, 200)

        answered_codes = {c: n for c, n in codes.items() if c is not None}
        self.assertLessEqual(set(answered_codes), {401, 429, 503}, codes)
        self.assertIn(503, answered_codes, "the flood outgrew the check queue: some logins were refused at once")
        self.assertEqual(sum(codes.values()), FLOODERS * REQUESTS_EACH)
        print(
            f"\n  flood: {FLOODERS * REQUESTS_EACH} wrong-password requests from {FLOODERS} addresses "
            f"(half left before the answer) in {flood_seconds:.1f} s; answers {dict(sorted(answered_codes.items()))}"
            f"\n  valid admin request after the flood: answered in {answered * 1000:.0f} ms "
            f"(cost-12 bcrypt check), again from the cache in {cached * 1000:.1f} ms"
            f"\n  relay p99: {baseline:.1f} ms before ({len(relayed)} exchanges), "
            f"{p99(during):.1f} ms during the flood ({len(during)} exchanges)"
        )

    @inlineCallbacks
    def relay_latencies(self, port: int, count: int) -> Any:
        """Fires with the seconds each of C{count} sequential echo exchanges through C{port} took."""
        latencies = []
        for i in range(count):
            payload = b"ping %d" % i
            started = time.monotonic()
            answer = yield exchange(port, payload)
            latencies.append(time.monotonic() - started)
            self.assertEqual(answer, payload)
        return latencies
