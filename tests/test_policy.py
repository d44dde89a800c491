"""
L{balancer.policy}: a runtime change may not set an C{exec} discovery or
health check unless C{[api] allow_exec = true}; configuration files are not
affected.  The check alone, then through both APIs on a reactor that records
every process it is asked to start (none, when a change is refused).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from balancer.config.load import parse_config, server_from_mapping
from balancer.config.schema import Config, ServerConfig
from balancer.policy import ChangePolicy, ChangeRefused, check_server_change
from tests.support.reactors import SpawningReactor
from tests.support.v1_api import CONFIG, REPRESENTATION, V1, assert_errors

BASE = parse_config(CONFIG.format(api="", extra="").encode(), "test.toml")

EXEC_DISCOVERY = {"kind": "exec", "exec_command": ["/bin/echo", "127.0.0.1:9100"]}
EXEC_CHECK = {"kind": "exec", "interval": "1s", "exec_command": "/bin/true"}
STATIC = {"kind": "static", "static_list": ["127.0.0.1:9100"]}

#: A server the configuration file gives an exec discovery and an exec health check.
FROM_FILE = """
[servers.cmd]
bind = "127.0.0.1:3005"
[servers.cmd.discovery]
kind = "exec"
exec_command = ["/bin/echo", "127.0.0.1:9200"]
[servers.cmd.healthcheck]
kind = "exec"
interval = "5s"
exec_command = "/bin/true"
"""


def server(discovery: dict[str, Any] = STATIC, healthcheck: dict[str, Any] | None = None, **more: Any) -> ServerConfig:
    """A server configuration built from a definition, as the API builds it."""
    definition: dict[str, Any] = {"bind": "127.0.0.1:4000", "discovery": discovery, **more}
    if healthcheck is not None:
        definition["healthcheck"] = healthcheck
    config: ServerConfig = server_from_mapping("s", definition, "test", BASE)
    return config


class CheckTests(SynchronousTestCase):
    """L{check_server_change} itself."""

    def test_newExecDiscoveryOrCheckRefused(self) -> None:
        for config, section in ((server(EXEC_DISCOVERY), "discovery"), (server(healthcheck=EXEC_CHECK), "healthcheck")):
            with self.assertRaises(ChangeRefused) as caught:
                check_server_change("s", config, None, ChangePolicy())
            self.assertIn(f'server "s": {section} kind "exec"', str(caught.exception))
            self.assertIn("[api] allow_exec = true", str(caught.exception))

    def test_changingToExecOrToAnotherCommandRefused(self) -> None:
        old = server(EXEC_DISCOVERY, EXEC_CHECK)
        for new in (server(EXEC_DISCOVERY, {**EXEC_CHECK, "exec_command": "/bin/false"}),
                    server({**EXEC_DISCOVERY, "exec_command": ["/bin/sh", "-c", "id"]}, EXEC_CHECK)):
            self.assertRaises(ChangeRefused, check_server_change, "s", new, old, ChangePolicy())
        self.assertRaises(ChangeRefused, check_server_change, "s", server(EXEC_DISCOVERY), server(), ChangePolicy())

    def test_keepingTheSameCommandsAllowed(self) -> None:
        """A change of something else of a server that already runs these commands."""
        old = server(EXEC_DISCOVERY, EXEC_CHECK)
        new = server(EXEC_DISCOVERY, {**EXEC_CHECK, "interval": "2s"}, balance="leastconn")
        check_server_change("s", new, old, ChangePolicy())
        check_server_change("s", server(), old, ChangePolicy())

    def test_anLxdDiscoveryWritingToANewDirectoryRefused(self) -> None:
        """Certificates written where the change says (as the balancer's user) need allow_exec, as commands do."""
        lxd = {"kind": "lxd", "lxd_server_address": "https://127.0.0.1:8443", "lxd_container_port": 80,
               "lxd_config_directory": "/etc/cron.d", "lxd_generate_client_certs": True}
        for new in (server(lxd), server({**lxd, "lxd_generate_client_certs": False, "lxd_accept_server_cert": True})):
            with self.assertRaises(ChangeRefused) as caught:
                check_server_change("s", new, None, ChangePolicy())
            self.assertIn("lxd_config_directory '/etc/cron.d'", str(caught.exception))
            self.assertIn("[api] allow_exec = true", str(caught.exception))
        check_server_change("s", server({**lxd, "lxd_generate_client_certs": False}), None, ChangePolicy())
        check_server_change("s", server(lxd, balance="leastconn"), server(lxd), ChangePolicy())
        self.assertRaises(ChangeRefused, check_server_change, "s", server({**lxd, "lxd_config_directory": "/tmp/x"}),
                          server(lxd), ChangePolicy())
        check_server_change("s", server(lxd), None, ChangePolicy(allow_exec=True))

    def test_noExecAllowed(self) -> None:
        check_server_change("s", server(healthcheck={"kind": "ping", "interval": "1s"}), None, ChangePolicy())

    def test_allowExecAllowsAll(self) -> None:
        policy = ChangePolicy.of(parse_config(CONFIG.format(api="allow_exec = true", extra="").encode(), "t").api)
        self.assertEqual(policy, ChangePolicy(allow_exec=True))
        check_server_change("s", server(EXEC_DISCOVERY, EXEC_CHECK), None, policy)
        self.assertEqual(ChangePolicy.of(BASE.api), ChangePolicy(allow_exec=False))


def make(test: SynchronousTestCase, api: str = "", extra: str = "", state: bool = True) -> V1:
    """A /v1-capable API over L{SpawningReactor}, with a state file in the test's directory."""
    if state:
        path = os.path.abspath(test.mktemp())
        extra += f'\n[state]\npath = "{path}"\n'
    config: Config = parse_config(CONFIG.format(api=api, extra=extra).encode(), "test.toml")
    return V1(config, SpawningReactor())


class ApiTests(SynchronousTestCase):
    """Through the root API and /v1: refused with 403, nothing started, nothing changed, nothing persisted."""

    def assertUnchanged(self, v1: V1, before: dict[str, Any]) -> None:
        self.assertEqual({name: v1.control.server_definition(name) for name in v1.control.server_names()}, before)
        self.assertEqual(v1.reactor.argvs(), [])
        self.assertEqual(v1.reactor.listening(), [3000, 3001, 3002])

    def definitions(self, v1: V1) -> dict[str, Any]:
        return {name: v1.control.server_definition(name) for name in v1.control.server_names()}

    def test_rootPostOfExecServerIs403(self) -> None:
        v1 = make(self)
        before = self.definitions(v1)
        for definition in ({"bind": "127.0.0.1:4000", "discovery": EXEC_DISCOVERY},
                           {"bind": "127.0.0.1:4000", "discovery": STATIC, "healthcheck": EXEC_CHECK}):
            response, body = v1.json(self, "POST", "/servers/new", definition)
            self.assertEqual(response.code, 403, body)
            self.assertIn("allow_exec", body)
        self.assertUnchanged(v1, before)
        self.assertEqual([id for id, view in v1.control.backends().items() if view.origin == "api"], [])

    def test_v1WritesSettingExecAre403(self) -> None:
        v1 = make(self)
        before = self.definitions(v1)
        new = {"data": {"id": "new", "type": "services",
                        "attributes": {"parameters": {"bind": "127.0.0.1:4000", "discovery": EXEC_DISCOVERY}}}}
        response, body = v1.json(self, "POST", "/v1/services", new)
        assert_errors(self, response, body, 403, '"exec"', "allow_exec")
        change = {"data": {"attributes": {"parameters": {"discovery": {**EXEC_DISCOVERY, "static_list": None}}}}}
        response, body = v1.json(self, "PATCH", "/v1/services/web", change)
        assert_errors(self, response, body, 403, "allow_exec")
        response, body = v1.json(self, "PATCH", "/v1/monitors/web", {"data": {"attributes": {"parameters": EXEC_CHECK}}})
        assert_errors(self, response, body, 403, 'healthcheck kind "exec"')
        patch = [{"op": "replace", "path": "/data/attributes/parameters", "value": EXEC_CHECK}]
        response, body = v1.json(self, "PATCH", "/v1/monitors/db", patch, content_type="application/json-patch+json")
        assert_errors(self, response, body, 403)
        self.assertUnchanged(v1, before)

    def test_fileMaySetExecAndOtherChangesKeepIt(self) -> None:
        """A configuration file sets exec freely; a change through the API that keeps its commands is taken."""
        v1 = make(self, extra=FROM_FILE)
        self.assertEqual(v1.control.server_definition("cmd")["discovery"]["kind"], "exec")
        response, body = v1.json(self, "PATCH", "/v1/services/cmd",
                                 {"data": {"attributes": {"parameters": {"balance": "leastconn"}}}}, headers=REPRESENTATION)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(v1.control.server_definition("cmd")["balance"], "leastconn")
        response, body = v1.json(self, "PATCH", "/v1/monitors/cmd",
                                 {"data": {"attributes": {"parameters": {"exec_command": "/bin/false"}}}})
        assert_errors(self, response, body, 403)
        self.assertEqual(v1.control.server_definition("cmd")["healthcheck"]["exec_command"], "/bin/true")
        response, _ = v1.json(self, "DELETE", "/v1/services/cmd")
        self.assertEqual(response.code, 204)
        definition = {"bind": "127.0.0.1:3005", "discovery": {"kind": "exec", "exec_command": ["/bin/echo", "127.0.0.1:9200"]}}
        response, body = v1.json(self, "POST", "/servers/cmd", definition)
        self.assertEqual(response.code, 403, body)

    def test_allowExecLetsTheApiSetIt(self) -> None:
        v1 = make(self, api="allow_exec = true")
        response, body = v1.json(self, "POST", "/servers/new", {"bind": "127.0.0.1:4000", "discovery": EXEC_DISCOVERY})
        self.assertEqual(response.code, 200, body)
        self.assertIn(["/bin/echo", "127.0.0.1:9100"], v1.reactor.argvs())
        response, body = v1.json(self, "PATCH", "/v1/monitors/web", {"data": {"attributes": {"parameters": EXEC_CHECK}}}, headers=REPRESENTATION)
        self.assertEqual(response.code, 200, body)
