"""
The cross-site attack of issue 14 against a real C{twistd -n balancer}: a
web page submits a C{text/plain} form whose body is a valid server
definition with an C{exec} discovery.  The API answers 415 and no command
runs; a JSON write of the same kind runs its command only with
C{[api] allow_exec = true}, while a configuration file may always set one.
"""

from __future__ import annotations

import json
import os
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.support.paths import scratch_directory
from tests.support.processes import spawn_balancer
from tests.support.waiting import until

CONFIG = """
[api]
enabled = true
bind = "127.0.0.1:0"
{api}

[servers.web]
bind = "127.0.0.1:0"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:1"]
{extra}
"""



def exec_server(marker: str) -> dict[str, Any]:
    """A server whose exec discovery appends a line to the file C{marker} (and prints one backend)."""
    command = f"echo ran >> '{marker}'; X=1; echo 127.0.0.1:1"
    return {"bind": "127.0.0.1:0", "discovery": {"kind": "exec", "exec_command": ["/bin/sh", "-c", command]}}


def form_body(definition: dict[str, Any]) -> bytes:
    """A text/plain form's body (C{NAME=VALUE\\r\\n}) that is C{definition} as JSON: the C{=} is the command's."""
    text = json.dumps(definition)
    cut = text.index("X=1") + 1
    return f"{text[:cut]}={text[cut + 1:]}\r\n".encode()


def lines(path: str) -> int:
    """How many lines the file at C{path} has (0 if there is none)."""
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        return len(f.readlines())


class AttackTests(TestCase):
    """The form POST, and exec through the API, against a real process."""

    timeout = 60

    def setUp(self) -> None:
        self.directory = scratch_directory(self)
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        self.client = HTTPClient(Agent(reactor, pool=pool))

    @inlineCallbacks
    def start(self, api: str = "", extra: str = "") -> Any:
        """Start the balancer; fires with (process, API port) once the API listens."""
        path = os.path.join(self.directory, "balancer.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(CONFIG.format(api=api, extra=extra))
        process = spawn_balancer(self, path)
        match = yield process.wait_for(rb"api: listening on 127\.0\.0\.1:(\d+)\s")
        return process, int(match.group(1))

    @inlineCallbacks
    def call(self, port: int, method: str, path: str, **kwargs: Any) -> Any:
        """Fires with (code, decoded JSON body)."""
        response = yield self.client.request(method, f"http://127.0.0.1:{port}{path}", **kwargs)
        body = yield response.content()
        return response.code, json.loads(body)

    @inlineCallbacks
    def only_the_allowed_command_runs(self, port: int, attack: str) -> Any:
        """
        A JSON write of an exec server from this host runs its command at
        once, while the attack's (writing to C{attack}) never ran and its
        server C{pwned} does not exist.
        """
        proof = os.path.join(self.directory, "proof")
        code, answer = yield self.call(port, "POST", "/servers/allowed", json=exec_server(proof))
        self.assertEqual(code, 200, answer)
        yield until(lambda: lines(proof) >= 1, 20, "the allowed exec discovery ran", step=0.05)
        self.assertFalse(os.path.exists(attack))
        code, _ = yield self.call(port, "GET", "/servers/pwned")
        self.assertEqual(code, 404)

    @inlineCallbacks
    def test_crossSiteFormPostIs415AndRunsNothing(self) -> Any:
        """
        Even with allow_exec, the form is refused (with the Origin a browser
        adds, and without): its command never runs, while the same write sent
        as JSON from this host runs its own at once.
        """
        _, port = yield self.start(api="allow_exec = true")
        attack = os.path.join(self.directory, "attack")
        body = form_body(exec_server(attack))
        self.assertEqual(json.loads(body), exec_server(attack))
        for headers in ({"Content-Type": "text/plain", "Origin": "https://evil.example"}, {"Content-Type": "text/plain"}):
            code, answer = yield self.call(port, "POST", "/servers/pwned", data=body, headers=headers)
            self.assertEqual(code, 415, answer)
            self.assertIn("must be JSON", answer)
        yield self.only_the_allowed_command_runs(port, attack)

    @inlineCallbacks
    def test_execThroughTheApiIs403WithoutAllowExec(self) -> Any:
        """
        By default a JSON write setting exec is refused and runs nothing,
        while a server of the configuration file runs its exec discovery
        again and again (proof the process runs commands it was given).
        """
        from_file = os.path.join(self.directory, "from-file")
        definition = exec_server(from_file)["discovery"]["exec_command"]
        extra = f"""
[servers.file]
bind = "127.0.0.1:0"
[servers.file.discovery]
kind = "exec"
interval = "100ms"
exec_command = {json.dumps(definition)}
"""
        _, port = yield self.start(extra=extra)
        attempt = os.path.join(self.directory, "attempt")
        code, answer = yield self.call(port, "POST", "/servers/pwned", json=exec_server(attempt))
        self.assertEqual(code, 403, answer)
        self.assertIn("allow_exec", answer)
        code, answer = yield self.call(port, "PATCH", "/v1/monitors/web", json={"data": {"attributes": {"parameters": {
            "kind": "exec", "interval": "100ms", "exec_command": f"/bin/sh -c 'echo ran >> {attempt}'"}}}})
        self.assertEqual(code, 403, answer)
        seen = lines(from_file)
        yield until(lambda: lines(from_file) >= seen + 2, 20, "the file's exec discovery ran twice more", step=0.05)
        self.assertFalse(os.path.exists(attempt))
        code, _ = yield self.call(port, "GET", "/servers/pwned")
        self.assertEqual(code, 404)

    @inlineCallbacks
    def test_aPageRebindingItsNameToThisHostIs421AndRunsNothing(self) -> Any:
        """
        DNS rebinding: once a page's name points at this host, its requests
        reach the API from this host, with that name as C{Host} and as
        C{Origin}.  With no account (writes from this host only) and
        C{allow_exec}, they are answered 421: the exec discovery the page
        sends never runs, and it reads nothing, while the same write made
        to 127.0.0.1 runs its own command at once.
        """
        _, port = yield self.start(api="allow_exec = true")
        attack = os.path.join(self.directory, "attack")
        name = f"rebind.attacker.example:{port}"
        headers = {"Host": [name], "Origin": [f"http://{name}"]}
        code, answer = yield self.call(port, "POST", "/servers/pwned", json=exec_server(attack), headers=headers)
        self.assertEqual(code, 421, answer)
        self.assertIn("allowed_hosts", answer)
        code, answer = yield self.call(port, "GET", "/dump", headers=headers)
        self.assertEqual(code, 421, answer)
        yield self.only_the_allowed_command_runs(port, attack)
