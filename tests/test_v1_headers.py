"""
/v1 request and response headers and query parameters, through C{StubTreq}:
every header of the seed, C{pretty}, C{fields}, C{filter} and C{page}.
"""

from __future__ import annotations

import json
from email.utils import parsedate_to_datetime

from twisted.trial.unittest import SynchronousTestCase

from tests.support.v1_api import ACCOUNTS, NEW_SERVER, REPRESENTATION, assert_errors, header, make_v1


class ResponseHeaderTests(SynchronousTestCase):
    """Allow, Accept-Patch, Date, ETag, Last-Modified, Location, WWW-Authenticate."""

    def setUp(self) -> None:
        self.v1 = make_v1(self)

    def test_allowOnEveryResponse(self) -> None:
        cases = [("GET", "/v1/services", "GET, HEAD, POST"), ("GET", "/v1/services/web", "GET, HEAD, PATCH, DELETE"),
                 ("GET", "/v1/listeners/web", "GET, HEAD, PATCH"), ("GET", "/v1/sessions", "GET, HEAD"),
                 ("DELETE", "/v1/sessions", "GET, HEAD"), ("GET", "/v1/servers/nope:1", "GET, HEAD, PATCH, DELETE"),
                 ("PUT", "/v1/servers/127.0.0.1:9001/set?state=bad", "PUT"),
                 ("GET", "/v1/services/web/relationships/servers", "GET, HEAD, PATCH"),
                 ("GET", "/v1/services/web/relationships/filters", "GET, HEAD")]
        for method, path, allow in cases:
            response, _ = self.v1.call(self, method, path)
            self.assertEqual(header(response, "Allow"), allow, path)

    def test_acceptPatchOnPatchCapableResourcesOnly(self) -> None:
        for path in ("/v1/services/web", "/v1/servers/127.0.0.1:9001", "/v1/monitors/web", "/v1/filters/web"):
            response, _ = self.v1.call(self, "GET", path)
            self.assertEqual(header(response, "Accept-Patch"), "application/json, application/json-patch+json")
        for path in ("/v1/services", "/v1/balancer", "/v1/sessions"):
            response, _ = self.v1.call(self, "GET", path)
            self.assertIsNone(header(response, "Accept-Patch"))

    def test_dateInRfc1123Form(self) -> None:
        response, _ = self.v1.call(self, "GET", "/v1/balancer")
        date = header(response, "Date")
        self.assertTrue(date.endswith(" GMT"), date)
        parsedate_to_datetime(date)

    def test_etagFollowsConfigurationNotStatistics(self) -> None:
        response, _ = self.v1.call(self, "GET", "/v1/servers/127.0.0.1:9001")
        tag = header(response, "ETag")
        self.assertRegex(tag, r'^"[0-9a-f]+"$')
        backend = self.v1.balancer.server("web").pool.get("127.0.0.1:9001")
        backend.counters.traffic.rx += 1000
        backend.counters.total_connections += 3
        response, body = self.v1.json(self, "GET", "/v1/servers/127.0.0.1:9001")
        self.assertEqual(body["data"]["attributes"]["statistics"]["rx"], 1000)
        self.assertEqual(header(response, "ETag"), tag)
        self.v1.call(self, "PUT", "/v1/servers/127.0.0.1:9001/set?state=maintenance")
        response, _ = self.v1.call(self, "GET", "/v1/servers/127.0.0.1:9001")
        self.assertNotEqual(header(response, "ETag"), tag)

    def test_lastModifiedIsWhenTheConfigurationChanged(self) -> None:
        response, _ = self.v1.call(self, "GET", "/v1/services/web")
        self.assertEqual(header(response, "Last-Modified"), "Thu, 01 Jan 1970 00:00:00 GMT")
        self.v1.reactor.advance(3600)
        self.v1.json(self, "PATCH", "/v1/filters/web", {"data": {"attributes": {"parameters": {"default": "deny"}}}})
        self.v1.reactor.advance(60)
        response, _ = self.v1.call(self, "GET", "/v1/services/web")
        self.assertEqual(header(response, "Last-Modified"), "Thu, 01 Jan 1970 01:00:00 GMT")
        response, _ = self.v1.call(self, "GET", "/v1/services/db")
        self.assertEqual(header(response, "Last-Modified"), "Thu, 01 Jan 1970 00:00:00 GMT")

    def test_locationOnCreate(self) -> None:
        service = {"data": {"id": "new", "type": "services", "attributes": {"parameters": {
            "bind": "127.0.0.1:4000", "discovery": {"kind": "static", "static_list": ["127.0.0.1:9200"]}}}}}
        response, body = self.v1.json(self, "POST", "/v1/services", service, headers=REPRESENTATION)
        self.assertEqual((response.code, header(response, "Location")), (201, "/v1/services/new"))
        self.assertEqual(body["data"]["attributes"]["parameters"]["bind"], "127.0.0.1:4000")

    def test_wwwAuthenticateOn401(self) -> None:
        v1 = make_v1(self, extra=ACCOUNTS)
        response, _ = v1.call(self, "GET", "/v1/balancer")
        self.assertEqual((response.code, header(response, "WWW-Authenticate")), (401, 'Basic realm="balancer"'))


