"""The catalogue of backends created through /v1: their parameters, links and the static lists that follow."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from balancer.config.addresses import BackendSpec
from balancer.config.errors import ConfigError
from balancer.config.load import parse_config
from balancer.config.schema import ServerConfig
from balancer.control.catalogue import BackendCatalogue, backend_parameters, relinked, spec_of
from balancer.control.errors import LinkError

CONFIG = b"""
[servers.web]
bind = "127.0.0.1:0"
[servers.web.discovery]
kind = "static"
static_list = ["10.0.0.1:80", "10.0.0.9:80"]

[servers.dyn]
bind = "127.0.0.1:0"
[servers.dyn.discovery]
kind = "plaintext"
plaintext_endpoint = "http://127.0.0.1:1/backends"
"""


def record(address: str, port: int, *services: str) -> dict[str, Any]:
    """A created backend's record with default weights."""
    return {"address": address, "port": port, "weight": 1, "priority": 1, "max_connections": 0, "services": list(services)}


class LinkTests(SynchronousTestCase):
    """Which backends are linked where, and what a service's static list becomes."""

    def setUp(self) -> None:
        config = parse_config(CONFIG, "x")
        self.web: ServerConfig = config.servers["web"]
        self.dyn: ServerConfig = config.servers["dyn"]
        self.catalogue = BackendCatalogue({"a": record("10.0.0.9", 80, "web", "gone"), "b": record("10.0.0.2", 81)})

    def test_linksAndClaims(self) -> None:
        self.assertEqual(self.catalogue.linked_names("web"), {"a"})
        self.assertEqual(self.catalogue.linked_services("a", {"web", "db"}), ["web"])
        self.assertEqual(self.catalogue.claims("web"), {"10.0.0.9:80": "a"})
        self.assertEqual(self.catalogue.claims("db"), {})

    def test_staticListReplacesTheLinkedBackends(self) -> None:
        b = spec_of(self.catalogue.records["b"])
        self.assertEqual(self.catalogue.static_list("web", self.web, [b]), (BackendSpec("10.0.0.1", 80), b))

    def test_anAddressTakenIsALinkError(self) -> None:
        error = self.assertRaises(LinkError, self.catalogue.static_list, "web", self.web, [BackendSpec("10.0.0.1", 80)])
        self.assertEqual(str(error), 'server "web" already has a backend at 10.0.0.1:80')

    def test_noBackendLeftIsALinkError(self) -> None:
        only_linked = BackendCatalogue({"a": record("10.0.0.1", 80, "web"), "c": record("10.0.0.9", 80, "web")})
        error = self.assertRaises(LinkError, only_linked.static_list, "web", self.web, [])
        self.assertIn("would be left without backends", str(error))

    def test_otherDiscoveryTakesNoLinks(self) -> None:
        self.assertIsNone(self.catalogue.static_list("dyn", self.dyn, []))
        error = self.assertRaises(LinkError, self.catalogue.static_list, "dyn", self.dyn, [BackendSpec("10.0.0.3", 80)])
        self.assertIn('discovery kind "plaintext"', str(error))

    def test_relinkedChangesOnlyTheNamedServices(self) -> None:
        records = relinked(self.catalogue.records, {"web": {"b"}, "db": {"a", "b"}})
        self.assertEqual((records["a"]["services"], records["b"]["services"]), (["db", "gone"], ["db", "web"]))
        self.assertEqual(self.catalogue.records["a"]["services"], ["web", "gone"])


class ParameterTests(SynchronousTestCase):
    """backend_parameters: defaults, and every problem named under C{backends.<name>}."""

    def test_defaults(self) -> None:
        self.assertEqual(backend_parameters("mine", {"address": "h", "port": 1}),
                         {"address": "h", "port": 1, "weight": 1, "priority": 1, "max_connections": 0})

    def test_everyProblemAtOnce(self) -> None:
        error = self.assertRaises(ConfigError, backend_parameters, "mine", {"port": 0, "colour": "red", "sni": "a b"})
        self.assertEqual([p.path for p in error.problems],
                         ["backends.mine.colour", "backends.mine.port", "backends.mine.address", "backends.mine.sni"])
