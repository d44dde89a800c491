"""
Crafted input to the admin API (issue 14): JSON bodies nested deep or with
huge numbers, JSON Patches that grow the document, page parameters with
thousands of digits, values the schema bounds (ports, counts,
C{max_connections}) and strings with NUL bytes.  Each is answered 400, 409,
413 or 422 in the API's own error form, fast, and changes nothing; and a
property-based test throws random request lines, headers, bodies and query
strings at the whole HTTP site: no 500, nothing logged as a failure, and
C{/ping} still answers.
"""

from __future__ import annotations

import json
import re
import time
from io import BytesIO
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from admin.jsonbody import MAX_BODY, BodyError, read_json
from admin.listener import api_site
from admin.v1.patch import MAX_OPERATIONS
from tests.support.raw_http import exchange
from tests.support.v1_api import NEW_SERVER, REPRESENTATION, assert_errors, make_v1

DEEP_ARRAY = "[" * 1000 + "]" * 1000
DEEP_OBJECT = '{"a":' * 1000 + "1" + "}" * 1000

SERVER = {"bind": "127.0.0.1:4000", "discovery": {"kind": "static", "static_list": ["127.0.0.1:9100"]}}


class BodyTests(SynchronousTestCase):
    """L{admin.jsonbody} on its own."""

    def test_overTheLimitIs413WithoutReadingTheRest(self) -> None:
        content = BytesIO(b"[" + b" " * MAX_BODY + b"]" + b"x" * 1000)
        with self.assertRaises(BodyError) as caught:
            read_json(content)
        self.assertEqual(caught.exception.code, 413)
        self.assertEqual(content.tell(), MAX_BODY + 1)

    def test_eachBoundIs400(self) -> None:
        for body, needle in ((DEEP_ARRAY, "nested more than 64"), (DEEP_OBJECT, "nested more than 64"),
                             ("9" * 5000, "more than 32 digits"), ("[NaN]", "NaN"), ('"\\udc00"', "surrogate"),
                             ("\xff", "not UTF-8")):
            with self.assertRaises(BodyError) as caught:
                read_json(BytesIO(body.encode("latin-1" if body == "\xff" else "utf-8")))
            self.assertEqual(caught.exception.code, 400)
            self.assertIn(needle, str(caught.exception))
        self.assertEqual(read_json(BytesIO(b'{"a": [1, 2.5, "x"]}')), {"a": [1, 2.5, "x"]})


class RootApiTests(SynchronousTestCase):
    """gobetween's API: errors are a JSON string."""

    def setUp(self) -> None:
        self.api = make_v1(self)

    def post(self, body: bytes, name: str = "new") -> tuple[int, Any]:
        response, raw = self.api.call(self, "POST", f"/servers/{name}", data=body,
                                      headers={"Content-Type": "application/json"})
        return response.code, json.loads(raw)

    def assertRefused(self, body: bytes, code: int, *needles: str) -> None:
        answer = self.post(body)
        self.assertEqual(answer[0], code, answer)
        self.assertIsInstance(answer[1], str)
        for needle in needles:
            self.assertIn(needle, answer[1])
        self.assertNotIn("new", self.api.control.server_names())

    def test_deepJsonIs400(self) -> None:
        self.assertRefused(DEEP_ARRAY.encode(), 400, "the body is not JSON: nested more than 64 levels deep")
        self.assertRefused(DEEP_OBJECT.encode(), 400, "nested more than 64 levels deep")

    def test_hugeNumberIs400(self) -> None:
        self.assertRefused(b'{"max_connections": ' + b"9" * 5000 + b"}", 400, "more than 32 digits")

    def test_boundedNumbersAre409(self) -> None:
        for key, value, needle in (("max_connections", 10**30, "servers.new.max_connections: expected an integer from 0 to 1000000"),
                                   ("bind", "127.0.0.1:99999", "expected a port from 0 to 65535"),
                                   ("client_idle_timeout", "99999999999h", "at most 8760h")):
            self.assertRefused(json.dumps({**SERVER, key: value}).encode(), 409, needle)

    def test_nulInACommandIs409(self) -> None:
        """A NUL byte in C{exec_command} was accepted, and every fetch then failed."""
        discovery = {"kind": "exec", "exec_command": ["/bin/echo", "127.0.0.1:1\x00"]}
        self.assertRefused(json.dumps({**SERVER, "discovery": discovery}).encode(), 409,
                           "servers.new.discovery.exec_command[1]: must not contain a NUL character")
        check = {"kind": "exec", "interval": "1s", "exec_command": "/bin/true\x00"}
        self.assertRefused(json.dumps({**SERVER, "healthcheck": check}).encode(), 409,
                           "servers.new.healthcheck.exec_command: must not contain a NUL character")

    def test_validBodyStillCreates(self) -> None:
        self.assertEqual(self.post(json.dumps(SERVER).encode())[0], 200)


