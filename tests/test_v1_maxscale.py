"""
MaxScale's conventions on /v1, through C{StubTreq}: collections with a
trailing slash, C{/v1/maxscale}, and 204 answers to a PATCH or a creating
POST unless C{Prefer: return=representation} (RFC 7240).
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from admin.v1.prefer import wants_representation
from tests.support.v1_api import ACCOUNTS, NEW_SERVER, REPRESENTATION, assert_errors, header, make_v1

CHANGE = {"data": {"attributes": {"parameters": {"balance": "leastconn"}}}}


class TrailingSlashTests(SynchronousTestCase):
    """C{GET /v1/<type>/} answers as C{/v1/<type>}."""

    def test_everyCollectionAnswersWithATrailingSlash(self) -> None:
        v1 = make_v1(self)
        for path in ("/v1/services", "/v1/servers", "/v1/listeners", "/v1/monitors", "/v1/filters", "/v1/sessions",
                     "/v1/users", "/v1/users/inet"):
            plain, plain_body = v1.json(self, "GET", path)
            slashed, slashed_body = v1.json(self, "GET", path + "/")
            self.assertEqual((slashed.code, slashed_body), (200, plain_body), path)
            self.assertEqual(header(slashed, "ETag"), header(plain, "ETag"), path)

    def test_postToACollectionWithATrailingSlashCreates(self) -> None:
        v1 = make_v1(self)
        response, _ = v1.json(self, "POST", "/v1/servers/", NEW_SERVER)
        self.assertEqual((response.code, header(response, "Location")), (204, "/v1/servers/mine"))

    def test_anUnknownTypeWithATrailingSlashIs404(self) -> None:
        v1 = make_v1(self)
        response, body = v1.json(self, "GET", "/v1/nothing/")
        assert_errors(self, response, body, 404, '"nothing"')


class MaxScaleResourceTests(SynchronousTestCase):
    """C{/v1/maxscale}: the process in MaxScale's shape."""

    def test_versionUptimeStartedAtParameters(self) -> None:
        v1 = make_v1(self, api="max_connections = 77\n" + ACCOUNTS)
        response, body = v1.json(self, "GET", "/v1/maxscale", auth=("viewer", "viewer-secret"))
        self.assertEqual(response.code, 200, body)
        data = body["data"]
        self.assertEqual((data["id"], data["type"], body["links"]["self"]), ("maxscale", "maxscale", "/v1/maxscale"))
        attributes = data["attributes"]
        _, process = v1.json(self, "GET", "/v1/balancer", auth=("viewer", "viewer-secret"))
        self.assertEqual(attributes["version"], process["data"]["attributes"]["version"])
        self.assertIsInstance(attributes["uptime"], int)
        self.assertTrue(attributes["started_at"].endswith(" GMT"), attributes["started_at"])
        parsedate_to_datetime(attributes["started_at"])
        parameters = attributes["parameters"]
        self.assertEqual(parameters["api"]["max_connections"], 77)
        self.assertNotIn("servers", parameters)
        self.assertNotIn("viewer-secret", str(parameters))
        self.assertNotIn("admin-secret", str(parameters))

    def test_aliasWithATrailingSlashAndValidators(self) -> None:
        v1 = make_v1(self)
        response, body = v1.json(self, "GET", "/v1/maxscale/")
        self.assertEqual(body["data"]["id"], "maxscale")
        tag = header(response, "ETag")
        response, _ = v1.call(self, "GET", "/v1/maxscale", headers={"If-None-Match": tag})
        self.assertEqual(response.code, 304)
        self.assertEqual(header(response, "Allow"), "GET, HEAD")

    def test_writesAreRefused(self) -> None:
        v1 = make_v1(self)
        response, body = v1.json(self, "PATCH", "/v1/maxscale", CHANGE)
        assert_errors(self, response, body, 405, "PATCH is not allowed")

    def test_linkedFromTheRoot(self) -> None:
        _, body = make_v1(self).json(self, "GET", "/v1/")
        self.assertEqual(body["links"]["maxscale"], "/v1/maxscale")


class NoContentTests(SynchronousTestCase):
    """A successful PATCH or creating POST: 204, or the document under C{Prefer: return=representation}."""

    def setUp(self) -> None:
        self.v1 = make_v1(self)

    def test_patchIs204WithValidators(self) -> None:
        response, raw = self.v1.call(self, "PATCH", "/v1/services/web", data=b'{"data": {"attributes": '
                                     b'{"parameters": {"balance": "leastconn"}}}}',
                                     headers={"Content-Type": "application/json"})
        self.assertEqual((response.code, raw), (204, b""))
        self.assertIsNone(header(response, "Content-Type"))
        self.assertIsNone(header(response, "Preference-Applied"))
        read, body = self.v1.json(self, "GET", "/v1/services/web")
        self.assertEqual(body["data"]["attributes"]["parameters"]["balance"], "leastconn")
        self.assertEqual(header(response, "ETag"), header(read, "ETag"))
        self.assertEqual(header(response, "Last-Modified"), header(read, "Last-Modified"))

    def test_createIs204WithLocationAndValidators(self) -> None:
        response, body = self.v1.json(self, "POST", "/v1/servers", NEW_SERVER)
        self.assertEqual((response.code, body), (204, None))
        self.assertEqual(header(response, "Location"), "/v1/servers/mine")
        read, _ = self.v1.json(self, "GET", "/v1/servers/mine")
        self.assertEqual(header(response, "ETag"), header(read, "ETag"))
        self.assertEqual(header(response, "Last-Modified"), header(read, "Last-Modified"))

    def test_preferReturnRepresentationGetsTheDocument(self) -> None:
        response, body = self.v1.json(self, "PATCH", "/v1/services/web", CHANGE, headers=REPRESENTATION)
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, "Preference-Applied"), "return=representation")
        self.assertEqual(body["data"]["attributes"]["parameters"]["balance"], "leastconn")
        response, body = self.v1.json(self, "POST", "/v1/servers", NEW_SERVER, headers=REPRESENTATION)
        self.assertEqual((response.code, body["data"]["id"]), (201, "mine"))
        self.assertEqual(header(response, "Preference-Applied"), "return=representation")

    def test_preferReturnMinimalIs204(self) -> None:
        response, body = self.v1.json(self, "PATCH", "/v1/services/web", CHANGE, headers={"Prefer": "return=minimal"})
        self.assertEqual((response.code, body), (204, None))

    def test_aFailedChangeStillAnswersItsError(self) -> None:
        response, body = self.v1.json(self, "PATCH", "/v1/services/web", CHANGE, headers={"If-Match": '"stale"'})
        assert_errors(self, response, body, 412, "If-Match")


class PreferHeaderTests(SynchronousTestCase):
    """Reading C{Prefer} (RFC 7240)."""

    def wants(self, *values: bytes) -> bool:
        class Request:
            requestHeaders = Headers({b"Prefer": list(values)} if values else {})
        return wants_representation(Request())  # type: ignore[arg-type]

    def test_forms(self) -> None:
        self.assertTrue(self.wants(b"return=representation"))
        self.assertTrue(self.wants(b'Return="Representation"'))
        self.assertTrue(self.wants(b"respond-async, return=representation; foo=bar"))
        self.assertTrue(self.wants(b"wait=10", b"return=representation"))
        self.assertFalse(self.wants())
        self.assertFalse(self.wants(b"return=minimal"))
        self.assertFalse(self.wants(b"representation"))
        self.assertFalse(self.wants(b"handling=lenient; return=representation"))
