"""
The root API (gobetween's REST API), through C{StubTreq} against the whole
API resource, with a real L{Controller} over a L{BalancerService} on a
memory reactor: every route, and every code it answers with.
"""

from __future__ import annotations

import json
import os
import tomllib
from typing import Any

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from admin.gobetween import go_duration, rfc3339
from admin.stack import api_resource
from balancer import __version__
from balancer.config.load import parse_config
from balancer.config.schema import ApiConfig
from balancer.control.interface import IControl
from tests.support.reactors import ListeningReactor
from tests.support.root_api import CONFIG, NEW_SERVER, Api, make_api

SERVER_FIELDS = {"active_connections", "rx_total", "tx_total", "rx_second", "tx_second", "backends"}
BACKEND_FIELDS = {"host", "port", "priority", "weight", "stats"}
BACKEND_STATS_FIELDS = {
    "live": bool, "discovered": bool, "total_connections": int, "active_connections": int,
    "refused_connections": int, "rx": int, "tx": int, "rx_second": int, "tx_second": int,
}


class _ApiTestCase(SynchronousTestCase):
    """Helpers: JSON answers and their content type."""

    def assertJson(self, response: Any, body: bytes, code: int, expected: Any = None) -> Any:
        """The answer has C{code}, is JSON (and equals C{expected} unless None); returns it."""
        self.assertEqual(response.code, code, body)
        self.assertEqual(response.headers.getRawHeaders(b"Content-Type"), [b"application/json"])
        value = json.loads(body)
        if expected is not None:
            self.assertEqual(value, expected)
        return value


class InfoTests(_ApiTestCase):
    """C{GET /} and C{GET /ping}."""

    def test_systemInformation(self) -> None:
        api = make_api(self)
        api.reactor.advance(3723.5)
        response, body = api.call(self, "GET", "/")
        self.assertJson(response, body, 200, {
            "configuration": {"kind": "file", "path": "/etc/balancer/balancer.toml"},
            "pid": os.getpid(),
            "startTime": "1970-01-01T00:00:00Z",
            "time": "1970-01-01T01:02:03.5Z",
            "uptime": "1h2m3.5s",
            "version": __version__,
        })

    def test_configurationPathIsAbsolute(self) -> None:
        config = parse_config(CONFIG.format(api="", extra="").encode(), "x")
        api = Api(config, ListeningReactor(), config_path="etc/balancer.toml")
        response, body = api.call(self, "GET", "/")
        path = self.assertJson(response, body, 200)["configuration"]["path"]
        self.assertEqual(path, os.path.abspath("etc/balancer.toml"))

    def test_pingIsOK(self) -> None:
        response, body = make_api(self).call(self, "GET", "/ping")
        self.assertEqual(body, b'"OK"')
        self.assertJson(response, body, 200, "OK")

    def test_unknownRouteIs404(self) -> None:
        response, body = make_api(self).call(self, "GET", "/nowhere")
        self.assertJson(response, body, 404, "not found")

    def test_wrongMethodIs405WithAllow(self) -> None:
        response, body = make_api(self).call(self, "PUT", "/servers/web")
        self.assertJson(response, body, 405)
        allowed = response.headers.getRawHeaders(b"Allow")[0].decode().split(", ")
        self.assertEqual(sorted(allowed), ["DELETE", "GET", "HEAD", "POST"])


class FormatTests(SynchronousTestCase):
    """Go's duration strings and RFC 3339 times."""

    def test_goDurations(self) -> None:
        cases = {0: "0s", 0.00025: "250µs", 0.0015: "1.5ms", 1: "1s", 3.5: "3.5s", 60: "1m0s",
                 90.25: "1m30.25s", 3600: "1h0m0s", 3723.5: "1h2m3.5s", 90061.000001: "25h1m1.000001s",
                 -1.5: "-1.5s"}
        self.assertEqual({s: go_duration(s) for s in cases}, cases)

    def test_rfc3339(self) -> None:
        self.assertEqual(rfc3339(0), "1970-01-01T00:00:00Z")
        self.assertEqual(rfc3339(1534845600.25), "2018-08-21T10:00:00.25Z")


