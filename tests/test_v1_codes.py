"""
/v1 status codes (docs/DESIGN.md §7.2), each through C{StubTreq} with a request that
means it, asserting the body's shape and the headers, not only the code.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from admin.v1.services import Services
from tests.support.reactors import HeldPorts
from tests.support.v1_api import ACCOUNTS, NEW_SERVER, REPRESENTATION, V1, assert_errors, header, make_v1


class SuccessTests(SynchronousTestCase):
    """2xx and 3xx."""

    def setUp(self) -> None:
        self.v1 = make_v1(self)

    def test_200RootAndNamespace(self) -> None:
        for path in ("/", "/v1/"):
            response, body = self.v1.json(self, "GET", path)
            self.assertEqual(response.code, 200)
        self.assertEqual(body["links"]["services"], "/v1/services")
        self.assertEqual(header(response, "Allow"), "GET, HEAD")

    def test_201CreateWithLocationAndDocument(self) -> None:
        response, body = self.v1.json(self, "POST", "/v1/servers", NEW_SERVER, headers=REPRESENTATION)
        self.assertEqual(response.code, 201, body)
        self.assertEqual(header(response, "Location"), "/v1/servers/mine")
        self.assertEqual((body["data"]["id"], body["data"]["type"]), ("mine", "servers"))
        self.assertEqual(body["links"]["self"], "/v1/servers/mine")
        self.assertEqual(body["data"]["attributes"]["parameters"],
                         {"address": "127.0.0.1", "port": 9100, "weight": 1, "priority": 1, "max_connections": 0})
        self.assertTrue(header(response, "ETag"))

    def test_204DeleteAndSet(self) -> None:
        self.v1.json(self, "POST", "/v1/servers", NEW_SERVER)
        response, body = self.v1.json(self, "PUT", "/v1/servers/mine/set?state=drain")
        self.assertEqual((response.code, body), (204, None))
        response, body = self.v1.json(self, "DELETE", "/v1/servers/mine")
        self.assertEqual((response.code, body), (204, None))
        response, _ = self.v1.json(self, "GET", "/v1/servers/mine")
        self.assertEqual(response.code, 404)

    def test_304IfNoneMatchAndIfModifiedSince(self) -> None:
        response, _ = self.v1.json(self, "GET", "/v1/services/web")
        tag, modified = header(response, "ETag"), header(response, "Last-Modified")
        response, raw = self.v1.call(self, "GET", "/v1/services/web", headers={"If-None-Match": tag})
        self.assertEqual((response.code, raw), (304, b""))
        self.assertEqual(header(response, "ETag"), tag)
        response, raw = self.v1.call(self, "GET", "/v1/services/web", headers={"If-Modified-Since": modified})
        self.assertEqual((response.code, raw), (304, b""))
        response, _ = self.v1.call(self, "GET", "/v1/services/web", headers={"If-None-Match": '"other"'})
        self.assertEqual(response.code, 200)

    def test_308MovedWithLocation(self) -> None:
        response, body = self.v1.json(self, "GET", "/v1/users/admin", allow_redirects=False)
        self.assertEqual(response.code, 308)
        self.assertEqual(header(response, "Location"), "/v1/users/inet/admin")
        self.assertEqual(body["links"]["self"], "/v1/users/inet/admin")
        response, _ = self.v1.json(self, "GET", "/v1", allow_redirects=False)
        self.assertEqual((response.code, header(response, "Location")), (308, "/v1/"))


class ClientErrorTests(SynchronousTestCase):
    """4xx: each with a JSON:API error document."""

    def setUp(self) -> None:
        self.v1 = make_v1(self)

    def test_400MalformedJsonDocumentOrParameter(self) -> None:
        response, raw = self.v1.call(self, "POST", "/v1/servers", data=b"{nope",
                                     headers={"Content-Type": "application/json"})
        assert_errors(self, response, json.loads(raw), 400, "not JSON")
        response, body = self.v1.json(self, "POST", "/v1/servers", {"id": "mine"})
        errors = assert_errors(self, response, body, 400, "JSON:API document")
        self.assertEqual(errors[0]["source"]["pointer"], "/data")
        response, body = self.v1.json(self, "GET", "/v1/servers?pretty=maybe")
        assert_errors(self, response, body, 400, "pretty")
        response, body = self.v1.json(self, "GET", "/v1/servers?page[size]=0")
        assert_errors(self, response, body, 400, "page[size]")

    def test_401WithoutCredentials(self) -> None:
        v1 = make_v1(self, extra=ACCOUNTS)
        response, body = v1.json(self, "GET", "/v1/services")
        assert_errors(self, response, body, 401, "credentials")
        self.assertEqual(header(response, "WWW-Authenticate"), 'Basic realm="balancer"')
        response, body = v1.json(self, "GET", "/v1/services", auth=("admin", "wrong"))
        assert_errors(self, response, body, 401)
        response, body = v1.json(self, "GET", "/v1/services", auth=("admin", "admin-secret"))
        self.assertEqual(response.code, 200)

    def test_403BasicAccountWriting(self) -> None:
        v1 = make_v1(self, extra=ACCOUNTS)
        response, body = v1.json(self, "POST", "/v1/servers", NEW_SERVER, auth=("viewer", "viewer-secret"))
        assert_errors(self, response, body, 403, "admin account")
        response, body = v1.json(self, "GET", "/v1/servers", auth=("viewer", "viewer-secret"))
        self.assertEqual(response.code, 200)
        self.assertNotIn("mine", [s["id"] for s in body["data"]])

    def test_404UnknownResource(self) -> None:
        for path in ("/v1/servers/nope:1", "/v1/services/nope", "/v1/sessions/12345", "/v1/users/inet/nobody",
                     "/v1/things", "/v1/services/web/relationships/nope"):
            response, body = self.v1.json(self, "GET", path)
            assert_errors(self, response, body, 404)
        response, body = self.v1.json(self, "GET", "/v1/services/nope")
        self.assertEqual(header(response, "Allow"), "GET, HEAD, PATCH, DELETE")

    def test_405WithAllow(self) -> None:
        response, body = self.v1.json(self, "DELETE", "/v1/balancer")
        assert_errors(self, response, body, 405, "DELETE")
        self.assertEqual(header(response, "Allow"), "GET, HEAD")
        response, body = self.v1.json(self, "POST", "/v1/users/inet", {"data": {"id": "x"}})
        assert_errors(self, response, body, 405)
        self.assertEqual(header(response, "Allow"), "GET, HEAD")

    def test_406AcceptWithoutJson(self) -> None:
        response, body = self.v1.json(self, "GET", "/v1/services", headers={"Accept": "text/html"})
        assert_errors(self, response, body, 406, "application/json")
        response, _ = self.v1.json(self, "GET", "/v1/services", headers={"Accept": "text/html, application/*;q=0.5"})
        self.assertEqual(response.code, 200)

    def test_409TakenInUseOrDynamicDiscovery(self) -> None:
        self.v1.json(self, "POST", "/v1/servers", NEW_SERVER)
        response, body = self.v1.json(self, "POST", "/v1/servers", NEW_SERVER)
        assert_errors(self, response, body, 409, 'a server named "mine" already exists')
        link = {"data": [{"id": "mine", "type": "servers"}, {"id": "127.0.0.1:5432", "type": "servers"}]}
        response, _ = self.v1.json(self, "PATCH", "/v1/services/db/relationships/servers", link)
        self.assertEqual(response.code, 204)
        response, body = self.v1.json(self, "DELETE", "/v1/servers/mine")
        assert_errors(self, response, body, 409, "used by db")
        response, body = self.v1.json(self, "PATCH", "/v1/services/dyn/relationships/servers",
                                      {"data": [{"id": "mine", "type": "servers"}]})
        assert_errors(self, response, body, 409, 'discovery kind "plaintext"', 'only servers with discovery kind "static"')
        response, body = self.v1.json(self, "DELETE", "/v1/servers/127.0.0.1:9001")
        assert_errors(self, response, body, 409, "comes from the discovery")

    def test_411BodyWithoutLength(self) -> None:
        response, raw = self.v1.call(self, "PATCH", "/v1/services/web")
        assert_errors(self, response, json.loads(raw), 411, "Content-Length")

    def test_412LeavesTheResourceUntouched(self) -> None:
        change = {"data": {"attributes": {"parameters": {"balance": "leastconn"}}}}
        response, body = self.v1.json(self, "PATCH", "/v1/services/web", change, headers={"If-Match": '"stale"'})
        assert_errors(self, response, body, 412, "If-Match")
        self.v1.reactor.advance(10)
        response, _ = self.v1.json(self, "PATCH", "/v1/services/web", change, headers=REPRESENTATION)
        self.assertEqual(response.code, 200)
        back = {"data": {"attributes": {"parameters": {"balance": "weight"}}}}
        response, body = self.v1.json(self, "PATCH", "/v1/services/web", back,
                                      headers={"If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:05 GMT"})
        assert_errors(self, response, body, 412, "If-Unmodified-Since")
        response, body = self.v1.json(self, "DELETE", "/v1/services/web", headers={"If-None-Match": "*"})
        assert_errors(self, response, body, 412, "If-None-Match")
        self.assertEqual(self.v1.control.server_definition("web")["balance"], "leastconn")
        self.assertIn("web", self.v1.control.server_names())

    def test_414UriOver8KiB(self) -> None:
        response, body = self.v1.json(self, "GET", "/v1/services?filter=/id=" + "x" * 8200)
        assert_errors(self, response, body, 414, "8192")

    def test_415NotJson(self) -> None:
        response, raw = self.v1.call(self, "POST", "/v1/servers", data=json.dumps(NEW_SERVER).encode(),
                                     headers={"Content-Type": "text/plain"})
        assert_errors(self, response, json.loads(raw), 415, "text/plain")
        response, raw = self.v1.call(self, "POST", "/v1/servers", data=b"[]",
                                     headers={"Content-Type": "application/json-patch+json"})
        assert_errors(self, response, json.loads(raw), 415)

    def test_422ListsEveryBadFieldWithItsPointer(self) -> None:
        bad = {"data": {"id": "bad", "type": "servers",
                        "attributes": {"parameters": {"address": "", "port": 70000, "weight": -1, "colour": "red"}}}}
        response, body = self.v1.json(self, "POST", "/v1/servers", bad)
        errors = assert_errors(self, response, body, 422)
        pointers = {e["source"]["pointer"] for e in errors}
        self.assertEqual(pointers, {"/data/attributes/parameters/address", "/data/attributes/parameters/port",
                                    "/data/attributes/parameters/weight", "/data/attributes/parameters/colour"})
        change = {"data": {"attributes": {"parameters": {"balance": "fastest", "max_connections": -3}}}}
        response, body = self.v1.json(self, "PATCH", "/v1/services/web", change)
        errors = assert_errors(self, response, body, 422, "servers.web.balance")
        self.assertEqual({e["source"]["pointer"] for e in errors},
                         {"/data/attributes/parameters/balance", "/data/attributes/parameters/max_connections"})

    def test_423WhileAnOperationIsInProgress(self) -> None:
        reactor = HeldPorts()
        v1 = V1(make_v1(self).balancer.config, reactor)
        # A new address: the PATCH ends once the old listener has closed (a change on the same
        # address keeps its socket and is done at once).
        moved = {"data": {"attributes": {"parameters": {"bind": "127.0.0.1:3009"}}}}
        first = v1.stub.request("PATCH", "http://api.localhost/v1/listeners/web", data=json.dumps(moved).encode(),
                                headers={"Content-Type": "application/json", **REPRESENTATION})
        v1.stub.flush()
        self.assertNoResult(first)
        response, body = v1.json(self, "PATCH", "/v1/services/web", {"data": {"attributes": {"parameters": {}}}})
        assert_errors(self, response, body, 423, "services/web is locked")
        reactor.release()
        v1.stub.flush()
        self.assertEqual(self.successResultOf(first).code, 200)
        response, body = v1.json(self, "GET", "/v1/listeners/web")
        self.assertEqual(body["data"]["attributes"]["parameters"]["bind"], "127.0.0.1:3009")

    def test_428UnderRequireConditional(self) -> None:
        v1 = make_v1(self, api="require_conditional = true")
        change = {"data": {"attributes": {"parameters": {"balance": "leastconn"}}}}
        response, body = v1.json(self, "PATCH", "/v1/services/web", change)
        assert_errors(self, response, body, 428, "If-Match")
        response, _ = v1.json(self, "GET", "/v1/services/web")
        response, body = v1.json(self, "PATCH", "/v1/services/web", change, headers={**REPRESENTATION, "If-Match": header(response, "ETag")})
        self.assertEqual(response.code, 200, body)
        self.assertEqual(body["data"]["attributes"]["parameters"]["balance"], "leastconn")
        response, _ = v1.json(self, "POST", "/v1/servers", NEW_SERVER, headers=REPRESENTATION)
        self.assertEqual(response.code, 201)

    def test_431OneHeaderOver8KiB(self) -> None:
        response, body = self.v1.json(self, "GET", "/v1/services", headers={"X-Big": "y" * 8500})
        assert_errors(self, response, body, 431, "8192")


class ServerErrorTests(SynchronousTestCase):
    """5xx."""

    def test_500LoggedWithoutTraceback(self) -> None:
        v1 = make_v1(self)
        self.patch(Services, "members", lambda self: 1 / 0)
        response, body = v1.json(self, "GET", "/v1/services")
        assert_errors(self, response, body, 500, "internal error")
        self.assertNotIn("ZeroDivision", json.dumps(body))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_503WhileShuttingDown(self) -> None:
        v1 = make_v1(self)
        v1.balancer.stopService()
        response, body = v1.json(self, "GET", "/v1/services")
        assert_errors(self, response, body, 503, "shutting down")
        self.assertEqual(header(response, "Retry-After"), "10")


class UnroutableTests(SynchronousTestCase):
    """A path that no route takes at all still gets a JSON answer."""

    def test_controlCharacterInPathIs404Json(self) -> None:
        v1 = make_v1(self)
        response, body = v1.json(self, "GET", "/v1/sessions/%0A")
        assert_errors(self, response, body, 404)
        response, body = v1.json(self, "GET", "/servers/%0A")
        self.assertEqual((response.code, body), (404, "not found"))
