"""
balancerctl against a real balancer (C{twistd -n balancer} in a child
process), each command run as a child process too: tables, C{--tsv} and
C{--json}, changes with C{If-Match}, a 412 on a stale read, C{drain --wait}
ending when a held connection closes, and errors as one line with exit 1
(2 for usage errors), never a traceback.  The API runs with
C{require_conditional}: a change sent without C{If-Match} would be 428.
"""

from __future__ import annotations

import json
import os
from typing import Any

import treq
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support.certs import make_certificates
from tests.support.clients import Double, port_number, serve
from tests.support.ctl import Ran, run_ctl
from tests.support.paths import scratch_directory
from tests.support.peers import Peer, open_client
from tests.support.processes import spawn_balancer
from tests.support.waiting import polled

CONFIG = """
[api]
enabled = true
bind = "127.0.0.1:0"
require_conditional = true
[[api.users]]
login = "admin"
password = "admin-pw"
[[api.users]]
login = "viewer"
password = "viewer-pw"
account = "basic"

[state]
path = "{state}"

[servers.web]
bind = "127.0.0.1:0"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:{backend}"]

[servers.db]
bind = "127.0.0.1:0"
[servers.db.discovery]
kind = "static"
static_list = ["127.0.0.1:1"]
"""


def linked(ran: Ran) -> set[str]:
    """The servers of C{show service NAME --tsv}."""
    pairs = dict(line.split("\t", 1) for line in ran.out.splitlines())
    return set(pairs["relationships.servers"].split(", "))