class ServersTests(_ApiTestCase):
    """C{GET /servers} and C{GET /servers/<name>}."""

    def test_listsEveryServerInConfigKeyNames(self) -> None:
        response, body = make_api(self).call(self, "GET", "/servers")
        servers = self.assertJson(response, body, 200)
        self.assertEqual(list(servers), ["web", "db"])
        self.assertEqual(servers["web"]["bind"], "127.0.0.1:3000")
        self.assertEqual(servers["web"]["balance"], "roundrobin")
        self.assertEqual(servers["web"]["discovery"], {
            "kind": "static", "static_list": ["127.0.0.1:9001 weight=2 priority=1", "127.0.0.1:9002 weight=1 priority=1"],
        })

    def test_oneServer(self) -> None:
        api = make_api(self)
        _, listed = api.call(self, "GET", "/servers")
        response, body = api.call(self, "GET", "/servers/db")
        self.assertJson(response, body, 200, json.loads(listed)["db"])

    def test_unknownServerIs404WithJsonString(self) -> None:
        response, body = make_api(self).call(self, "GET", "/servers/nope")
        self.assertJson(response, body, 404, 'no server named "nope"')


class CreateTests(_ApiTestCase):
    """C{POST /servers/<name>}: create and start, atomically."""

    def test_createsStartsAndAnswersDefinition(self) -> None:
        api = make_api(self)
        response, body = api.call(self, "POST", "/servers/new", json=NEW_SERVER)
        created = self.assertJson(response, body, 200)
        self.assertEqual((created["bind"], created["balance"]), ("127.0.0.1:4000", "leastconn"))
        self.assertEqual(api.reactor.listening(), [3000, 3001, 4000])
        response, body = api.call(self, "GET", "/servers/new")
        self.assertJson(response, body, 200, created)
        _, listed = api.call(self, "GET", "/servers")
        self.assertEqual(list(json.loads(listed)), ["web", "db", "new"])

    def assertNothingChanged(self, api: Api) -> None:
        """Still the two configured servers, and only their listeners."""
        _, listed = api.call(self, "GET", "/servers")
        self.assertEqual(list(json.loads(listed)), ["web", "db"])
        self.assertEqual(api.reactor.listening(), [3000, 3001])

    def test_invalidDefinitionIs409NamingEveryProblem(self) -> None:
        api = make_api(self)
        response, body = api.call(self, "POST", "/servers/new", json={
            "bind": "127.0.0.1:99999", "balance": "fastest", "discovery": {"kind": "static", "static_list": ["x"]},
        })
        problems = self.assertJson(response, body, 409).splitlines()
        self.assertEqual(len(problems), 3, problems)
        self.assertTrue(problems[0].startswith("request body: servers.new.bind: "), problems)
        self.assertIn('"fastest"', problems[1])
        self.assertNothingChanged(api)

    def test_bindOfAnotherServerIs409(self) -> None:
        api = make_api(self)
        response, body = api.call(self, "POST", "/servers/new", json={**NEW_SERVER, "bind": "127.0.0.1:3000"})
        self.assertIn('already bound by server "web"', self.assertJson(response, body, 409))
        self.assertNothingChanged(api)

    def test_takenNameIs409(self) -> None:
        api = make_api(self)
        response, body = api.call(self, "POST", "/servers/web", json=NEW_SERVER)
        self.assertJson(response, body, 409, 'a server named "web" already exists')
        self.assertNothingChanged(api)

    def test_invalidNameIs409(self) -> None:
        api = make_api(self)
        response, body = api.call(self, "POST", "/servers/" + "n" * 65, json=NEW_SERVER)
        self.assertIn("a name is 1 to 64 letters", self.assertJson(response, body, 409))
        self.assertNothingChanged(api)

    def test_bindFailureIs409AndChangesNothing(self) -> None:
        api = make_api(self, taken=(4000,))
        response, body = api.call(self, "POST", "/servers/new", json=NEW_SERVER)
        message = self.assertJson(response, body, 409)
        self.assertEqual(message, 'server "new": cannot listen on 127.0.0.1:4000: [Errno 98] Address already in use')
        self.assertNothingChanged(api)

    def test_bodyNotJsonIs400(self) -> None:
        api = make_api(self)
        for body in (b"", b"{bind", b"\xff\xfe\x00"):
            response, answer = api.call(self, "POST", "/servers/new", data=body,
                                        headers={"Content-Type": "application/json"})
            self.assertTrue(self.assertJson(response, answer, 400).startswith("the body is not JSON"))
        self.assertNothingChanged(api)

    def test_bodyNotObjectIs400(self) -> None:
        api = make_api(self)
        for body in ([NEW_SERVER], "text", 3, None):
            response, answer = api.call(self, "POST", "/servers/new", data=json.dumps(body).encode(),
                                        headers={"Content-Type": "application/json"})
            self.assertIn("expected a JSON object", self.assertJson(response, answer, 400))
        self.assertNothingChanged(api)


