"""
The /v1 API under test without a network: a balancer on a memory reactor
with its whole API behind C{StubTreq} (L{tests.support.root_api}), JSON
requests, and assertions on /v1 answers.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from balancer.config.load import parse_config
from tests.support import root_api
from tests.support.reactors import ListeningReactor

#: L{root_api.CONFIG} and a third server, "dyn", whose backends come from a
#: plaintext endpoint that never answers.
CONFIG = root_api.CONFIG.replace("{extra}", """
[servers.dyn]
bind = "127.0.0.1:3002"
[servers.dyn.discovery]
kind = "plaintext"
plaintext_endpoint = "http://127.0.0.1:1/backends"
{extra}""")

#: A server (a backend, in /v1 words) created through /v1.
NEW_SERVER = {"data": {"id": "mine", "type": "servers",
                       "attributes": {"parameters": {"address": "127.0.0.1", "port": 9100}}}}

#: C{[api]} lines for two accounts: "admin" (may change things) and "viewer" (may only read).
ACCOUNTS = """
[[api.users]]
login = "admin"
password = "admin-secret"
[[api.users]]
login = "viewer"
password = "viewer-secret"
account = "basic"
"""

ERRORS_KEYS = {"errors"}

#: The header that asks a PATCH or a creating POST for the document (RFC 7240) instead of 204.
REPRESENTATION = {"Prefer": "return=representation"}


class V1(root_api.Api):
    """An L{root_api.Api} with helpers for /v1."""

    def json(self, test: SynchronousTestCase, method: str, path: str, body: Any = None, *,
             content_type: str = "application/json", headers: dict[str, str] | None = None,
             **kwargs: Any) -> tuple[Any, Any]:
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
    return V1(config, ListeningReactor(taken))


def header(response: Any, name: str) -> str | None:
    """The one value of header C{name}, or None."""
    values = response.headers.getRawHeaders(name.encode())
    if not values:
        return None
    assert len(values) == 1, values
    return str(values[0].decode("latin-1"))


def assert_errors(test: SynchronousTestCase, response: Any, body: Any, code: int,
                  *needles: str) -> list[dict[str, Any]]:
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
    errors: list[dict[str, Any]] = body["errors"]
    return errors