class V1ApiTests(SynchronousTestCase):
    """/v1: errors are JSON:API error documents."""

    def setUp(self) -> None:
        self.v1 = make_v1(self)

    def raw(self, method: str, path: str, body: bytes, content_type: str = "application/json") -> tuple[Any, Any]:
        response, raw = self.v1.call(self, method, path, data=body, headers={"Content-Type": content_type, **REPRESENTATION})
        return response, json.loads(raw) if raw else None

    def test_deepJsonIs400(self) -> None:
        for body in (DEEP_ARRAY, DEEP_OBJECT):
            response, answer = self.raw("POST", "/v1/servers", body.encode())
            assert_errors(self, response, answer, 400, "the body is not JSON: nested more than 64 levels deep")
            response, answer = self.raw("PATCH", "/v1/services/web", body.encode())
            assert_errors(self, response, answer, 400, "nested more than 64 levels deep")

    def test_pageParameters(self) -> None:
        """C{page[number]} of 5,000 digits was a 500 (C{int()} past the digit limit)."""
        for query, needle in (("page[size]=1&page[number]=" + "9" * 5000, "page[number] must be a whole number from 0"),
                              ("page[size]=" + "9" * 5000, "page[size] must be a whole number from 1"),
                              ("page[size]=%D9%A3", "page[size] must be a whole number"),
                              ("page[size]=0", "page[size] must be a whole number from 1"),
                              ("page[size]=-1", "page[size]"), ("page[size]=1e3", "page[size]"),
                              ("page[number]=1", "page[number] needs page[size]")):
            response, answer = self.v1.json(self, "GET", "/v1/servers?" + query)
            [error] = assert_errors(self, response, answer, 400, needle)
            self.assertLess(len(error["detail"]), 200)

    def test_pageBeyondTheLastIsEmpty(self) -> None:
        response, answer = self.v1.json(self, "GET", "/v1/services?page[size]=2&page[number]=999999999")
        self.assertEqual(response.code, 200)
        self.assertEqual(answer["data"], [])
        self.assertEqual(answer["links"]["last"], "/v1/services?page%5Bsize%5D=2&page%5Bnumber%5D=1")
        self.assertEqual(answer["links"]["prev"], "/v1/services?page%5Bsize%5D=2&page%5Bnumber%5D=1")
        self.assertNotIn("next", answer["links"])

    def test_deepFilterValueIsText(self) -> None:
        response, answer = self.v1.json(self, "GET", "/v1/services?filter=/id=" + "[" * 2000)
        self.assertEqual(response.code, 200, answer)
        self.assertEqual(answer["data"], [])

    def test_boundedNumbersAre422(self) -> None:
        server = json.loads(json.dumps(NEW_SERVER))
        server["data"]["attributes"]["parameters"].update(max_connections=10**30, port=70000)
        response, answer = self.v1.json(self, "POST", "/v1/servers", server)
        errors = assert_errors(self, response, answer, 422)
        details = sorted(e["detail"] for e in errors)
        self.assertEqual(len(details), 2, details)
        self.assertIn("backends.mine.max_connections: expected an integer from 0 to 1000000", details[0])
        self.assertIn("backends.mine.port: required: expected an integer from 1 to 65535, got integer 70000", details[1])

    def test_selfCopyingPatchIsRefusedQuickly(self) -> None:
        """
        19 C{copy} operations, each copying the document into itself: this
        held the reactor 28 to 62 s and grew the process to 2 to 4 GB.
        """
        patch = [{"op": "copy", "from": "/data", "path": f"/data/attributes/parameters/c{i}"} for i in range(19)]
        before = self.v1.json(self, "GET", "/v1/services/web")[1]
        started = time.perf_counter()
        response, answer = self.raw("PATCH", "/v1/services/web", json.dumps(patch).encode(), "application/json-patch+json")
        elapsed = time.perf_counter() - started
        print(f"\n19 self-copies of a /v1 service refused in {elapsed * 1000:.1f} ms")
        [error] = assert_errors(self, response, answer, 422, "the patch would make a document")
        self.assertEqual(self.v1.json(self, "GET", "/v1/services/web")[1]["data"]["attributes"]["parameters"],
                         before["data"]["attributes"]["parameters"])

    def test_patchOfAMegabyteOfCopiesIsBounded(self) -> None:
        """The worst patch within the bounds: 100 operations copying as much as the size bound allows."""
        big = {"op": "add", "path": "/data/attributes/parameters/x", "value": ["y" * 100] * 2500}
        copies = [{"op": "copy", "from": "/data/attributes/parameters/x", "path": f"/data/attributes/parameters/x{i}"}
                  for i in range(MAX_OPERATIONS - 1)]
        started = time.perf_counter()
        response, answer = self.raw("PATCH", "/v1/services/web", json.dumps([big, *copies]).encode(),
                                    "application/json-patch+json")
        elapsed = time.perf_counter() - started
        print(f"\nthe largest bounded JSON Patch answered {response.code} in {elapsed * 1000:.1f} ms")
        assert_errors(self, response, answer, 422, "over 1048576 bytes")

    def test_tooManyOperationsIs413(self) -> None:
        patch = [{"op": "test", "path": "/data/id", "value": "web"}] * (MAX_OPERATIONS + 1)
        response, answer = self.raw("PATCH", "/v1/services/web", json.dumps(patch).encode(), "application/json-patch+json")
        assert_errors(self, response, answer, 413, f"at most {MAX_OPERATIONS} operations")

    def test_deepeningPatchIs422(self) -> None:
        """Moving or adding values deeper each time cannot build a document past 64 levels."""
        value: Any = 1
        for _ in range(60):
            value = [value]
        patch = [{"op": "add", "path": "/data/attributes/parameters/deep", "value": value},
                 {"op": "add", "path": "/data/attributes/parameters/deeper", "value": value}]
        patch += [{"op": "move", "from": "/data/attributes/parameters/deeper",
                   "path": "/data/attributes/parameters/deep" + "/0" * 59 + "/0"}]
        response, answer = self.raw("PATCH", "/v1/services/web", json.dumps(patch).encode(), "application/json-patch+json")
        assert_errors(self, response, answer, 422, "nested more than 64 levels deep")

    def test_ordinaryPatchStillApplies(self) -> None:
        patch = [{"op": "replace", "path": "/data/attributes/parameters/balance", "value": "leastconn"},
                 {"op": "copy", "from": "/data/attributes/parameters/balance", "path": "/data/attributes/parameters/balance"}]
        response, answer = self.raw("PATCH", "/v1/services/web", json.dumps(patch).encode(), "application/json-patch+json")
        self.assertEqual(response.code, 200, answer)
        self.assertEqual(answer["data"]["attributes"]["parameters"]["balance"], "leastconn")


