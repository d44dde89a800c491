"""
/v1 over real sockets on 127.0.0.1 port 0: the balancer and its API served
by this process's reactor, backends that answer with their name, and treq.
A server created with C{POST /v1/servers} and linked to a service takes
traffic; in maintenance it takes none while the others serve; cleared, it
takes traffic again.  Also the answers only a real connection shows (413).
"""

from __future__ import annotations

import json
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
import admin.channel
from admin.site import ApiSite
from admin.stack import api_resource
from balancer.config.load import parse_config
from balancer.control.controller import Controller
from balancer.root_service import BalancerService
from tests.support.clients import Named, answers, listen

CONFIG = """
[servers.web]
bind = "127.0.0.1:0"
balance = "roundrobin"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:{port}"]
"""


class WatchedSite(ApiSite):
    """An L{ApiSite} that knows when each of its connections has closed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closed: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        closed: Deferred[None] = Deferred()
        self.closed.append(closed)
        lost = protocol.connectionLost

        def connection_lost(reason: Any) -> None:
            lost(reason)
            closed.callback(None)

        protocol.connectionLost = connection_lost
        return protocol


class ServerLifeTests(TestCase):
    """Create, link, maintenance, clear: traffic follows."""

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        first = yield listen(Named, name=b"first")
        second = yield listen(Named, name=b"second")
        for port in (first, second):
            self.addCleanup(port.stopListening)
        self.second = second.getHost().port
        config = parse_config(CONFIG.format(port=first.getHost().port).encode(), "integration.toml")
        self.balancer = BalancerService(config, reactor)
        self.balancer.privilegedStartService()
        self.balancer.startService()
        self.addCleanup(self.balancer.stopService)
        control = Controller(self.balancer, config, "integration.toml", reactor)
        site = self.site = WatchedSite(api_resource(control, config.api), header_timeout=config.api.header_timeout,
                                       max_connections=config.api.max_connections, reactor=reactor)
        api = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(api.stopListening)
        self.api = f"http://127.0.0.1:{api.getHost().port}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))

    @inlineCallbacks
    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Fires with (code, decoded body or None); a change answers its document (C{Prefer})."""
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs = {"data": json.dumps(body).encode(),
                      "headers": {"Content-Type": "application/json", "Prefer": "return=representation"}}
        response = yield self.http.request(method, self.api + path, **kwargs)
        raw = yield response.content()
        return response.code, json.loads(raw) if raw else None

    def names(self, count: int = 4) -> Deferred[list[bytes]]:
        """Fires with the backend names of C{count} connections to service web, in order."""
        return answers(self.balancer.server("web").port, count)

    @inlineCallbacks
    def test_createLinkMaintenanceClear(self) -> Any:
        before = yield self.names()
        self.assertEqual(set(before), {b"first"})
        created = {"data": {"id": "second", "type": "servers",
                            "attributes": {"parameters": {"address": "127.0.0.1", "port": self.second}}}}
        code, body = yield self.call("POST", "/v1/servers", created)
        self.assertEqual(code, 201, body)
        code, _ = yield self.call("PATCH", "/v1/servers/second",
                                  {"data": {"relationships": {"services": {"data": [{"id": "web", "type": "services"}]}}}})
        self.assertEqual(code, 200)
        linked = yield self.names()
        self.assertEqual(sorted(linked), [b"first", b"first", b"second", b"second"])
        code, _ = yield self.call("PUT", "/v1/servers/second/set?state=maintenance")
        self.assertEqual(code, 204)
        maintained = yield self.names()
        self.assertEqual(maintained, [b"first"] * 4)
        code, _ = yield self.call("PUT", "/v1/servers/second/clear")
        self.assertEqual(code, 204)
        cleared = yield self.names()
        self.assertEqual(sorted(cleared), [b"first", b"first", b"second", b"second"])
        code, body = yield self.call("GET", "/v1/servers/second")
        self.assertEqual(body["data"]["attributes"]["statistics"]["total_connections"], 4)

    @inlineCallbacks
    def test_bodyOverTheLimitIs413WithAnErrorDocument(self) -> Any:
        self.patch(admin.channel, "LINGER", 0.0)
        response = yield self.http.request("POST", self.api + "/v1/servers", data=b"[" + b" " * (2 << 20) + b"]",
                                      headers={"Content-Type": "application/json"})
        body = yield response.json()
        self.assertEqual(response.code, 413)
        self.assertEqual(body, {"errors": [{"detail": "the request body is over the limit of 1048576 bytes"}]})
        yield gatherResults(self.site.closed)
