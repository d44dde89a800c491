"""
Runtime overrides and closing a backend's sessions in a real C{twistd -n
balancer} with two worker processes and C{[state]}: a weight override moves
the traffic of both processes from one backend to the other and still does
after a restart; C{DELETE /v1/servers/<id>/sessions} closes the sessions
every process holds.
"""

from __future__ import annotations

import json
import os
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from tests.support.clients import Echo, Named, answers, exchange, listen
from tests.support.paths import scratch_directory
from tests.support.processes import spawn_balancer
from tests.support.waiting import polled

#: How many connections in a row must reach the expected backend once the
#: override is in effect, and how many attempts it may take the other
#: worker to get it (worker 0 answers the API before the other process has read its line).
IN_A_ROW = 12
ATTEMPTS = 200
#: Seconds the live count may take to show the other worker's part (it reports once a second).
REPORTS_TIMEOUT = 10.0


class Held(Protocol):
    """A client connection that stays open; C{closed} fires when it ends."""

    def __init__(self) -> None:
        self.closed: Deferred[None] = Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


class OverrideProcessTests(TestCase):
    """Two worker processes, two backends, the state file."""

    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:
        directory = scratch_directory(self)
        self.config = os.path.join(directory, "balancer.toml")
        first = yield listen(Named, name=b"first")
        second = yield listen(Named, name=b"second")
        echo = yield listen(Echo)
        for port in (first, second, echo):
            self.addCleanup(port.stopListening)
        self.first = f"127.0.0.1:{first.getHost().port}"
        self.echo = f"127.0.0.1:{echo.getHost().port}"
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(f"""
[defaults]
workers = 2
shutdown_grace = "1s"
[api]
enabled = true
bind = "127.0.0.1:0"
[state]
path = "{os.path.join(directory, 'state.toml')}"
[servers.web]
bind = "127.0.0.1:0"
[servers.web.discovery]
kind = "static"
static_list = ["{self.first}", "127.0.0.1:{second.getHost().port}"]
[servers.echo]
bind = "127.0.0.1:0"
[servers.echo.discovery]
kind = "static"
static_list = ["{self.echo}"]
""")

    @inlineCallbacks
    def start(self) -> Any:
        """Start twistd; fires with (process, API port, web port, echo port) once worker 1 serves."""
        process = spawn_balancer(self, self.config)
        api = yield process.listening_port("api")
        web = yield process.listening_port("web")
        echo = yield process.listening_port("echo")
        yield process.wait_for(rb"worker 1 \(pid \d+\) serving")
        return process, api, web, echo

    @inlineCallbacks
    def call(self, api: int, method: str, path: str, body: Any = None) -> Any:
        """Fires with (status, decoded JSON or None) of one API request (a change answers its document: C{Prefer})."""
        response = yield treq.request(method, f"http://127.0.0.1:{api}{path}", json=body, persistent=False,
                                      headers={"Prefer": "return=representation"})
        content = yield response.content()
        return response.code, json.loads(content) if content else None

    @inlineCallbacks
    def settles_on(self, port: int, name: bytes) -> Any:
        """Fires with True once C{IN_A_ROW} connections in a row reach C{name} (within C{ATTEMPTS})."""
        row = 0
        for _ in range(ATTEMPTS):
            answer = yield exchange(port)
            row = row + 1 if answer == name else 0
            if row == IN_A_ROW:
                return True
        return False

    @inlineCallbacks
    def test_weightOverrideMovesTrafficAndSurvivesRestart(self) -> Any:
        process, api, web, _ = yield self.start()
        before = yield answers(web, 24)
        self.assertEqual(set(before), {b"first", b"second"})
        code, body = yield self.call(api, "PATCH", f"/v1/servers/{self.first}",
                                     {"data": {"attributes": {"parameters": {"weight": 0}}}})
        self.assertEqual(code, 200, body)
        self.assertEqual(body["data"]["attributes"]["overrides"], {"weight": 0})
        moved = yield self.settles_on(web, b"second")
        self.assertTrue(moved)
        yield process.stop()
        process, api, web, _ = yield self.start()
        after = yield answers(web, IN_A_ROW)
        self.assertEqual(set(after), {b"second"})
        code, stats = yield self.call(api, "GET", "/servers/web/stats")
        self.assertEqual([b["weight"] for b in stats["backends"] if f'{b["host"]}:{b["port"]}' == self.first], [0])
        code, body = yield self.call(api, "PATCH", f"/v1/servers/{self.first}",
                                     {"data": {"attributes": {"parameters": {"weight": None}}}})
        self.assertEqual((code, body["data"]["attributes"]["overrides"]), (200, {}))
        back = yield answers(web, 24)
        self.assertIn(b"first", back)

    @inlineCallbacks
    def test_deleteSessionsClosesThemInEveryProcess(self) -> Any:
        _, api, _, echo = yield self.start()
        clients = []
        for _ in range(8):
            client = Held()
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", echo), client)
            clients.append(client)
        path = f"/v1/servers/{self.echo}"
        yield polled(lambda: self.call(api, "GET", path),
                     lambda answer: answer[1]["data"]["attributes"]["statistics"]["connections"] == len(clients),
                     timeout=REPORTS_TIMEOUT, what="the live count of both workers' sessions")
        code, _ = yield self.call(api, "DELETE", path + "/sessions")
        self.assertEqual(code, 204)
        yield gatherResults([client.closed for client in clients])