class DeleteTests(_ApiTestCase):
    """C{DELETE /servers/<name>}."""

    def test_stopsListenerAndForgetsServer(self) -> None:
        api = make_api(self)
        response, body = api.call(self, "DELETE", "/servers/web")
        self.assertJson(response, body, 200, None)
        self.assertEqual(api.reactor.listening(), [3001])
        response, body = api.call(self, "GET", "/servers/web")
        self.assertEqual(response.code, 404)
        _, listed = api.call(self, "GET", "/servers")
        self.assertEqual(list(json.loads(listed)), ["db"])

    def test_unknownServerIs404(self) -> None:
        api = make_api(self)
        response, body = api.call(self, "DELETE", "/servers/nope")
        self.assertJson(response, body, 404, 'no server named "nope"')
        self.assertEqual(api.reactor.listening(), [3000, 3001])

    def test_recreateAfterDelete(self) -> None:
        api = make_api(self)
        api.call(self, "DELETE", "/servers/web")
        response, body = api.call(self, "POST", "/servers/web", json={**NEW_SERVER, "bind": "127.0.0.1:3000"})
        self.assertJson(response, body, 200)
        self.assertEqual(sorted(api.reactor.listening()), [3000, 3001])


class _Relay:
    """One client relayed by the memory reactor's listener for a server, to the backend it chose."""

    def __init__(self, api: Api, port: int) -> None:
        factory = next(f for p, f, _, _ in api.reactor.tcpServers if p == port)
        self.client_transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.1.1", 50000))
        self.client = factory.buildProtocol(self.client_transport.getPeer())
        self.client.makeConnection(self.client_transport)
        host, backend_port, connector, _, _ = api.reactor.tcpClients[-1]
        self.backend_address = f"{host}:{backend_port}"
        self.backend_transport = StringTransport()
        self.backend = connector.buildProtocol(IPv4Address("TCP", host, backend_port))
        self.backend.makeConnection(self.backend_transport)

    def lose(self) -> None:
        """Both connections end (as the reactor reports an aborted connection)."""
        for protocol in (self.client, self.backend):
            protocol.connectionLost(Failure(ConnectionDone()))


class StatsTests(_ApiTestCase):
    """C{GET /servers/<name>/stats}."""

    def stats(self, api: Api, name: str = "web") -> dict[str, Any]:
        response, body = api.call(self, "GET", f"/servers/{name}/stats")
        return self.assertJson(response, body, 200)

    def test_exactlyTheDocumentedFieldsAndTypes(self) -> None:
        api = make_api(self)
        stats = self.stats(api)
        db = self.stats(api, "db")
        for document in (stats, db):
            self.assertEqual(set(document), SERVER_FIELDS)
            for key in SERVER_FIELDS - {"backends"}:
                self.assertIs(type(document[key]), int, key)
            for backend in document["backends"]:
                self.assertEqual(set(backend), BACKEND_FIELDS)
                self.assertEqual({k: type(v) for k, v in backend["stats"].items()}, BACKEND_STATS_FIELDS)
        self.assertEqual((len(stats["backends"]), len(db["backends"])), (2, 1))
        first = stats["backends"][0]
        self.assertEqual((first["host"], first["port"], first["priority"], first["weight"]),
                         ("127.0.0.1", "9001", 1, 2))

    def test_unknownServerIs404(self) -> None:
        response, body = make_api(self).call(self, "GET", "/servers/nope/stats")
        self.assertJson(response, body, 404, 'no server named "nope"')

    def test_bytesCountedExactlyAndIdleAddsNothing(self) -> None:
        api = make_api(self)
        relay = _Relay(api, 3000)
        relay.client.dataReceived(b"x" * 1000)
        relay.backend.dataReceived(b"y" * 300)
        self.assertEqual((relay.backend_transport.value(), relay.client_transport.value()), (b"x" * 1000, b"y" * 300))
        api.reactor.advance(1)
        stats = self.stats(api)
        backend = next(b for b in stats["backends"] if f"{b['host']}:{b['port']}" == relay.backend_address)
        other = next(b for b in stats["backends"] if b is not backend)
        self.assertEqual((stats["active_connections"], stats["rx_total"], stats["tx_total"],
                          stats["rx_second"], stats["tx_second"]), (1, 300, 1000, 300, 1000))
        self.assertEqual({k: backend["stats"][k] for k in ("rx", "tx", "rx_second", "tx_second",
                                                           "active_connections", "total_connections")},
                         {"rx": 300, "tx": 1000, "rx_second": 300, "tx_second": 1000,
                          "active_connections": 1, "total_connections": 1})
        self.assertEqual((other["stats"]["rx"], other["stats"]["tx"], other["stats"]["total_connections"]), (0, 0, 0))
        api.reactor.advance(10)
        idle = self.stats(api)
        self.assertEqual((idle["rx_total"], idle["tx_total"], idle["rx_second"], idle["tx_second"]), (300, 1000, 0, 0))

    def test_deleteClosesRelaysBeforeAnswering(self) -> None:
        api = make_api(self)
        relay = _Relay(api, 3000)
        deleted = api.stub.delete("http://api.localhost/servers/web")
        api.stub.flush()
        self.assertNoResult(deleted)
        api.reactor.advance(0)
        self.assertTrue(relay.client_transport.disconnecting)
        self.assertTrue(relay.backend_transport.disconnecting)
        relay.lose()
        api.stub.flush()
        self.assertEqual(self.successResultOf(deleted).code, 200)