class RequestHeaderTests(SynchronousTestCase):
    """Authorization, Content-Type, If-*, X-HTTP-Method-Override."""

    def setUp(self) -> None:
        self.v1 = make_v1(self)

    def test_authorizationPicksTheAccount(self) -> None:
        v1 = make_v1(self, extra=ACCOUNTS)
        response, _ = v1.json(self, "POST", "/v1/servers", NEW_SERVER, auth=("admin", "admin-secret"), headers=REPRESENTATION)
        self.assertEqual(response.code, 201)
        response, body = v1.json(self, "GET", "/v1/users/inet", auth=("viewer", "viewer-secret"))
        self.assertEqual([(u["id"], u["attributes"]["account"]) for u in body["data"]],
                         [("admin", "admin"), ("viewer", "basic")])
        self.assertNotIn("secret", json.dumps(body))

    def test_contentTypeJsonPatchAndItsAlias(self) -> None:
        for media, port in (("application/json-patch+json", 9300), ("application/json-patch", 9301)):
            self.v1.json(self, "POST", "/v1/servers", {**NEW_SERVER, "data": {**NEW_SERVER["data"], "id": f"p{port}"}})
            patch = [{"op": "test", "path": "/data/attributes/parameters/port", "value": 9100},
                     {"op": "replace", "path": "/data/attributes/parameters/port", "value": port}]
            response, body = self.v1.json(self, "PATCH", f"/v1/servers/p{port}", patch, content_type=media, headers=REPRESENTATION)
            self.assertEqual(response.code, 200, body)
            self.assertEqual(body["data"]["attributes"]["parameters"]["port"], port)
        response, body = self.v1.json(self, "PATCH", "/v1/servers/p9300",
                                      [{"op": "test", "path": "/data/attributes/parameters/port", "value": 1}],
                                      content_type="application/json-patch+json")
        assert_errors(self, response, body, 409, "test failed")
        response, body = self.v1.json(self, "PATCH", "/v1/servers/p9300",
                                      [{"op": "replace", "path": "/data/attributes/state", "value": "Running"}],
                                      content_type="application/json-patch+json")
        errors = assert_errors(self, response, body, 422, "read-only")
        self.assertEqual(errors[0]["source"]["pointer"], "/data/attributes/state")

    def test_ifMatchWithTheCurrentTagApplies(self) -> None:
        response, _ = self.v1.call(self, "GET", "/v1/monitors/web")
        change = {"data": {"attributes": {"parameters": {"kind": "ping", "interval": "2s"}}}}
        response, body = self.v1.json(self, "PATCH", "/v1/monitors/web", change, headers={**REPRESENTATION, "If-Match": header(response, "ETag")})
        self.assertEqual(response.code, 200, body)
        self.assertEqual(body["data"]["attributes"]["parameters"]["kind"], "ping")
        self.assertEqual(self.v1.control.service("web").config.healthcheck.kind, "ping")

    def test_ifNoneMatchStarOnAnExistingResource(self) -> None:
        response, _ = self.v1.call(self, "GET", "/v1/services/web", headers={"If-None-Match": "*"})
        self.assertEqual(response.code, 304)

    def test_ifModifiedSinceBeforeTheChange(self) -> None:
        self.v1.reactor.advance(100)
        self.v1.json(self, "PATCH", "/v1/services/web", {"data": {"attributes": {"parameters": {"balance": "iphash"}}}})
        response, _ = self.v1.call(self, "GET", "/v1/services/web",
                                   headers={"If-Modified-Since": "Thu, 01 Jan 1970 00:00:50 GMT"})
        self.assertEqual(response.code, 200)
        response, _ = self.v1.call(self, "GET", "/v1/services/web",
                                   headers={"If-Modified-Since": "Thu, 01 Jan 1970 00:02:00 GMT"})
        self.assertEqual(response.code, 304)

    def test_ifUnmodifiedSinceAfterTheChangeApplies(self) -> None:
        response, _ = self.v1.json(self, "PUT", "/v1/servers/127.0.0.1:9002/set?state=drain",
                                   headers={"If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:10 GMT"})
        self.assertEqual(response.code, 204)
        self.assertEqual(self.v1.balancer.server("web").pool.get("127.0.0.1:9002").admin_state, "drain")

    def test_methodOverride(self) -> None:
        self.v1.json(self, "POST", "/v1/servers", NEW_SERVER)
        change = {"data": {"attributes": {"parameters": {"weight": 7}}}}
        response, body = self.v1.json(self, "POST", "/v1/servers/mine", change, headers={**REPRESENTATION, "X-HTTP-Method-Override": "PATCH"})
        self.assertEqual((response.code, body["data"]["attributes"]["parameters"]["weight"]), (200, 7))
        response, body = self.v1.json(self, "PUT", "/v1/servers/mine", headers={"X-HTTP-Method-Override": "DELETE"})
        self.assertEqual(response.code, 204)
        response, body = self.v1.json(self, "POST", "/v1/balancer", {}, headers={"X-HTTP-Method-Override": "DELETE"})
        assert_errors(self, response, body, 405)
        response, body = self.v1.json(self, "POST", "/v1/services/web", {}, headers={"X-HTTP-Method-Override": "patch"})
        assert_errors(self, response, body, 400, "uppercase")
        response, body = self.v1.json(self, "GET", "/v1/services/web", headers={"X-HTTP-Method-Override": "DELETE"})
        assert_errors(self, response, body, 400, "only read on POST and PUT")
        self.assertIn("web", self.v1.control.server_names())


