"""
Shared by the /v1 tests (no tests here): a balancer on a memory reactor with
its whole API behind C{StubTreq}, and assertions on /v1 answers.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from balancer.config.load import parse_config
from tests.test_admin_root import Api, Reactor

CONFIG = """
[api]
enabled = true
bind = "127.0.0.1:0"
{api}

[servers.web]
bind = "127.0.0.1:3000"
balance = "roundrobin"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:9001 weight=2", "127.0.0.1:9002"]

[servers.db]
bind = "127.0.0.1:3001"
[servers.db.discovery]
kind = "static"
static_list = ["127.0.0.1:5432"]

[servers.dyn]
bind = "127.0.0.1:3002"
[servers.dyn.discovery]
kind = "plaintext"
plaintext_endpoint = "http://127.0.0.1:1/backends"
{extra}
"""

#: A server created through /v1.
NEW_SERVER = {"data": {"id": "mine", "type": "servers",
                       "attributes": {"parameters": {"address": "127.0.0.1", "port": 9100}}}}

ERRORS_KEYS = {"errors"}


class V1(Api):
    """An L{Api} with helpers for /v1."""

    def json(self, test: SynchronousTestCase, method: str, path: str, body: Any = None, *,
             content_type: str = "application/json", headers: dict[str, str] | None = None, **kwargs: Any) -> tuple[Any, Any]:
        """A request with a JSON body (if given); returns (response, decoded body or None)."""
        all_headers = dict(headers or {})
        if body is not None:
            all_headers.setdefault("Content-Type", content_type)
            kwargs["data"] = json.dumps(body).encode("utf-8")
        response, raw = self.call(test, method, path, headers=all_headers, **kwargs)
        return response, json.loads(raw) if raw else None


def make_v1(test: SynchronousTestCase, *, api: str = "", extra: str = "", taken: tuple[int, ...] = ()) -> V1:
    """A L{V1} on L{CONFIG} with C{api} lines in C{[api]} and C{extra} sections."""
    config = parse_config(CONFIG.format(api=api, extra=extra).encode(), "test.toml")
    return V1(config, Reactor(taken))


def header(response: Any, name: str) -> str | None:
    """The one value of header C{name}, or None."""
    values = response.headers.getRawHeaders(name.encode())
    if not values:
        return None
    assert len(values) == 1, values
    return values[0].decode("latin-1")


def assert_errors(test: SynchronousTestCase, response: Any, body: Any, code: int, *needles: str) -> list[dict[str, Any]]:
    """The answer is C{code} with a JSON:API error document whose details contain each of C{needles}."""
    test.assertEqual(response.code, code, body)
    test.assertEqual(header(response, "Content-Type"), "application/json")
    test.assertEqual(set(body), ERRORS_KEYS)
    test.assertTrue(body["errors"], body)
    for error in body["errors"]:
        test.assertIsInstance(error["detail"], str)
        test.assertNotIn("Traceback", error["detail"])
    details = " ".join(e["detail"] for e in body["errors"])
    for needle in needles:
        test.assertIn(needle, details)
    return body["errors"]