class DumpTests(_ApiTestCase):
    """C{GET /dump?format=toml|json}."""

    def test_tomlByDefaultLoadsBackToTheSameServers(self) -> None:
        api = make_api(self)
        api.call(self, "POST", "/servers/new", json=NEW_SERVER)
        api.call(self, "DELETE", "/servers/db")
        response, body = api.call(self, "GET", "/dump")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"Content-Type"), [b"application/toml; charset=utf-8"])
        dumped = parse_config(body, "dump.toml")
        self.assertEqual(dumped, api.control.effective_config())
        _, servers = api.call(self, "GET", "/servers")
        _, again = Api(dumped, ListeningReactor()).call(self, "GET", "/servers")
        self.assertEqual(json.loads(again), json.loads(servers))
        self.assertEqual(list(json.loads(again)), ["web", "new"])

    def test_json(self) -> None:
        api = make_api(self)
        response, body = api.call(self, "GET", "/dump?format=json")
        dumped = self.assertJson(response, body, 200)
        self.assertEqual(parse_config(json.dumps(dumped).encode(), "dump.json", as_json=True),
                         api.control.effective_config())

    def test_toml(self) -> None:
        response, body = make_api(self).call(self, "GET", "/dump?format=toml")
        self.assertEqual(list(tomllib.loads(body.decode())["servers"]), ["web", "db"])

    def test_badFormatIs400(self) -> None:
        api = make_api(self)
        for query in ("?format=yaml", "?format="):
            response, body = api.call(self, "GET", "/dump" + query)
            self.assertIn('expected "toml" or "json"', self.assertJson(response, body, 400))


class StateTests(_ApiTestCase):
    """C{[state] path}: changes are on disk before the API answers, and apply again at start."""

    def test_changesPersistBeforeAnswerAndReapplyAtStart(self) -> None:
        path = os.path.abspath(self.mktemp())
        config = parse_config(CONFIG.format(api="", extra=f'[state]\npath = "{path}"').encode(), "test.toml")
        api = Api(config, ListeningReactor())
        response, _ = api.call(self, "POST", "/servers/new", json=NEW_SERVER)
        self.assertEqual(response.code, 200)
        with open(path, "rb") as f:
            self.assertEqual(list(tomllib.load(f)["servers"]), ["new"])
        response, _ = api.call(self, "DELETE", "/servers/web")
        with open(path, "rb") as f:
            self.assertEqual(tomllib.load(f)["deleted"], ["web"])
        _, before = api.call(self, "GET", "/servers")
        restarted = Api(config, ListeningReactor())
        _, after = restarted.call(self, "GET", "/servers")
        self.assertEqual(json.loads(after), json.loads(before))
        self.assertEqual(list(json.loads(after)), ["db", "new"])

    def test_unwritableStateIs500AndChangesNothing(self) -> None:
        path = os.path.join(os.path.abspath(self.mktemp()), "missing-directory", "state.toml")
        config = parse_config(CONFIG.format(api="", extra=f'[state]\npath = "{path}"').encode(), "test.toml")
        api = Api(config, ListeningReactor())
        response, body = api.call(self, "POST", "/servers/new", json=NEW_SERVER)
        self.assertJson(response, body, 500, "internal error")
        response, body = api.call(self, "DELETE", "/servers/web")
        self.assertJson(response, body, 500, "internal error")
        self.assertEqual(len(self.flushLoggedErrors(FileNotFoundError)), 2)
        _, listed = api.call(self, "GET", "/servers")
        self.assertEqual(list(json.loads(listed)), ["web", "db"])
        self.assertEqual(api.reactor.listening(), [3000, 3001])


