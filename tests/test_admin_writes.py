"""
L{admin.writes}: who may send a write.  A write's body must be JSON (415),
a write from a page of another origin is refused unless listed (403), and
with no account only loopback clients write (403).  Through C{StubTreq}
(a client on 127.0.0.1) and, for other client addresses, through the real
L{Site} on a L{StringTransport} whose peer is the address under test.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from admin.origins import parse_origin
from admin.request import BoundedRequest
from admin.stack import api_resource
from balancer.config.errors import ConfigError
from balancer.config.load import parse_config
from tests.support.v1_api import CONFIG, REPRESENTATION, V1, assert_errors, header, make_v1

#: A definition that is valid JSON, as a cross-site text/plain form can send it.
EXEC_SERVER = {"bind": "127.0.0.1:4000",
               "discovery": {"kind": "exec", "exec_command": ["/bin/sh", "-c", "id > /tmp/pwned; X=1"]}}

#: A harmless server definition.
NEW_SERVER = {"bind": "127.0.0.1:4000", "discovery": {"kind": "static", "static_list": ["127.0.0.1:9100"]}}

#: A new /v1 service.
NEW_SERVICE = {"data": {"id": "new", "type": "services", "attributes": {"parameters": NEW_SERVER}}}

ACCOUNTS = """
[api.basic_auth]
login = "admin"
password = "1111"
"""


def form_body(definition: dict[str, Any]) -> bytes:
    """
    What a browser sends for a form with C{enctype="text/plain"} and one
    field C{NAME=VALUE}, NAME and VALUE chosen so the whole is C{definition}
    as JSON: the C{=} lands inside a string of it.
    """
    text = json.dumps(definition)
    cut = text.index("X=1") + 1
    name, value = text[:cut], text[cut + 1:]
    return f"{name}={value}\r\n".encode()


class MediaTypeTests(SynchronousTestCase):
    """A write that carries a body must be JSON."""

    def assertNothingCreated(self, v1: V1) -> None:
        response, _ = v1.call(self, "GET", "/servers/new")
        self.assertEqual(response.code, 404)
        self.assertEqual(v1.reactor.listening(), [3000, 3001, 3002])

    def test_crossSiteFormPostOfAnExecServerIs415(self) -> None:
        """
        The attack: a text/plain form whose body is a valid exec server
        definition.  Refused with 415 even with C{allow_exec}, whatever the
        browser adds (an C{Origin}, or none); nothing is created.
        """
        v1 = make_v1(self, api="allow_exec = true")
        body = form_body(EXEC_SERVER)
        self.assertEqual(json.loads(body), EXEC_SERVER)
        for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "text/plain", "Origin": "https://evil.example"},
                        {"Content-Type": "text/plain;charset=UTF-8", "Origin": "null"}):
            response, answer = v1.call(self, "POST", "/servers/new", data=body, headers=headers)
            self.assertEqual((response.code, header(response, "Content-Type")), (415, "application/json"), answer)
            self.assertIn('"text/plain"', json.loads(answer))
        self.assertNothingCreated(v1)

    def test_everyNonJsonTypeIs415(self) -> None:
        v1 = make_v1(self)
        body = json.dumps(NEW_SERVER).encode()
        multipart = b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\n%s\r\n--x--\r\n' % body
        for content_type in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/json",
                             "application/jsonx", "application/json-patch+json", "text/plain; application/json",
                             "application/json, text/plain", None):
            headers = {"Content-Type": content_type} if content_type is not None else {}
            sent = multipart if content_type and content_type.startswith("multipart/") else body
            response, answer = v1.call(self, "POST", "/servers/new", data=sent, headers=headers)
            self.assertEqual(response.code, 415, content_type)
            self.assertIsInstance(json.loads(answer), str)
        self.assertNothingCreated(v1)

    def test_jsonWithParametersAndAnyCaseIsTaken(self) -> None:
        v1 = make_v1(self)
        for i, content_type in enumerate(("application/json; charset=utf-8", "Application/JSON", "application/json ;x=y")):
            definition = {**NEW_SERVER, "bind": f"127.0.0.1:{4000 + i}"}
            response, answer = v1.call(self, "POST", f"/servers/new{i}", data=json.dumps(definition).encode(),
                                       headers={"Content-Type": content_type})
            self.assertEqual(response.code, 200, answer)

    def test_v1WriteNotJsonIs415WithErrorDocument(self) -> None:
        v1 = make_v1(self)
        response, body = v1.json(self, "POST", "/v1/services", NEW_SERVICE, content_type="text/plain")
        assert_errors(self, response, body, 415, "must be JSON", '"text/plain"')
        response, body = v1.json(self, "PATCH", "/v1/services/web", [{"op": "replace", "path": "/data/attributes/parameters/balance",
                                                                       "value": "leastconn"}], content_type="text/plain")
        assert_errors(self, response, body, 415)
        self.assertNothingCreated(v1)
        self.assertEqual(v1.control.server_definition("web")["balance"], "roundrobin")

    def test_v1TakesJsonAndJsonPatch(self) -> None:
        v1 = make_v1(self)
        response, body = v1.json(self, "POST", "/v1/services", NEW_SERVICE, content_type="application/json; charset=utf-8", headers=REPRESENTATION)
        self.assertEqual(response.code, 201, body)
        for content_type in ("application/json-patch+json", "application/json-patch"):
            patch = [{"op": "replace", "path": "/data/attributes/parameters/balance", "value": "leastconn"}]
            response, body = v1.json(self, "PATCH", "/v1/services/web", patch, content_type=content_type, headers=REPRESENTATION)
            self.assertEqual(response.code, 200, body)

    def test_writesWithoutBodyNeedNoContentType(self) -> None:
        v1 = make_v1(self)
        response, body = v1.json(self, "PUT", "/v1/servers/127.0.0.1:9001/set?state=drain")
        self.assertEqual(response.code, 204, body)
        response, body = v1.json(self, "PUT", "/v1/servers/127.0.0.1:9001/clear", headers={"Content-Type": "text/plain"})
        self.assertEqual(response.code, 204, body)
        response, body = v1.call(self, "DELETE", "/servers/db")
        self.assertEqual((response.code, body), (200, b"null"))

    def test_writeWithABodyOfAnyMethodIsChecked(self) -> None:
        """DELETE and PUT carrying a non-JSON body are refused too, and change nothing."""
        v1 = make_v1(self)
        response, body = v1.call(self, "DELETE", "/servers/db", data=b"x", headers={"Content-Type": "text/plain"})
        self.assertEqual(response.code, 415, body)
        response, body = v1.json(self, "PUT", "/v1/servers/127.0.0.1:9001/set?state=drain",
                                 data=b"x", headers={"Content-Type": "text/plain"})
        assert_errors(self, response, body, 415)
        self.assertEqual(v1.control.backend("127.0.0.1:9001").admin_state, "active")
        self.assertIn("db", v1.control.server_names())

    def test_readsAreNotChecked(self) -> None:
        v1 = make_v1(self)
        response, _ = v1.call(self, "GET", "/servers", data=b"x", headers={"Content-Type": "text/plain",
                                                                           "Origin": "https://evil.example"})
        self.assertEqual(response.code, 200)


class OriginTests(SynchronousTestCase):
    """A write sent by a page of another origin."""

    def post(self, v1: V1, origin: str, port: int = 4000) -> tuple[Any, Any]:
        """POST a new server "new<port>" bound to C{port}, as a page of C{origin}."""
        definition = {**NEW_SERVER, "bind": f"127.0.0.1:{port}"}
        response, raw = v1.call(self, "POST", f"/servers/new{port}", data=json.dumps(definition).encode(),
                                headers={"Content-Type": "application/json", "Origin": origin})
        return response, json.loads(raw)

    def test_otherOriginIs403AndChangesNothing(self) -> None:
        v1 = make_v1(self)
        for origin in ("https://evil.example", "null", "https://api.localhost", "http://api.localhost:8080",
                       "http://api.localhost.evil.example", "http://api.localhost/path", "garbage"):
            response, message = self.post(v1, origin)
            self.assertEqual(response.code, 403, origin)
            self.assertIn(f'origin "{origin}"', message)
            self.assertIn("[api] cors_origins", message)
        self.assertEqual(v1.reactor.listening(), [3000, 3001, 3002])

    def test_v1OtherOriginIs403WithErrorDocument(self) -> None:
        v1 = make_v1(self)
        response, body = v1.json(self, "DELETE", "/v1/services/db", headers={"Origin": "https://evil.example"})
        assert_errors(self, response, body, 403, "cors_origins")
        self.assertIn("db", v1.control.server_names())

    def test_ownOriginMayWrite(self) -> None:
        """The scheme and Host of the request, compared as browsers do (case, default port)."""
        v1 = make_v1(self)
        for i, origin in enumerate(("http://api.localhost", "HTTP://API.LOCALHOST", "http://api.localhost:80")):
            response, message = self.post(v1, origin, 4000 + i)
            self.assertEqual(response.code, 200, message)

    def test_withoutOriginAWriteIsTaken(self) -> None:
        v1 = make_v1(self)
        response, _ = v1.call(self, "DELETE", "/servers/db")
        self.assertEqual(response.code, 200)

    def test_everyOriginHeaderMustBeTrusted(self) -> None:
        v1 = make_v1(self)
        response, _ = v1.call(self, "DELETE", "/servers/db",
                              headers={"Origin": ["http://api.localhost", "https://evil.example"]})
        self.assertEqual(response.code, 403)

    def test_listedOriginMayWrite(self) -> None:
        v1 = make_v1(self, api='cors_origins = ["https://ui.example", "http://[::1]:8443"]')
        response, message = self.post(v1, "https://ui.example:443")
        self.assertEqual(response.code, 200, message)
        response, message = self.post(v1, "http://[::1]:8443", 4001)
        self.assertEqual(response.code, 200, message)
        response, message = self.post(v1, "https://ui.example:8443", 4002)
        self.assertEqual(response.code, 403, message)

    def test_refusedBeforeCredentials(self) -> None:
        """A foreign write is refused before any password check: 403, not 401."""
        v1 = make_v1(self, extra=ACCOUNTS)
        response, _ = v1.call(self, "DELETE", "/servers/db", headers={"Origin": "https://evil.example"})
        self.assertEqual(response.code, 403)
        response, _ = v1.call(self, "DELETE", "/servers/db", headers={"Origin": "http://api.localhost"})
        self.assertEqual(response.code, 401)


class CorsTests(SynchronousTestCase):
    """C{[api] cors} lets any origin read; C{cors_origins} lets the origins listed also write."""

    def preflight(self, v1: V1, origin: str) -> Any:
        response, body = v1.call(self, "OPTIONS", "/v1/services/web", headers={
            "Origin": origin, "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization, content-type"})
        return response

    def test_listedOriginGetsItsOwnNameAndEveryMethod(self) -> None:
        v1 = make_v1(self, api='cors_origins = ["https://ui.example"]')
        response = self.preflight(v1, "https://ui.example")
        self.assertEqual(response.code, 204)
        self.assertEqual(header(response, "Access-Control-Allow-Origin"), "https://ui.example")
        self.assertEqual(header(response, "Access-Control-Allow-Credentials"), "true")
        self.assertEqual(header(response, "Access-Control-Allow-Methods"), "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
        self.assertEqual(header(response, "Vary"), "Origin")
        response, _ = v1.call(self, "GET", "/servers", headers={"Origin": "https://ui.example"})
        self.assertEqual(header(response, "Access-Control-Allow-Origin"), "https://ui.example")

    def test_unlistedOriginGetsNothingWithoutCors(self) -> None:
        v1 = make_v1(self, api='cors_origins = ["https://ui.example"]')
        response = self.preflight(v1, "https://evil.example")
        self.assertEqual(response.code, 405)
        self.assertIsNone(header(response, "Access-Control-Allow-Origin"))
        response, _ = v1.call(self, "GET", "/servers", headers={"Origin": "https://evil.example"})
        self.assertIsNone(header(response, "Access-Control-Allow-Origin"))

    def test_withCorsUnlistedOriginsMayOnlyRead(self) -> None:
        v1 = make_v1(self, api='cors = true\ncors_origins = ["https://ui.example"]')
        response = self.preflight(v1, "https://evil.example")
        self.assertEqual(header(response, "Access-Control-Allow-Origin"), "*")
        self.assertEqual(header(response, "Access-Control-Allow-Methods"), "GET, HEAD, OPTIONS")
        self.assertIsNone(header(response, "Access-Control-Allow-Credentials"))
        response = self.preflight(v1, "https://ui.example")
        self.assertEqual(header(response, "Access-Control-Allow-Origin"), "https://ui.example")


#: A server whose discovery holds a secret (C{consul_acl_token}).
CONSUL_WITH_TOKEN = """
[servers.mesh]
bind = "127.0.0.1:3010"
[servers.mesh.discovery]
kind = "consul"
consul_host = "127.0.0.1:8500"
consul_service_name = "web"
consul_acl_token = "ACL-SECRET"
"""


def raw_call(test: SynchronousTestCase, v1: V1, extra: str, client: Any, request: bytes) -> tuple[int, bytes]:
    """
    Send C{request} (raw HTTP) to the API of C{v1}'s balancer from C{client}
    through a real L{Site}; returns (status code, body).

    @param extra: the sections (accounts) the API is built with.
    """
    config = parse_config(CONFIG.format(api="", extra=extra).encode(), "test.toml")
    site = Site(api_resource(v1.control, config.api), requestFactory=BoundedRequest, reactor=v1.reactor)
    protocol = site.buildProtocol(client)
    transport = StringTransport(peerAddress=client)
    protocol.makeConnection(transport)
    protocol.dataReceived(request)
    head, _, body = transport.value().partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        chunks = []
        while True:
            size, _, body = body.partition(b"\r\n")
            if int(size, 16) == 0:
                break
            chunks.append(body[: int(size, 16)])
            body = body[int(size, 16) + 2:]
        body = b"".join(chunks)
    return int(head.split(b" ")[1]), body


class LoopbackTests(SynchronousTestCase):
    """With no account, this host is the admin; other hosts read as a basic account and may not write."""

    REMOTE = (IPv4Address("TCP", "192.0.2.7", 40000), IPv6Address("TCP", "2001:db8::7", 40000),
              IPv6Address("TCP", "::ffff:192.0.2.7", 40000))
    LOCAL = (IPv4Address("TCP", "127.0.0.1", 40000), IPv4Address("TCP", "127.3.2.1", 40000),
             IPv6Address("TCP", "::1", 40000), IPv6Address("TCP", "::ffff:127.0.0.1", 40000))

    def test_remoteWriteWithoutAccountIs403SayingHowToAddOne(self) -> None:
        v1 = make_v1(self)
        for client in self.REMOTE:
            code, body = raw_call(self, v1, "", client, b"DELETE /servers/db HTTP/1.1\r\nHost: api.localhost\r\n\r\n")
            self.assertEqual(code, 403, body)
            message = json.loads(body)
            self.assertIn(f"writes from {client.host} need an account", message)
            self.assertIn("[api.basic_auth]", message)
            code, body = raw_call(self, v1, "", client, b"PUT /v1/servers/127.0.0.1:9001/set?state=drain HTTP/1.1\r\n"
                                                        b"Host: api.localhost\r\n\r\n")
            self.assertEqual(code, 403, body)
            self.assertIn("[[api.users]]", json.loads(body)["errors"][0]["detail"])
        self.assertIn("db", v1.control.server_names())
        self.assertEqual(v1.control.backend("127.0.0.1:9001").admin_state, "active")

    def test_remoteReadsWithoutAccountAreAnswered(self) -> None:
        v1 = make_v1(self)
        for client in self.REMOTE:
            code, body = raw_call(self, v1, "", client, b"GET /servers HTTP/1.1\r\nHost: api.localhost\r\n\r\n")
            self.assertEqual(code, 200)
            self.assertIn("db", json.loads(body))

    def test_remoteReadsWithoutAccountHideSecrets(self) -> None:
        """
        With no account, other hosts read as a basic account: secrets shown
        as C{********}, no C{/dump}; this host reads them as the admin.
        """
        v1 = make_v1(self, extra=CONSUL_WITH_TOKEN)
        for client in self.REMOTE:
            code, body = raw_call(self, v1, "", client, b"GET /servers/mesh HTTP/1.1\r\nHost: api.localhost\r\n\r\n")
            self.assertEqual(code, 200, body)
            self.assertEqual(json.loads(body)["discovery"]["consul_acl_token"], "********")
            code, body = raw_call(self, v1, "", client, b"GET /dump HTTP/1.1\r\nHost: api.localhost\r\n\r\n")
            self.assertEqual(code, 403, body)
            self.assertNotIn(b"ACL-SECRET", body)
        for client in self.LOCAL:
            code, body = raw_call(self, v1, "", client, b"GET /dump HTTP/1.1\r\nHost: api.localhost\r\n\r\n")
            self.assertEqual(code, 200, body)
            self.assertIn(b"ACL-SECRET", body)

    def test_loopbackWritesWithoutAccount(self) -> None:
        v1 = make_v1(self)
        for i, client in enumerate(self.LOCAL):
            code, body = raw_call(self, v1, "", client, b"PUT /v1/servers/127.0.0.1:9001/%s?state=drain HTTP/1.1\r\n"
                                                        b"Host: api.localhost\r\n\r\n" % (b"clear" if i % 2 else b"set"))
            self.assertEqual(code, 204, body)
            self.assertEqual(v1.control.backend("127.0.0.1:9001").admin_state, "active" if i % 2 else "drain")

    def test_remoteWriteWithAccountIsTaken(self) -> None:
        v1 = make_v1(self, extra=ACCOUNTS)
        code, body = raw_call(self, v1, ACCOUNTS, self.REMOTE[0], b"DELETE /servers/db HTTP/1.1\r\nHost: api.localhost\r\n"
                                                                  b"Authorization: Basic YWRtaW46MTExMQ==\r\n\r\n")
        self.assertEqual((code, body), (200, b"null"))
        code, body = raw_call(self, v1, ACCOUNTS, self.REMOTE[0], b"GET /servers/db HTTP/1.1\r\nHost: api.localhost\r\n"
                                                            b"Authorization: Basic YWRtaW46MTExMQ==\r\n\r\n")
        self.assertEqual(code, 404, body)


class OriginParsingTests(SynchronousTestCase):
    """L{parse_origin}: what browsers send in C{Origin}, and what C{cors_origins} lists."""

    def test_origins(self) -> None:
        self.assertEqual(parse_origin("https://UI.example"), ("https", "ui.example", 443))
        self.assertEqual(parse_origin("http://ui.example:8080"), ("http", "ui.example", 8080))
        self.assertEqual(parse_origin("http://[::1]"), ("http", "::1", 80))
        for text in ("null", "", "ftp://x", "https://", "https://u:p@ui.example", "https://ui.example/",
                     "https://ui.example?x", "https://ui.example:99999", "https://ui.example:x", "//ui.example"):
            self.assertIsNone(parse_origin(text), text)


class ConfigTests(SynchronousTestCase):
    """The new C{[api]} keys."""

    def test_defaults(self) -> None:
        api = parse_config(CONFIG.format(api="", extra="").encode(), "test.toml").api
        self.assertEqual((api.cors_origins, api.allow_exec), ((), False))

    def test_badOriginsNamed(self) -> None:
        lines = 'cors_origins = ["https://ok.example", "ui.example", "https://ui.example/", "null", "*"]'
        with self.assertRaises(ConfigError) as caught:
            parse_config(CONFIG.format(api=lines, extra="").encode(), "test.toml")
        text = "\n".join(caught.exception.lines())
        for i in (1, 2, 3, 4):
            self.assertIn(f"api.cors_origins[{i}]", text)
        self.assertNotIn("api.cors_origins[0]", text)

    def test_originPortOutOfRangeNamed(self) -> None:
        lines = 'cors_origins = ["https://ok.example:443", "https://ui.example:70000", "http://[::1]:0"]'
        with self.assertRaises(ConfigError) as caught:
            parse_config(CONFIG.format(api=lines, extra="").encode(), "test.toml")
        self.assertEqual(caught.exception.lines(), [
            'test.toml: api.cors_origins[1]: expected a port from 1 to 65535, got "https://ui.example:70000"',
            'test.toml: api.cors_origins[2]: expected a port from 1 to 65535, got "http://[::1]:0"'])

    def test_allowExecIsABoolean(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse_config(CONFIG.format(api='allow_exec = "yes"', extra="").encode(), "test.toml")
        self.assertIn("api.allow_exec", "\n".join(caught.exception.lines()))
