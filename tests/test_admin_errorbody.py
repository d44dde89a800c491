"""
L{admin.errorbody}: every error body of the API, byte for byte, in the form of
the API the request belongs to.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from admin.errorbody import error_body, errors_body, render_error, render_errors, under_v1

PRETTY = b'{\n    "errors": [\n        {\n            "detail": "no"\n        }\n    ]\n}\n'


def request(path: bytes, args: dict[bytes, list[bytes]] | None = None) -> DummyRequest:
    """A request for C{path} (without its query) with the query C{args}."""
    made = DummyRequest(path.lstrip(b"/").split(b"/"))
    made.path = path
    made.args = args or {}
    return made


class ErrorBodyTests(SynchronousTestCase):
    """The body alone, from the request target."""

    def test_rootIsAJsonString(self) -> None:
        self.assertEqual(error_body('no server named "web"', b"/servers/web?x=1"), b'"no server named \\"web\\""')

    def test_unknownTargetIsTheRootForm(self) -> None:
        self.assertEqual(error_body("slow"), b'"slow"')

    def test_v1IsAnIndentedErrorsDocument(self) -> None:
        self.assertEqual(error_body("no", b"/v1/services"), PRETTY)
        self.assertEqual(error_body("no", b"/v1?pretty=yes"), PRETTY)

    def test_v1CompactWhenTheQuerySaysSo(self) -> None:
        self.assertEqual(error_body("no", b"/v1/services?a=%FF&pretty=false"), b'{"errors":[{"detail":"no"}]}')

    def test_whatIsUnderV1(self) -> None:
        for target in (b"/v1", b"/v1/", b"/v1/services/x", b"/v1?pretty=false"):
            self.assertTrue(under_v1(target), target)
        for target in (b"/", b"/v10", b"/v1x/services", b"/servers/v1", b""):
            self.assertFalse(under_v1(target), target)

    def test_severalErrorObjects(self) -> None:
        errors = [{"detail": "a", "source": {"pointer": "/data"}}, {"detail": "b"}]
        self.assertEqual(errors_body(errors, False),
                         b'{"errors":[{"detail":"a","source":{"pointer":"/data"}},{"detail":"b"}]}')


class RenderErrorTests(SynchronousTestCase):
    """On a request: the code, the content type and the body."""

    def test_rootRequest(self) -> None:
        answered = request(b"/servers")
        self.assertEqual(render_error(answered, 404, "gone"), b'"gone"')
        self.assertEqual(answered.responseCode, 404)
        self.assertEqual(answered.responseHeaders.getRawHeaders(b"Content-Type"), [b"application/json"])

    def test_v1RequestFollowsItsPrettyParameter(self) -> None:
        self.assertEqual(render_error(request(b"/v1/services"), 401, "no"), PRETTY)
        compact = request(b"/v1/services", {b"pretty": [b"false"]})
        self.assertEqual(render_error(compact, 401, "no"), b'{"errors":[{"detail":"no"}]}')
        self.assertEqual(compact.responseCode, 401)
        self.assertEqual(compact.responseHeaders.getRawHeaders(b"Content-Type"), [b"application/json"])

    def test_renderErrors(self) -> None:
        answered = request(b"/v1/services", {b"pretty": [b"false"]})
        body = render_errors(answered, 422, [{"detail": "a", "source": {"pointer": "/data"}}])
        self.assertEqual(body, b'{"errors":[{"detail":"a","source":{"pointer":"/data"}}]}')
        self.assertEqual(answered.responseCode, 422)