class QueryParameterTests(SynchronousTestCase):
    """pretty, fields[type], filter, page[size]/page[number]."""

    def setUp(self) -> None:
        self.v1 = make_v1(self)

    def test_prettyByDefaultCompactOnRequest(self) -> None:
        _, raw = self.v1.call(self, "GET", "/v1/balancer")
        self.assertIn(b'\n    "links": {\n        "self"', raw)
        _, raw = self.v1.call(self, "GET", "/v1/balancer?pretty=false")
        self.assertNotIn(b"\n", raw)
        self.assertEqual(json.loads(raw)["data"]["id"], "balancer")
        _, raw = self.v1.call(self, "GET", "/v1/nothing?pretty=false")
        self.assertNotIn(b"\n", raw)

    def test_sparseFieldsets(self) -> None:
        _, body = self.v1.json(self, "GET", "/v1/servers?fields[servers]=state,statistics/connections,services")
        first = body["data"][0]
        self.assertEqual(first["attributes"], {"state": "Running", "statistics": {"connections": 0}})
        self.assertEqual(list(first["relationships"]), ["services"])
        _, body = self.v1.json(self, "GET", "/v1/services/web?fields[services]=router")
        self.assertEqual(body["data"]["attributes"], {"router": "roundrobin"})

    def test_filterByJsonPointer(self) -> None:
        self.v1.call(self, "PUT", "/v1/servers/127.0.0.1:9002/set?state=maintenance")
        _, body = self.v1.json(self, "GET", "/v1/servers?filter=/attributes/state=Maintenance")
        self.assertEqual([s["id"] for s in body["data"]], ["127.0.0.1:9002"])
        _, body = self.v1.json(self, "GET", "/v1/servers?filter=/attributes/parameters/weight=2")
        self.assertEqual([s["id"] for s in body["data"]], ["127.0.0.1:9001"])
        response, body = self.v1.json(self, "GET", "/v1/servers?filter=state")
        assert_errors(self, response, body, 400, "JSON pointer")

    def test_pagesFromZeroWithLinks(self) -> None:
        _, body = self.v1.json(self, "GET", "/v1/servers?page[size]=2&page[number]=1")
        self.assertEqual([s["id"] for s in body["data"]], ["127.0.0.1:5432"])
        links = body["links"]
        self.assertIn("page%5Bnumber%5D=0", links["first"])
        self.assertIn("page%5Bnumber%5D=1", links["last"])
        self.assertIn("page%5Bnumber%5D=0", links["prev"])
        self.assertNotIn("next", links)
        _, body = self.v1.json(self, "GET", "/v1/servers?page[size]=2")
        self.assertEqual(len(body["data"]), 2)
        self.assertIn("page%5Bnumber%5D=1", body["links"]["next"])
        response, body = self.v1.json(self, "GET", "/v1/servers?page[number]=1")
        assert_errors(self, response, body, 400, "page[size]")
