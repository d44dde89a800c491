"""
The OpenAPI document at C{/v1/openapi.json}: it validates as OpenAPI 3.1
(openapi-spec-validator), and schemathesis, run as a child process against
the live API on 127.0.0.1 port 0 served by this process, finds no server
error and no answer that contradicts it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from openapi_spec_validator import validate
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase
from admin.site import ApiSite
from admin.stack import api_resource
from admin.v1.openapi import document
from balancer.config.load import parse_config
from balancer.control.controller import Controller
from balancer.root_service import BalancerService
from tests.support.v1_api import make_v1

CONFIG = """
[api]
enabled = true
bind = "127.0.0.1:0"

[servers.web]
bind = "127.0.0.1:0"
balance = "roundrobin"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:9 weight=2", "127.0.0.1:10"]

[servers.db]
bind = "127.0.0.1:0"
[servers.db.discovery]
kind = "static"
static_list = ["127.0.0.1:11"]
"""

#: What schemathesis checks: no 500, and every answer as the document says.
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance"


class DocumentTests(SynchronousTestCase):
    """The document itself."""

    def test_validatesAsOpenApi31(self) -> None:
        spec = document()
        validate(spec)
        self.assertEqual(spec["openapi"], "3.1.0")

    def test_describesBothApisAndEveryV1Resource(self) -> None:
        paths = set(document()["paths"])
        for path in ("/", "/ping", "/dump", "/servers", "/servers/{name}", "/servers/{name}/stats", "/v1/",
                     "/v1/balancer", "/v1/users/inet", "/v1/users/inet/{id}", "/v1/servers/{id}/set",
                     "/v1/servers/{id}/clear", "/v1/services/{id}/relationships/{name}"):
            self.assertIn(path, paths)
        for type_ in ("services", "servers", "listeners", "monitors", "filters", "sessions"):
            self.assertIn(f"/v1/{type_}", paths)
            self.assertIn(f"/v1/{type_}/{{id}}", paths)
            self.assertIn(f"/v1/{type_}/", paths)
        self.assertIn("/v1/maxscale", paths)

    def test_changesAnswer204OrTheDocumentWhenPreferred(self) -> None:
        paths = document()["paths"]
        for operation, plain, representation in ((paths["/v1/servers"]["post"], "204", "201"),
                                                 (paths["/v1/servers/{id}"]["patch"], "204", "200")):
            self.assertIn(plain, operation["responses"])
            self.assertIn("Preference-Applied", operation["responses"][representation]["headers"])
            self.assertIn({"$ref": "#/components/parameters/Prefer"}, operation["parameters"])

    def test_servedAtV1OpenapiJson(self) -> None:
        v1 = make_v1(self)
        response, body = v1.call(self, "GET", "/v1/openapi.json")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body), document())
        self.assertEqual(response.headers.getRawHeaders(b"Allow"), [b"GET, HEAD"])


class SchemathesisTests(TestCase):
    """schemathesis against the live API."""

    timeout = 300

    def setUp(self) -> None:
        config = parse_config(CONFIG.encode(), "schemathesis.toml")
        self.balancer = BalancerService(config, reactor)
        self.balancer.privilegedStartService()
        self.balancer.startService()
        self.addCleanup(self.balancer.stopService)
        control = Controller(self.balancer, config, "schemathesis.toml", reactor)
        site = ApiSite(api_resource(control, config.api), header_timeout=config.api.header_timeout,
                       max_connections=config.api.max_connections, reactor=reactor)
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    @inlineCallbacks
    def test_findsNoServerErrorAndNoAnswerAgainstTheDocument(self) -> Any:
        url = f"http://127.0.0.1:{self.port.getHost().port}/v1/openapi.json"
        report = os.path.abspath(self.mktemp())
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            ["-m", "schemathesis.cli", "run", url, "--checks", CHECKS, "--max-examples", "10",
             "--workers", "1", "--seed", "1", "--request-timeout", "10", "--report-dir", report,
             "--phases", "examples,fuzzing"],
            env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""}, reactor=reactor,
        )
        self.assertEqual(code, 0, (out + err).decode("utf-8", "replace")[-20000:])