class CtlTests(TestCase):
    """Every command of balancerctl against a live balancer."""

    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:
        directory = scratch_directory(self)
        backend = yield serve(self, Double)
        self.backend = f"127.0.0.1:{port_number(backend)}"
        config = os.path.join(directory, "balancer.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(CONFIG.format(state=os.path.join(directory, "state.toml"), backend=port_number(backend)))
        self.process = spawn_balancer(self, config)
        self.api = yield self.process.listening_port("api")
        self.web = yield self.process.listening_port("web")

    def ctl(self, *args: str, **kwargs: Any) -> Any:
        """Fires with the L{Ran} of C{balancerctl ARGS} as admin."""
        return run_ctl(self.api, *args, **kwargs)

    @inlineCallbacks
    def ok(self, *args: str, **kwargs: Any) -> Any:
        """Fires with the L{Ran} of C{balancerctl ARGS}, which must exit 0 with nothing on stderr."""
        ran = yield self.ctl(*args, **kwargs)
        self.assertEqual((ran.code, ran.err), (0, ""), ran)
        return ran

    @inlineCallbacks
    def failed(self, code: int, *args: str, **kwargs: Any) -> Any:
        """Fires with the L{Ran} of C{balancerctl ARGS}, which must exit C{code} with no traceback."""
        ran = yield self.ctl(*args, **kwargs)
        self.assertEqual(ran.code, code, ran)
        self.assertNotIn("Traceback", ran.out + ran.err)
        return ran

    @inlineCallbacks
    def server(self, id: str) -> Any:
        """Fires with server C{id}'s attributes, read with treq."""
        response = yield treq.get(f"http://127.0.0.1:{self.api}/v1/servers/{id}", auth=("admin", "admin-pw"),
                                  persistent=False)
        document = yield response.json()
        return document["data"]["attributes"]

    @inlineCallbacks
    def test_listEveryTypeAsTableTsvAndJson(self) -> Any:
        ran = yield self.ok("list", "servers")
        self.assertIn("Server", ran.out)
        self.assertIn(self.backend, ran.out)
        self.assertIn("Running", ran.out)
        self.assertIn("╭", ran.out)
        ran = yield self.ok("list", "services", "--tsv")
        rows = [line.split("\t") for line in ran.out.splitlines()]
        self.assertEqual([row[0] for row in rows], ["web", "db"])
        self.assertEqual(rows[0][5], self.backend)
        ran = yield self.ok("--json", "list", "servers")
        document = json.loads(ran.out)
        self.assertEqual([entry["id"] for entry in document["data"]], [self.backend, "127.0.0.1:1"])
        for type_ in ("listeners", "monitors", "filters", "sessions", "users"):
            ran = yield self.ok("list", type_)
            self.assertIn(type_[:-1].title(), ran.out)
            ran = yield self.ok("list", type_, "--json")
            self.assertIsInstance(json.loads(ran.out)["data"], list)
        ran = yield self.ok("list", "users", "--tsv")
        self.assertEqual(ran.out.splitlines(), ["admin\tadmin\tapi.users", "viewer\tbasic\tapi.users"])

    @inlineCallbacks
    def test_showEveryTypeWithItsETag(self) -> Any:
        ran = yield self.ok("show", "server", self.backend)
        self.assertIn("parameters.weight", ran.out)
        self.assertIn("etag", ran.out)
        ran = yield self.ok("show", "service", "web", "--tsv")
        pairs = dict(line.split("\t", 1) for line in ran.out.splitlines())
        self.assertEqual(pairs["router"], "weight")
        self.assertEqual(pairs["relationships.servers"], self.backend)
        for kind, name in (("listener", "web"), ("monitor", "web"), ("filter", "web"), ("user", "viewer")):
            ran = yield self.ok("show", kind, name, "--json")
            self.assertEqual(json.loads(ran.out)["data"]["id"], name)
        ran = yield self.ok("show", "balancer", "--tsv")
        self.assertIn("pid", dict(line.split("\t", 1) for line in ran.out.splitlines()))
        ran = yield self.ok("show", "maxscale", "--tsv")
        self.assertIn("parameters.api.bind", dict(line.split("\t", 1) for line in ran.out.splitlines()))
        peer = yield open_client(self.web, Peer())
        self.addCleanup(peer.transport.loseConnection)
        peer.transport.write(b"ab")
        yield peer.expect(4)
        ran = yield self.ok("list", "sessions", "--tsv")
        [session] = [line.split("\t") for line in ran.out.splitlines()]
        self.assertEqual((session[1], session[3]), ("web", self.backend))
        ran = yield self.ok("show", "session", session[0])
        self.assertIn("client.address", ran.out)

    @inlineCallbacks
    def test_createLinkUnlinkDestroy(self) -> Any:
        ran = yield self.ok("create", "server", "extra", "127.0.0.1", "9", "--services", "db")
        self.assertEqual(ran.out, "Created server extra\n")
        attributes = yield self.server("extra")
        self.assertEqual(attributes["parameters"]["port"], 9)
        ran = yield self.ok("show", "service", "db", "--tsv")
        self.assertEqual(linked(ran), {"127.0.0.1:1", "extra"})
        yield self.ok("link", "service", "web", "extra")
        ran = yield self.ok("show", "service", "web", "--tsv")
        self.assertEqual(linked(ran), {self.backend, "extra"})
        yield self.ok("unlink", "service", "web", "extra")
        ran = yield self.ok("show", "service", "web", "--tsv")
        self.assertEqual(linked(ran), {self.backend})
        ran = yield self.failed(1, "unlink", "service", "web", "extra")
        self.assertIn('service "web" has no server extra', ran.err)
        ran = yield self.ok("--json", "create", "server", "other", "127.0.0.1", "10")
        self.assertEqual(json.loads(ran.out)["data"]["id"], "other")
        yield self.ok("unlink", "service", "db", "extra")
        ran = yield self.ok("destroy", "server", "extra")
        self.assertEqual(ran.out, "Destroyed server extra\n")
        ran = yield self.failed(1, "show", "server", "extra")
        self.assertIn('no servers resource with id "extra"', ran.err)

    @inlineCallbacks
    def test_setClearAlter(self) -> Any:
        yield self.ok("set", "server", self.backend, "maintenance")
        attributes = yield self.server(self.backend)
        self.assertEqual(attributes["state"], "Maintenance")
        yield self.ok("clear", "server", self.backend, "maintenance")
        attributes = yield self.server(self.backend)
        self.assertEqual(attributes["state"], "Running")
        yield self.ok("set", "server", self.backend, "drain")
        yield self.ok("clear", "server", self.backend)
        attributes = yield self.server(self.backend)
        self.assertEqual(attributes["admin_state"], "active")
        ran = yield self.ok("alter", "server", self.backend, "weight=5", "max_connections=20")
        self.assertEqual(ran.out, f"Server {self.backend}: weight=5, max_connections=20\n")
        attributes = yield self.server(self.backend)
        self.assertEqual(attributes["overrides"], {"weight": 5, "max_connections": 20})
        ran = yield self.ok("alter", "server", self.backend, "weight=null", "--json")
        self.assertEqual(json.loads(ran.out)["data"]["attributes"]["overrides"], {"max_connections": 20})
        ran = yield self.failed(2, "alter", "server", self.backend, "address=1")
        self.assertIn("weight, priority, max_connections", ran.err)
        ran = yield self.failed(2, "set", "server", self.backend, "sleep")
        self.assertIn("'sleep' is not one of 'maintenance', 'drain'", ran.err)

    @inlineCallbacks
    def test_aStaleReadIsRefusedWithAClearMessage(self) -> Any:
        ran = yield self.ok("show", "server", self.backend, "--tsv")
        tag = dict(line.split("\t", 1) for line in ran.out.splitlines())["etag"]
        yield self.ok("alter", "server", self.backend, "weight=3")
        ran = yield self.failed(1, "alter", "server", self.backend, "weight=4", "--if-match", tag)
        self.assertIn(f'server "{self.backend}" was changed since it was read', ran.err)
        self.assertIn("nothing was done", ran.err)
        self.assertEqual(len(ran.err.strip().splitlines()), 1, ran.err)
        attributes = yield self.server(self.backend)
        self.assertEqual(attributes["overrides"], {"weight": 3})
        ran = yield self.failed(1, "set", "server", self.backend, "maintenance", "--if-match", tag)
        self.assertIn("was changed since it was read", ran.err)

    @inlineCallbacks
    def test_drainWaitEndsWhenTheHeldConnectionCloses(self) -> Any:
        peer = yield open_client(self.web, Peer())
        peer.transport.write(b"hi")
        yield peer.expect(4)
        running = self.ctl("drain", "server", self.backend, "--wait", "--timeout", "60s")
        yield polled(lambda: self.server(self.backend), lambda a: a["admin_state"] == "drain", 30, "drain set")
        self.assertFalse(running.called)
        peer.transport.loseConnection()
        ran = yield running
        self.assertEqual(ran.code, 0, ran)
        self.assertEqual(ran.out, f"Server {self.backend}: drained, no connection left\n")
        self.assertIn(f"Draining {self.backend}", ran.err)
        self.assertIn("0 left", ran.err)

    @inlineCallbacks
    def test_drainWaitTimesOutWhileAConnectionStays(self) -> Any:
        peer = yield open_client(self.web, Peer())
        self.addCleanup(peer.transport.loseConnection)
        peer.transport.write(b"hi")
        yield peer.expect(4)
        ran = yield self.failed(1, "drain", "server", self.backend, "--wait", "--timeout", "500ms")
        self.assertIn(f"server {self.backend} still has 1 connection after 500ms", ran.err)
        ran = yield self.failed(2, "drain", "server", self.backend, "--wait", "--timeout", "soon")
        self.assertIn("expected a duration", ran.err)

    @inlineCallbacks
    def test_killSessionAndSessions(self) -> Any:
        peers = []
        for _ in range(3):
            peer = yield open_client(self.web, Peer())
            peer.transport.write(b"x")
            yield peer.expect(2)
            peers.append(peer)
        ran = yield self.ok("list", "sessions", "--tsv")
        first = ran.out.splitlines()[0].split("\t")[0]
        ran = yield self.ok("kill", "session", first)
        self.assertEqual(ran.out, f"Killed session {first}\n")
        ran = yield self.ok("list", "sessions", "--tsv")
        self.assertEqual(len(ran.out.splitlines()), 2)
        yield self.ok("kill", "sessions", "--server", self.backend)
        for peer in peers:
            yield peer.closed
        ran = yield self.failed(1, "kill", "session", "999999")
        self.assertIn('no sessions resource with id "999999"', ran.err)

    @inlineCallbacks
    def test_reloadAndDump(self) -> Any:
        ran = yield self.ok("reload")
        self.assertTrue(ran.out.strip())
        ran = yield self.ok("reload", "--json")
        self.assertIn("summary", json.loads(ran.out)["meta"])
        ran = yield self.ok("dump")
        self.assertIn("[servers.web]", ran.out)
        ran = yield self.ok("dump", "--format", "json")
        self.assertIn("web", json.loads(ran.out)["servers"])

    @inlineCallbacks
    def test_credentialsFromOptionsEnvironmentOrPrompt(self) -> Any:
        ran = yield self.failed(1, "list", "servers", auth=None)
        self.assertIn("Error: ", ran.err)
        self.assertEqual(len(ran.err.strip().splitlines()), 1, ran.err)
        yield self.ok("list", "servers", auth=None, env={"BALANCER_USER": "admin", "BALANCER_PASSWORD": "admin-pw"})
        ran = yield run_ctl(self.api, "--user", "admin", "list", "servers", auth=None, stdin=b"admin-pw\n")
        self.assertEqual(ran.code, 0, ran)
        self.assertIn("Password for admin", ran.err)
        self.assertIn(self.backend, ran.out)
        ran = yield self.failed(1, "list", "servers", auth=("admin", "wrong"))
        self.assertIn("Error: ", ran.err)
        ran = yield self.failed(1, "set", "server", self.backend, "drain", auth=("viewer", "viewer-pw"))
        self.assertIn("needs an admin account", ran.err)
        ran = yield self.ok("list", "servers", auth=("viewer", "viewer-pw"))
        self.assertIn(self.backend, ran.out)

    @inlineCallbacks
    def test_helpEverywhereAndUsageErrors(self) -> Any:
        for args in ((), ("list",), ("list", "servers"), ("show", "server"), ("create", "server"),
                     ("destroy", "server"), ("link", "service"), ("unlink", "service"), ("set", "server"),
                     ("clear", "server"), ("alter", "server"), ("drain", "server"), ("kill", "sessions"),
                     ("kill", "session"), ("reload",), ("dump",)):
            ran = yield self.ok(*args, "--help")
            self.assertIn("Usage: balancerctl", ran.out)
        ran = yield self.failed(2, "list", "nothing")
        self.assertIn("No such command 'nothing'", ran.err)
        ran = yield self.failed(2, "create", "server", "x", "127.0.0.1", "port")
        self.assertIn("'port' is not a valid integer", ran.err)
        ran = yield run_ctl(self.api, "--url", "ftp://x", "list", "servers")
        self.assertEqual(ran.code, 1, ran)
        self.assertIn("--url must be an http:// or https:// URL", ran.err)
        ran = yield run_ctl(1, "list", "servers")
        self.assertEqual(ran.code, 1, ran)
        self.assertIn("cannot reach the API at http://127.0.0.1:1", ran.err)


class HttpsTests(TestCase):
    """C{--ca} and C{--insecure} against an API on HTTPS."""

    timeout = 120

    @inlineCallbacks
    def test_caTrustsTheApiInsecureSkipsTheCheck(self) -> Any:
        directory = scratch_directory(self)
        certificates = make_certificates(directory)
        backend = yield serve(self, Double)
        config = os.path.join(directory, "balancer.toml")
        tls = (f'[api.tls]\ncert_path = "{certificates.server.cert_path}"\n'
               f'key_path = "{certificates.server.key_path}"\n')
        with open(config, "w", encoding="utf-8") as f:
            f.write(CONFIG.format(state=os.path.join(directory, "state.toml"), backend=port_number(backend)) + tls)
        process = spawn_balancer(self, config)
        port = yield process.listening_port("api")
        url = f"https://127.0.0.1:{port}"
        ran = yield run_ctl(url, "--ca", certificates.ca_path, "list", "services", "--tsv")
        self.assertEqual((ran.code, [line.split("\t")[0] for line in ran.out.splitlines()]), (0, ["web", "db"]), ran)
        ran = yield run_ctl(url, "--ca", certificates.other_ca_path, "list", "services")
        self.assertEqual(ran.code, 1, ran)
        self.assertIn("CERTIFICATE_VERIFY_FAILED", ran.err)
        self.assertNotIn("Traceback", ran.err)
        ran = yield run_ctl(url, "--insecure", "list", "services", "--tsv")
        self.assertEqual(ran.code, 0, ran)


class CompletionTests(TestCase):
    """Shell completion, from click."""

    @inlineCallbacks
    def test_bashCompletesCommandsAndTypes(self) -> Any:
        env = {"_BALANCERCTL_COMPLETE": "bash_complete", "COMP_CWORD": "2"}
        ran = yield run_ctl(1, "list", "se", auth=None, env={**env, "COMP_WORDS": "balancerctl list se"})
        self.assertEqual(ran.code, 0, ran)
        self.assertEqual(sorted(ran.out.split()), ["plain,servers", "plain,services", "plain,sessions"])
