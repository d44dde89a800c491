"""
Secrets (L{balancer.config.secrets}): a C{basic} account sees
C{"********"} for every one, on every route, and cannot learn one from an
C{ETag} or a C{filter}; an admin sees them; a write that sends the
placeholder back keeps the stored secret.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from balancer.config.errors import ConfigError
from balancer.config.load import parse_config
from balancer.config.schema import Config
from balancer.config.secrets import CONFIG_SECRETS, REDACTED, SERVER_SECRETS, keep_secrets, redact
from tests.support.certs import make_certificates
from tests.support.paths import scratch_directory
from tests.support.reactors import ListeningReactor
from tests.support.v1_api import CONFIG, REPRESENTATION, V1, assert_errors

ADMIN = ("admin", "admin-pw-5t9q")
VIEWER = ("viewer", "viewer-pw-8k2m")

SECRETS = """
[api.basic_auth]
login = "admin"
password = "admin-pw-5t9q"

[[api.users]]
login = "viewer"
password = "viewer-pw-8k2m"
account = "basic"

[api.tls]
cert_path = "{server_cert}"
key_path = "{server_key}"

[servers.secret]
bind = "127.0.0.1:3003"
protocol = "tls"
[servers.secret.tls]
cert_path = "{server_cert}"
key_path = "{server_key}"
[servers.secret.backends_tls]
root_ca_cert_path = "{ca}"
cert_path = "{client_cert}"
key_path = "{client_key}"
[servers.secret.discovery]
kind = "consul"
consul_host = "127.0.0.1:1"
consul_service_name = "web"
consul_auth_username = "balancer"
consul_auth_password = "consul-pw-3x7v"
consul_acl_token = "acl-token-6h4w"
consul_tls_enabled = true
consul_tls_cert_path = "{client_cert}"
consul_tls_key_path = "{client_key}"
consul_tls_cacert_path = "{ca}"

