"""
The names the API answers to (L{admin.hosts}), against DNS rebinding: a
page whose name points at this host reaches the API from this host, as its
own origin; the API answers only an IP address, localhost, the name it is
bound to and the names of C{[api] allowed_hosts}.
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.static import Data

from admin.hosts import HostCheck
from admin.listener import api_site
from balancer.config.errors import ConfigError
from balancer.config.load import parse_config
from tests.support.raw_http import exchange
from tests.support.root_api import NEW_SERVER, make_api
from tests.support.v1_api import make_v1

REBOUND = "http://rebind.attacker.example:8888"


def request(test: SynchronousTestCase, stub: Any, method: str, url: str, **kwargs: Any) -> tuple[int, bytes]:
    """Fire a request through C{stub}: (code, body)."""
    requested = stub.request(method, url, **kwargs)
    stub.flush()
    response = test.successResultOf(requested)
    return response.code, test.successResultOf(stub.content(response))


def checked(test: SynchronousTestCase, api_lines: str) -> StubTreq:
    """A C{StubTreq} on a page behind L{HostCheck} for C{[api]} with C{api_lines}."""
    config = parse_config(f"[api]\nenabled = true\n{api_lines}\n".encode(), "test.toml")
    page = Data(b'"page"', "application/json")
    page.isLeaf = True
    return StubTreq(HostCheck(page, config.api))


class RebindingTests(SynchronousTestCase):
    """A page's name pointed at this host, on a balancer with no account (the default) and allow_exec."""

    def test_everyRequestToAnotherNameIs421AndChangesNothing(self) -> None:
        api = make_api(self, api="allow_exec = true")
        attack = {**NEW_SERVER, "discovery": {"kind": "exec", "exec_command": ["/bin/sh", "-c", "id"]}}
        origin = {"Origin": [REBOUND]}
        for method, path, kwargs in (("GET", "/dump", {}), ("GET", "/servers", {}),
                                     ("POST", "/servers/pwned", {"json": attack, "headers": origin}),
                                     ("DELETE", "/servers/web", {"headers": origin})):
            code, body = request(self, api.stub, method, REBOUND + path, **kwargs)
            self.assertEqual(code, 421, body)
            self.assertIn('does not answer to the name "rebind.attacker.example:8888"', json.loads(body))
            self.assertIn("[api] allowed_hosts", json.loads(body))
        self.assertEqual(sorted(api.control.server_names()), ["db", "web"])

    def test_theV1ApiAnswersWithAnErrorDocument(self) -> None:
        v1 = make_v1(self)
        code, body = request(self, v1.stub, "GET", REBOUND + "/v1/services")
        self.assertEqual(code, 421)
        (error,) = json.loads(body)["errors"]
        self.assertIn("[api] allowed_hosts", error["detail"])

    def test_addressesAndLocalhostAreAnswered(self) -> None:
        api = make_api(self)
        for host in ("127.0.0.1:8888", "[::1]:8888", "[::ffff:127.0.0.1]", "192.0.2.10", "localhost:8888",
                     "LOCALHOST", "ui.localhost:8888"):
            code, body = request(self, api.stub, "GET", "http://127.0.0.1/servers", headers={"Host": [host]})
            self.assertEqual(code, 200, (host, body))


class AllowedHostsTests(SynchronousTestCase):
    """C{[api] allowed_hosts}, and the name of C{[api] bind}."""

    def test_listedNamesAreAnsweredInAnyCase(self) -> None:
        stub = checked(self, 'allowed_hosts = ["lb1.example.com", "api-2.internal."]')
        for url in ("http://lb1.example.com:8888/", "https://LB1.Example.COM/", "http://lb1.example.com./",
                    "http://api-2.internal:8888/"):
            self.assertEqual(request(self, stub, "GET", url), (200, b'"page"'), url)
        for url in ("http://example.com/", "http://lb1.example.com.evil.example/", "http://xlb1.example.com/"):
            self.assertEqual(request(self, stub, "GET", url)[0], 421, url)

    def test_theBoundNameIsAnswered(self) -> None:
        stub = checked(self, 'bind = "balancer.internal:8888"')
        self.assertEqual(request(self, stub, "GET", "http://balancer.internal:8888/")[0], 200)
        self.assertEqual(request(self, stub, "GET", "http://other.internal:8888/")[0], 421)

    def test_aStarAnswersAnyName(self) -> None:
        stub = checked(self, 'allowed_hosts = ["*"]')
        self.assertEqual(request(self, stub, "GET", REBOUND + "/")[0], 200)

    def test_aBadEntryIsAConfigurationErrorNamingIt(self) -> None:
        for entry in ("http://lb1.example.com", "lb1.example.com:8888", "-x", "a b", ""):
            with self.assertRaises(ConfigError) as caught:
                parse_config(f'[api]\nallowed_hosts = ["ok.example", {json.dumps(entry)}]\n'.encode(), "test.toml")
            self.assertIn("allowed_hosts[1]", str(caught.exception))


class RawHostHeaderTests(SynchronousTestCase):
    """Host headers a browser does not send."""

    def setUp(self) -> None:
        v1 = make_v1(self)
        self.site = api_site(v1.control, v1.control.effective_config().api, v1.reactor)

    def test_twoHostHeadersAre400(self) -> None:
        answer = exchange(self.site, b"GET /servers HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer)
        self.assertIn(b"one Host header, this one has 2", answer)

    def test_noHostIsAnswered(self) -> None:
        """HTTP/1.0 without Host: no browser sends it."""
        answer = exchange(self.site, b"GET /servers HTTP/1.0\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.0 200 "), answer)

    def test_aHostThatIsNoNameIs421(self) -> None:
        answer = exchange(self.site, b"GET /servers HTTP/1.1\r\nHost: a/b@c\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 421 "), answer)