# Property-based: random requests at the whole HTTP site.

_PATHS = ["/", "/ping", "/servers", "/servers/web", "/servers/web/stats", "/servers/new", "/dump", "/v1", "/v1/",
          "/v1/services", "/v1/services/web", "/v1/services/web/relationships/servers", "/v1/servers",
          "/v1/servers/127.0.0.1:9001", "/v1/servers/127.0.0.1:9001/set", "/v1/servers/mine/clear",
          "/v1/listeners/web", "/v1/monitors/web", "/v1/filters/web", "/v1/sessions", "/v1/users/inet",
          "/v1/users/admin", "/v1/balancer", "/v1/openapi.json", "/v1/nothing/here"]
_KEYS = ["pretty", "format", "page[size]", "page[number]", "fields[services]", "fields[servers]", "filter", "state"]
_TOKENS = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=30)
_NUMBERS = st.one_of(st.integers(-(10**6), 10**12).map(str), st.sampled_from(["9" * 5000, "", "0x10", "1e9", "٣", "-0"]))
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**40), 10**40), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=15,
)
_DOCUMENTS = st.one_of(
    _JSON,
    st.just(NEW_SERVER), st.just(SERVER),
    st.builds(lambda key, value: {**SERVER, key: value},
              st.sampled_from(["bind", "max_connections", "protocol", "discovery", "healthcheck", "udp", "access"]), _JSON),
    st.builds(lambda params: {"data": {"id": "mine", "type": "servers", "attributes": {"parameters": params}}},
              st.dictionaries(st.sampled_from(["address", "port", "weight", "priority", "max_connections", "sni"]), _JSON)),
    st.lists(st.fixed_dictionaries({"op": st.sampled_from(["add", "remove", "replace", "move", "copy", "test", "x"]),
                                    "path": st.sampled_from(["", "/", "/data", "/data/attributes/parameters/balance",
                                                             "/data/id", "/data/relationships/servers/data/0", "/x/-"]),
                                    "from": st.sampled_from(["/data", "/data/attributes", "/nothing"]),
                                    "value": _JSON}), max_size=25),
)
_BODIES = st.one_of(
    st.none(),
    _DOCUMENTS.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=200),
    st.integers(1, 3000).map(lambda n: ("[" * n + "]" * n).encode()),
    st.integers(60, 3000).map(lambda n: ('{"a":' * n + "1" + "}" * n).encode()),
)
_HEADERS = st.lists(st.one_of(
    st.tuples(st.just("Content-Type"), st.sampled_from(["application/json", "application/json-patch+json",
                                                        "application/json-patch", "text/plain", "", "application/json; charset=x"])),
    st.tuples(st.sampled_from(["Accept", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since",
                               "X-HTTP-Method-Override", "Origin", "Authorization", "Expect", "Transfer-Encoding",
                               "Content-Length", "Host"]), _TOKENS),
    st.tuples(st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"), min_size=1, max_size=20),
              _TOKENS),
), max_size=6)


