"""
A backend's host is an IP address or a host name, from every source (the
configuration's C{static_list}, discovery, the API): nothing else reaches
the commands that get it as an argument (an C{exec} health check runs
C{exec_command host port}), so no host reads as an option
(C{--output=/file}) or as shell text.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from balancer.config.addresses import AddressError, is_backend_host, parse_backend_line
from balancer.config.errors import ConfigError
from balancer.config.load import parse_config
from balancer.discovery.base import DiscoveryError, make_backend
from tests.support.v1_api import assert_errors, make_v1

#: Hosts a review passed to an exec health check as options and shell text.
HOSTILE = ("--output=/tmp/owned", "-oProxyCommand=id", "$(id)", "`id`", "a;id", "-", "a-", "a..b", "a/b", "é.example")

#: Hosts that stay valid.
FINE = ("127.0.0.1", "::1", "2001:db8::7", "db.example", "DB-1.example.", "db_1.internal", "xn--bcher-kva.example",
        "localhost", "a")


class HostTests(SynchronousTestCase):
    """What a backend's host may be."""

    def test_namesAndAddresses(self) -> None:
        self.assertEqual([h for h in FINE if not is_backend_host(h)], [])
        self.assertEqual([h for h in HOSTILE if is_backend_host(h)], [])
        self.assertFalse(is_backend_host("a" * 254))

    def test_aStaticLineWithAHostileHostIsRefusedNamingIt(self) -> None:
        for host in HOSTILE:
            error = self.assertRaises(AddressError, parse_backend_line, f"{host}:80")
            self.assertIn(f'or an IP address, got "{host}"', str(error))
        self.assertEqual(parse_backend_line("[2001:db8::7]:80 weight=2").host, "2001:db8::7")

    def test_theConfigurationNamesTheEntry(self) -> None:
        text = """
[servers.web]
bind = "127.0.0.1:3000"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:1", "--output=/tmp/owned:80"]
"""
        with self.assertRaises(ConfigError) as caught:
            parse_config(text.encode(), "test.toml")
        self.assertIn("servers.web.discovery.static_list[1]", str(caught.exception))
        self.assertIn('"--output=/tmp/owned"', str(caught.exception))

    def test_aDiscoveredHostileHostIsADiscoveryError(self) -> None:
        for host in HOSTILE:
            error = self.assertRaises(DiscoveryError, make_backend, host, 80)
            self.assertIn(repr(host), str(error))
        self.assertEqual(make_backend("[::1]", "80").host, "::1")


class ApiTests(SynchronousTestCase):
    """Through the API: refused, and nothing changes."""

    def test_aPatchWithAHostileStaticListChangesNothing(self) -> None:
        v1 = make_v1(self)
        before = v1.control.server_definition("web")
        document = {"data": {"attributes": {"parameters": {"discovery": {
            "static_list": ["127.0.0.1:9001", "--output=/tmp/owned:80", "$(id):1"]}}}}}
        response, body = v1.json(self, "PATCH", "/v1/services/web", document)
        assert_errors(self, response, body, 422, "--output=/tmp/owned", "$(id)")
        self.assertEqual(v1.control.server_definition("web"), before)

    def test_aCreatedBackendWithAHostileAddressIsRefused(self) -> None:
        v1 = make_v1(self)
        document = {"data": {"id": "evil", "type": "servers", "attributes": {"parameters": {
            "address": "-oProxyCommand=id", "port": 22}}}}
        response, body = v1.json(self, "POST", "/v1/servers", document)
        assert_errors(self, response, body, 422, 'got "-oProxyCommand=id"')
        response, _ = v1.json(self, "GET", "/v1/servers/evil")
        self.assertEqual(response.code, 404)