@implementer(IControl)
class BrokenControl:
    """An L{IControl} whose every call fails unexpectedly."""

    def __getattr__(self, name: str) -> Any:
        def broken(*args: Any) -> Deferred[Any]:
            if name in ("add_server", "remove_server"):
                return fail(RuntimeError(f"{name} broke"))
            raise RuntimeError(f"{name} broke")

        return broken


class FailureTests(_ApiTestCase):
    """500 only for real failures, logged, never with a traceback in the body."""

    def test_unexpectedErrorsAre500WithoutTraceback(self) -> None:
        stub = StubTreq(api_resource(BrokenControl(), ApiConfig(enabled=True)))
        calls = [("GET", "/"), ("GET", "/servers"), ("GET", "/servers/x"), ("GET", "/servers/x/stats"),
                 ("GET", "/dump"), ("POST", "/servers/x"), ("DELETE", "/servers/x")]
        for method, path in calls:
            kwargs = {"json": NEW_SERVER} if method == "POST" else {}
            requested = stub.request(method, "http://api.localhost" + path, **kwargs)
            stub.flush()
            response = self.successResultOf(requested)
            body = self.successResultOf(stub.content(response))
            self.assertJson(response, body, 500, "internal error")
            self.assertNotIn(b"Traceback", body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), len(calls))


class CorsTests(_ApiTestCase):
    """C{[api] cors = true}."""

    def test_everyAnswerAllowsAnyOrigin(self) -> None:
        api = make_api(self, api="cors = true")
        for path in ("/ping", "/servers", "/servers/nope"):
            response, _ = api.call(self, "GET", path, headers={"Origin": "https://ui.example"})
            self.assertEqual(response.headers.getRawHeaders(b"Access-Control-Allow-Origin"), [b"*"], path)

    def test_preflightAnsweredForReadsOnly(self) -> None:
        """
        With C{cors = true} alone, a preflight allows only reads (a deliberate
        difference from gobetween, which allows writes to any origin): a write
        from another origin would be refused anyway.
        """
        api = make_api(self, api="cors = true")
        response, body = api.call(self, "OPTIONS", "/servers/new", headers={
            "Origin": "https://ui.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        })
        self.assertEqual((response.code, body), (204, b""))
        headers = response.headers
        self.assertEqual(headers.getRawHeaders(b"Access-Control-Allow-Origin"), [b"*"])
        self.assertEqual(headers.getRawHeaders(b"Access-Control-Allow-Methods"), [b"GET, HEAD, OPTIONS"])
        self.assertIsNone(headers.getRawHeaders(b"Access-Control-Allow-Credentials"))
        self.assertEqual(headers.getRawHeaders(b"Access-Control-Allow-Headers"), [b"content-type"])
        self.assertEqual(api.reactor.listening(), [3000, 3001])

    def test_anyOriginMayNotSendCredentials(self) -> None:
        """
        A preflight for any origin never allows C{Authorization}: a page of
        any site could otherwise try passwords from its visitors' browsers
        and read C{/dump} once one is right.
        """
        api = make_api(self, api='cors = true\n[api.basic_auth]\nlogin = "admin"\npassword = "s3cret-password"')
        for asked, allowed in (("Authorization", None), ("content-type, AUTHORIZATION", [b"content-type"]),
                               ("x-a,authorization , x-b", [b"x-a, x-b"])):
            response, _ = api.call(self, "OPTIONS", "/dump", headers={
                "Origin": "https://evil.example", "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": asked})
            self.assertEqual(response.code, 204)
            self.assertEqual(response.headers.getRawHeaders(b"Access-Control-Allow-Headers"), allowed, asked)

    def test_offByDefault(self) -> None:
        api = make_api(self)
        response, _ = api.call(self, "GET", "/servers", headers={"Origin": "https://ui.example"})
        self.assertIsNone(response.headers.getRawHeaders(b"Access-Control-Allow-Origin"))
        response, _ = api.call(self, "OPTIONS", "/servers", headers={"Access-Control-Request-Method": "GET"})
        self.assertEqual(response.code, 405)