@st.composite
def requests(draw: Any) -> bytes:
    """One raw HTTP/1.1 request: mostly well-formed with hostile parts, sometimes garbage."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    method = draw(st.one_of(st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
                            st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=10)))
    path = draw(st.one_of(st.sampled_from(_PATHS), st.sampled_from(_PATHS).map(lambda p: p + "/" + "x" * 3),
                          st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=40).map(lambda t: "/" + t)))
    query = draw(st.lists(st.tuples(st.one_of(st.sampled_from(_KEYS), _TOKENS),
                                    st.one_of(_NUMBERS, _TOKENS, st.sampled_from(["/attributes/state=Running", "maintenance",
                                                                                  "drain", "json", "toml", "false"]))),
                          max_size=4))
    target = path + ("?" + "&".join(f"{k}={v}" for k, v in query) if query else "")
    head = [f"{method} {target} HTTP/1.1", "Host: api.localhost"]
    head += [f"{name}: {value}" for name, value in draw(_HEADERS)]
    body = draw(_BODIES)
    if body is not None:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace") + (body or b"")


_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


class RandomRequestTests(SynchronousTestCase):
    """Random request lines, headers, bodies and query strings against the whole site, in process."""

    def setUp(self) -> None:
        self.failures: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if "log_failure" in event or "Traceback" in str(event.get("log_format", "")):
                self.failures.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    @settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(requests(), min_size=1, max_size=3))
    def test_noServerErrorNoTracebackPingAnswers(self, sent: list[bytes]) -> None:
        v1 = make_v1(self)
        site = api_site(v1.control, v1.control.effective_config().api, v1.reactor)
        for data in sent:
            answer = exchange(site, data)
            for code in _STATUS.findall(answer):
                # 501 (a transfer coding other than chunked) and 505 (an HTTP version
                # other than 1.x) are the protocol's answers, not server errors.
                self.assertTrue(int(code) < 500 or int(code) in (501, 505), answer[:2000])
            self.assertNotIn(b"Traceback", answer)
            self.assertEqual(self.failures, [], data[:2000])
        answer = exchange(site, b"GET /ping HTTP/1.1\r\nHost: api.localhost\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK"), answer)
        self.assertTrue(answer.endswith(b'\r\n"OK"\r\n0\r\n\r\n'), answer)