[state]
path = "{state}"
"""

#: Every path a basic account may read.
READS = ("/", "/servers", "/servers/secret", "/servers/secret/stats", "/v1/", "/v1/services", "/v1/services/secret",
         "/v1/services/secret/relationships/servers", "/v1/listeners", "/v1/listeners/secret", "/v1/monitors",
         "/v1/monitors/secret", "/v1/filters", "/v1/filters/secret", "/v1/servers", "/v1/sessions",
         "/v1/users/inet", "/v1/users/inet/admin", "/v1/balancer", "/v1/openapi.json")


class Balancer:
    """A balancer with secrets in its configuration, and its API."""

    def __init__(self, test: SynchronousTestCase) -> None:
        directory = scratch_directory(test)
        certificates = make_certificates(directory)
        self.state = os.path.join(directory, "state.toml")
        extra = SECRETS.format(server_cert=certificates.server.cert_path, server_key=certificates.server.key_path,
                               client_cert=certificates.client.cert_path, client_key=certificates.client.key_path,
                               ca=certificates.ca_path, state=self.state)
        self.config: Config = parse_config(CONFIG.format(api="", extra=extra).encode(), "test.toml")
        self.secrets = ["consul-pw-3x7v", "acl-token-6h4w", certificates.server.key_path,
                        certificates.client.key_path, "admin-pw-5t9q", "viewer-pw-8k2m"]
        self.api = V1(self.config, ListeningReactor())

    def get(self, test: SynchronousTestCase, path: str, account: tuple[str, str]) -> tuple[Any, bytes]:
        response, body = self.api.call(test, "GET", path, auth=account)
        test.assertEqual(response.code, 200, (path, body))
        return response, body


class RedactionTests(SynchronousTestCase):
    """What a basic account and an admin see."""

    def setUp(self) -> None:
        self.balancer = Balancer(self)

    def test_basicAccountSeesNoSecretAnywhere(self) -> None:
        for path in READS:
            _, body = self.balancer.get(self, path, VIEWER)
            for secret in self.balancer.secrets:
                self.assertNotIn(secret, body.decode(), path)

    def test_basicAccountSeesThePlaceholderWhereEachSecretIs(self) -> None:
        _, body = self.balancer.get(self, "/servers/secret", VIEWER)
        definition = json.loads(body)
        discovery = definition["discovery"]
        self.assertEqual((discovery["consul_auth_password"], discovery["consul_acl_token"],
                          discovery["consul_tls_key_path"], definition["tls"]["key_path"],
                          definition["backends_tls"]["key_path"]), (REDACTED,) * 5)
        self.assertEqual(discovery["consul_auth_username"], "balancer")
        self.assertTrue(definition["tls"]["cert_path"].endswith("server.pem"))
        _, body = self.balancer.get(self, "/v1/services/secret", VIEWER)
        self.assertEqual(json.loads(body)["data"]["attributes"]["parameters"], definition)
        _, body = self.balancer.get(self, "/v1/listeners/secret", VIEWER)
        self.assertEqual(json.loads(body)["data"]["attributes"]["parameters"]["tls"]["key_path"], REDACTED)
        _, body = self.balancer.get(self, "/servers", VIEWER)
        self.assertEqual(json.loads(body)["secret"], definition)

    def test_adminSeesEverySecret(self) -> None:
        _, body = self.balancer.get(self, "/servers/secret", ADMIN)
        self.assertEqual(json.loads(body)["discovery"]["consul_acl_token"], "acl-token-6h4w")
        for path in ("/servers", "/v1/services/secret"):
            _, body = self.balancer.get(self, path, ADMIN)
            for secret in self.balancer.secrets[:4]:
                self.assertIn(secret, body.decode(), path)
        _, body = self.balancer.get(self, "/dump?format=json", ADMIN)
        for secret in self.balancer.secrets:
            self.assertIn(secret, body.decode())

    def test_dumpStaysAdminOnly(self) -> None:
        response, _ = self.balancer.api.call(self, "GET", "/dump", auth=VIEWER)
        self.assertEqual(response.code, 403)

    def test_etagOfABasicAccountDoesNotDependOnSecrets(self) -> None:
        """Changing a secret changes what an admin sees, not the tag a basic account could test guesses against."""
        path = "/v1/services/secret"
        viewer_before = self.balancer.get(self, path, VIEWER)[0].headers.getRawHeaders(b"ETag")
        admin_before = self.balancer.get(self, path, ADMIN)[0].headers.getRawHeaders(b"ETag")
        self.assertNotEqual(viewer_before, admin_before)
        change = {"data": {"attributes": {"parameters": {"discovery": {"consul_acl_token": "another"}}}}}
        response, body = self.balancer.api.json(self, "PATCH", path, change, auth=ADMIN, headers=REPRESENTATION)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(self.balancer.get(self, path, VIEWER)[0].headers.getRawHeaders(b"ETag"), viewer_before)
        self.assertNotEqual(self.balancer.get(self, path, ADMIN)[0].headers.getRawHeaders(b"ETag"), admin_before)

    def test_filterCannotTestASecret(self) -> None:
        query = "/v1/services?filter=/attributes/parameters/discovery/consul_acl_token=acl-token-6h4w"
        _, body = self.balancer.get(self, query, ADMIN)
        self.assertEqual([s["id"] for s in json.loads(body)["data"]], ["secret"])
        _, body = self.balancer.get(self, query, VIEWER)
        self.assertEqual(json.loads(body)["data"], [])


class EchoTests(SynchronousTestCase):
    """A write that sends the placeholder back keeps the stored secret."""

    def setUp(self) -> None:
        self.balancer = Balancer(self)

    def stored(self) -> dict[str, Any]:
        return self.balancer.api.control.server_definition("secret")

    def test_patchWithWhatABasicAccountSawKeepsSecrets(self) -> None:
        before = self.stored()
        _, body = self.balancer.get(self, "/v1/services/secret", VIEWER)
        parameters = json.loads(body)["data"]["attributes"]["parameters"]
        change = {"data": {"attributes": {"parameters": {**parameters, "balance": "leastconn"}}}}
        response, answer = self.balancer.api.json(self, "PATCH", "/v1/services/secret", change, auth=ADMIN, headers=REPRESENTATION)
        self.assertEqual(response.code, 200, answer)
        self.assertEqual(self.stored(), {**before, "balance": "leastconn"})
        with open(self.balancer.state, encoding="utf-8") as f:
            state = f.read()
        self.assertIn("acl-token-6h4w", state)
        self.assertNotIn(REDACTED, state)

    def test_jsonPatchAndListenerKeepSecrets(self) -> None:
        before = self.stored()
        patch = [{"op": "replace", "path": "/data/attributes/parameters/discovery/consul_auth_password", "value": REDACTED},
                 {"op": "add", "path": "/data/attributes/parameters/balance", "value": "leastconn"}]
        response, answer = self.balancer.api.json(self, "PATCH", "/v1/services/secret", patch, auth=ADMIN,
                                                  content_type="application/json-patch+json", headers=REPRESENTATION)
        self.assertEqual(response.code, 200, answer)
        change = {"data": {"attributes": {"parameters": {"tls": {"key_path": REDACTED}}}}}
        response, answer = self.balancer.api.json(self, "PATCH", "/v1/listeners/secret", change, auth=ADMIN, headers=REPRESENTATION)
        self.assertEqual(response.code, 200, answer)
        self.assertEqual(self.stored(), {**before, "balance": "leastconn"})

    def test_aRealNewValueIsSet(self) -> None:
        change = {"data": {"attributes": {"parameters": {"discovery": {"consul_acl_token": "new-token"}}}}}
        response, answer = self.balancer.api.json(self, "PATCH", "/v1/services/secret", change, auth=ADMIN, headers=REPRESENTATION)
        self.assertEqual(response.code, 200, answer)
        self.assertEqual(self.stored()["discovery"]["consul_acl_token"], "new-token")

    def test_placeholderWithNothingStoredIsRefused(self) -> None:
        """A new server, or a secret the server does not have: the placeholder stands for nothing."""
        definition = {**self.stored(), "bind": "127.0.0.1:4000"}
        definition["discovery"] = {**definition["discovery"], "consul_acl_token": REDACTED}
        response, answer = self.balancer.api.json(self, "POST", "/servers/copy", definition, auth=ADMIN)
        self.assertEqual(response.code, 409, answer)
        self.assertIn('servers.copy.discovery.consul_acl_token: "********" stands for a secret', answer)
        new = {"data": {"id": "copy", "type": "services", "attributes": {"parameters": definition}}}
        response, answer = self.balancer.api.json(self, "POST", "/v1/services", new, auth=ADMIN)
        errors = assert_errors(self, response, answer, 422)
        self.assertEqual(errors[0]["source"]["pointer"], "/data/attributes/parameters/discovery/consul_acl_token")
        change = {"data": {"attributes": {"parameters": {"discovery": {"kind": "consul", "consul_host": "127.0.0.1:1",
                                                                       "consul_service_name": "x",
                                                                       "consul_acl_token": REDACTED,
                                                                       "static_list": None}}}}}
        response, answer = self.balancer.api.json(self, "PATCH", "/v1/services/web", change, auth=ADMIN)
        assert_errors(self, response, answer, 422, "stands for a secret")
        self.assertNotIn("copy", self.balancer.api.control.server_names())
        self.assertEqual(self.balancer.api.control.server_definition("web")["discovery"]["kind"], "static")


class FunctionTests(SynchronousTestCase):
    """L{redact} and L{keep_secrets} on their own."""

    def test_redactLeavesEmptyAndMissingValues(self) -> None:
        definition = {"bind": "x", "discovery": {"kind": "consul", "consul_acl_token": "", "consul_auth_password": "p"},
                      "backends_tls": {"cert_path": "c"}}
        redacted = redact(definition, SERVER_SECRETS)
        self.assertEqual(redacted, {"bind": "x", "discovery": {"kind": "consul", "consul_acl_token": "",
                                                                "consul_auth_password": REDACTED},
                                    "backends_tls": {"cert_path": "c"}})
        self.assertEqual(definition["discovery"]["consul_auth_password"], "p")

    def test_redactConfigObjects(self) -> None:
        balancer = Balancer(self)
        config = redact(balancer.config, CONFIG_SECRETS)
        self.assertEqual((config.api.basic_auth.password, config.api.users[0].password, config.api.tls.key_path),
                         (REDACTED,) * 3)
        secret = config.servers["secret"]
        self.assertEqual((secret.discovery.consul_acl_token, secret.tls.key_path, secret.backends_tls.key_path),
                         (REDACTED,) * 3)
        self.assertEqual(config.servers["web"], balancer.config.servers["web"])
        self.assertEqual(balancer.config.api.basic_auth.password, "admin-pw-5t9q")

    def test_keepSecretsOnAnyShape(self) -> None:
        for definition in (None, 3, "x", [], {"discovery": "x"}, {"discovery": {"consul_acl_token": 5}}):
            self.assertEqual(keep_secrets(definition, None, "s", "test"), definition)
        stored = {"discovery": {"consul_acl_token": "t"}}
        self.assertEqual(keep_secrets({"discovery": {"consul_acl_token": REDACTED, "kind": "consul"}}, stored, "s", "test"),
                         {"discovery": {"consul_acl_token": "t", "kind": "consul"}})
        with self.assertRaises(ConfigError) as caught:
            keep_secrets({"tls": {"key_path": REDACTED}, "discovery": {"consul_acl_token": REDACTED}}, stored, "s", "t")
        self.assertEqual(caught.exception.lines(),
                         ['t: servers.s.tls.key_path: "********" stands for a secret this server does not have; give the value'])


class UrlCredentialsTests(SynchronousTestCase):
    """
    A discovery URL may not hold C{user:password@}: the URL is not a secret,
    so read-only accounts would be shown them (and the HTTP clients take no
    credentials from a URL: it failed only when discovery ran).
    """

    def test_credentialsInADiscoveryUrlAreRefusedNamingTheKey(self) -> None:
        for kind, key, url, extra in (
            ("json", "json_endpoint", "http://svc:URLSECRET@127.0.0.1/backends", ""),
            ("plaintext", "plaintext_endpoint", "https://user@127.0.0.1/list", ""),
            ("docker", "docker_endpoint", "https://u:DOCKERSECRET@127.0.0.1:2376", "docker_container_private_port = 80"),
        ):
            text = f'[servers.s]\nbind = "127.0.0.1:1"\n[servers.s.discovery]\nkind = "{kind}"\n{key} = "{url}"\n{extra}\n'
            with self.assertRaises(ConfigError) as caught:
                parse_config(text.encode(), "test.toml")
            self.assertIn(f"servers.s.discovery.{key}", str(caught.exception))
            self.assertIn("user:password@", str(caught.exception))

    def test_anAtInThePathOrQueryIsNoCredential(self) -> None:
        text = ('[servers.s]\nbind = "127.0.0.1:1"\n[servers.s.discovery]\nkind = "json"\n'
                'json_endpoint = "http://127.0.0.1:8500/v1/a@b?who=x@y"\n')
        config = parse_config(text.encode(), "test.toml")
        self.assertEqual(config.servers["s"].discovery.json_endpoint, "http://127.0.0.1:8500/v1/a@b?who=x@y")
