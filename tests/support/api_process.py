"""
Balancers in child processes (C{twistd -n balancer}) for API integration
tests: a configuration with the API, a state file and server "web" in front
of a doubling backend, the API port read from the log, and C{treq} calls.
"""

from __future__ import annotations

import json
import os
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ServerFactory
from twisted.internet.ssl import Certificate
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from tests.support.clients import Double
from tests.support.paths import scratch_directory
from tests.support.processes import WatchedProcess, spawn_balancer

#: The API on C{{api_port}} (0: any) with C{{api}} lines more, the state file
#: C{{state}}, and server "web" on port 0 in front of 127.0.0.1:C{{backend}}.
CONFIG = """
[api]
enabled = true
bind = "127.0.0.1:{api_port}"
{api}

[state]
path = "{state}"

[servers.web]
bind = "127.0.0.1:0"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:{backend}"]
"""


class ApiProcessTestCase(TestCase):
    """Starting balancers (C{twistd -n balancer} in child processes), and talking to their API."""

    timeout = 60

    def setUp(self) -> None:
        self.directory = scratch_directory(self)
        self.state = os.path.join(self.directory, "state.toml")
        doubling = ServerFactory()
        doubling.protocol = Double
        backend = reactor.listenTCP(0, doubling, interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        address = backend.getHost()
        assert isinstance(address, IPv4Address)
        self.backend = address.port
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        self.pool = pool

    def write_config(self, api: str = "", api_port: int = 0, name: str = "balancer.toml") -> str:
        """A configuration in the test's directory: the API, the state file, and server "web"."""
        path = os.path.join(self.directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(CONFIG.format(api=api, api_port=api_port, state=self.state, backend=self.backend))
        return path

    @inlineCallbacks
    def start(self, config: str) -> Any:
        """Start C{twistd -n balancer --config=CONFIG}; fires with (process, API port) once the API listens."""
        process = spawn_balancer(self, config)
        match = yield process.wait_for(rb"api: listening on 127\.0\.0\.1:(\d+)")
        return process, int(match.group(1))

    def listening_port(self, process: WatchedProcess, server: str) -> Deferred[int]:
        """Fires with the port server C{server} listens on, from the log."""
        return process.listening_port(server)

    def client(self, trust: bytes | None = None) -> HTTPClient:
        """A treq client; with C{trust}, HTTPS trusting only that certificate."""
        policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(trust)) if trust else None
        agent = Agent(reactor, contextFactory=policy, pool=self.pool) if policy else Agent(reactor, pool=self.pool)
        return HTTPClient(agent)

    @inlineCallbacks
    def call(self, port: int, method: str, path: str, scheme: str = "http", client: HTTPClient | None = None,
             **kwargs: Any) -> Any:
        """Fires with (response, decoded JSON body) of one API request."""
        client = client or self.client()
        response = yield client.request(method, f"{scheme}://127.0.0.1:{port}{path}", **kwargs)
        body = yield response.content()
        content_type = response.headers.getRawHeaders(b"Content-Type", [b""])[0]
        return response, json.loads(body) if content_type == b"application/json" else body
