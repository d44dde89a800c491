"""
The root API in the real plugin: C{twistd -n balancer} in a child process,
the API on 127.0.0.1 port 0 (its port read from the log), and C{treq} over
TCP and over TLS.
"""

from __future__ import annotations

import os
import signal
from io import BytesIO
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import UNKNOWN_LENGTH

from tests.support.api_process import ApiProcessTestCase
from tests.support.certs import self_signed
from tests.support.clients import exchange
from tests.support.paths import ROOT
from tests.support.peers import open_client
from tests.support.processes import run_twistd
from tests.support.waiting import polled


class RootApiTests(ApiProcessTestCase):
    """The routes over TCP, in a real process."""

    @inlineCallbacks
    def test_infoPingAndServers(self) -> Any:
        config = self.write_config()
        process, port = yield self.start(config)
        response, info = yield self.call(port, "GET", "/")
        self.assertEqual(response.code, 200)
        self.assertEqual((info["pid"], info["configuration"]), (process.transport.pid, {"kind": "file", "path": config}))
        self.assertRegex(info["uptime"], r"^[0-9.]+(µs|ms|s)$")
        response, pong = yield self.call(port, "GET", "/ping")
        self.assertEqual((response.code, pong), (200, "OK"))
        response, servers = yield self.call(port, "GET", "/servers")
        self.assertEqual(servers["web"]["discovery"]["static_list"], [f"127.0.0.1:{self.backend} weight=1 priority=1"])
        response, missing = yield self.call(port, "GET", "/servers/nope/stats")
        self.assertEqual((response.code, missing), (404, 'no server named "nope"'))

    @inlineCallbacks
    def test_postedServerServesAtOnceAndDeleteRemovesIt(self) -> Any:
        process, port = yield self.start(self.write_config())
        definition = {"bind": "127.0.0.1:0", "discovery": {"kind": "static", "static_list": [f"127.0.0.1:{self.backend}"]}}
        response, created = yield self.call(port, "POST", "/servers/added", json=definition)
        self.assertEqual(response.code, 200, created)
        added = yield self.listening_port(process, "added")
        answer = yield exchange(added, b"ping")
        self.assertEqual(answer, b"pingping")
        response, body = yield self.call(port, "DELETE", "/servers/added")
        self.assertEqual((response.code, body), (200, None))
        yield self.assertFailure(exchange(added, b"ping"), ConnectionRefusedError)
        response, _ = yield self.call(port, "GET", "/servers/added")
        self.assertEqual(response.code, 404)

    @inlineCallbacks
    def test_postOnABoundPortChangesNothing(self) -> Any:
        taken = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        address = f"127.0.0.1:{taken.getHost().port}"
        process, port = yield self.start(self.write_config())
        _, before = yield self.call(port, "GET", "/servers")
        definition = {"bind": address, "discovery": {"kind": "static", "static_list": ["127.0.0.1:1"]}}
        response, message = yield self.call(port, "POST", "/servers/clash", json=definition)
        self.assertEqual(response.code, 409)
        self.assertTrue(message.startswith(f'server "clash": cannot listen on {address}: '), message)
        _, after = yield self.call(port, "GET", "/servers")
        self.assertEqual(after, before)
        self.assertFalse(os.path.exists(self.state))

    @inlineCallbacks
    def test_bodyOverOneMebibyteIs413(self) -> Any:
        process, port = yield self.start(self.write_config())
        big = b"{" + b" " * (2 << 20) + b"}"
        chunked = FileBodyProducer(BytesIO(big))
        chunked.length = UNKNOWN_LENGTH
        for body in (big, chunked):
            response, message = yield self.call(port, "POST", "/servers/big", data=body)
            self.assertEqual(response.code, 413)
            self.assertIn("1048576", message)
        response, _ = yield self.call(port, "GET", "/servers/big")
        self.assertEqual(response.code, 404)

    @inlineCallbacks
    def test_statsCountExactBytesAndIdleAddsNothing(self) -> Any:
        process, port = yield self.start(self.write_config())
        web = yield self.listening_port(process, "web")
        answer = yield exchange(web, b"x" * 100_000)
        self.assertEqual(answer, b"x" * 200_000)
        response, stats = yield self.call(port, "GET", "/servers/web/stats")
        backend = stats["backends"][0]
        self.assertEqual((stats["tx_total"], stats["rx_total"]), (100_000, 200_000))
        self.assertEqual((backend["port"], backend["stats"]["tx"], backend["stats"]["rx"]),
                         (str(self.backend), 100_000, 200_000))
        idle = yield open_client(web, Protocol())
        self.addCleanup(idle.transport.loseConnection)
        response, later = yield polled(lambda: self.call(port, "GET", "/servers/web/stats"),
                                       lambda answer: (answer[1]["active_connections"], answer[1]["tx_second"],
                                                       answer[1]["rx_second"]) == (1, 0, 0),
                                       10, "the idle client counted and the rates back to 0")
        self.assertEqual((later["active_connections"], later["tx_total"], later["rx_total"],
                          later["tx_second"], later["rx_second"]), (1, 100_000, 200_000, 0, 0))
        self.assertEqual((later["backends"][0]["stats"]["tx"], later["backends"][0]["stats"]["rx"]),
                         (100_000, 200_000))


class StateAndDumpTests(ApiProcessTestCase):
    """C{[state] path} across a restart, and C{/dump} fed back as C{--config}."""

    @inlineCallbacks
    def test_runtimeChangesSurviveRestart(self) -> Any:
        config = self.write_config()
        process, port = yield self.start(config)
        definition = {"bind": "127.0.0.1:0", "balance": "leastconn",
                      "discovery": {"kind": "static", "static_list": [f"127.0.0.1:{self.backend}"]}}
        response, _ = yield self.call(port, "POST", "/servers/added", json=definition)
        self.assertEqual(response.code, 200)
        response, _ = yield self.call(port, "DELETE", "/servers/web")
        self.assertEqual(response.code, 200)
        _, before = yield self.call(port, "GET", "/servers")
        ended = yield process.stop()
        self.assertEqual(ended, (None, signal.SIGTERM), process.output.decode())
        restarted, port = yield self.start(config)
        _, after = yield self.call(port, "GET", "/servers")
        self.assertEqual(after, before)
        self.assertEqual(list(after), ["added"])
        added = yield self.listening_port(restarted, "added")
        answer = yield exchange(added, b"back")
        self.assertEqual(answer, b"backback")

    @inlineCallbacks
    def test_dumpFedBackReproducesServers(self) -> Any:
        process, port = yield self.start(self.write_config())
        definition = {"bind": "127.0.0.1:0", "discovery": {"kind": "static", "static_list": ["127.0.0.1:1 weight=3"]},
                      "healthcheck": {"kind": "ping", "interval": "2s", "timeout": "500ms"}}
        response, _ = yield self.call(port, "POST", "/servers/added", json=definition)
        self.assertEqual(response.code, 200)
        _, servers = yield self.call(port, "GET", "/servers")
        response, dump = yield self.call(port, "GET", "/dump?format=toml")
        self.assertEqual(response.code, 200)
        yield process.stop()
        os.unlink(self.state)
        dumped = os.path.join(self.directory, "dumped.toml")
        with open(dumped, "wb") as f:
            f.write(dump)
        again, port = yield self.start(dumped)
        _, reproduced = yield self.call(port, "GET", "/servers")
        self.assertEqual(reproduced, servers)
        self.assertEqual(list(reproduced), ["web", "added"])


class TlsAndStartupTests(ApiProcessTestCase):
    """C{[api.tls]}, accounts over HTTPS, and failures at start."""

    @inlineCallbacks
    def test_httpsWithBasicAuth(self) -> Any:
        cert, key, pem = self_signed(self.directory)
        process, port = yield self.start(self.write_config(
            f'[api.basic_auth]\nlogin = "admin"\npassword = "1111"\n[api.tls]\ncert_path = "{cert}"\nkey_path = "{key}"'
        ))
        https = self.client(trust=pem)
        response, pong = yield self.call(port, "GET", "/ping", scheme="https", client=https)
        self.assertEqual((response.code, pong), (200, "OK"))
        response, _ = yield self.call(port, "GET", "/servers", scheme="https", client=https)
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers.getRawHeaders(b"WWW-Authenticate"), [b'Basic realm="balancer"'])
        response, servers = yield self.call(port, "GET", "/servers", scheme="https", client=https, auth=("admin", "1111"))
        self.assertEqual((response.code, list(servers)), (200, ["web"]))

    @inlineCallbacks
    def test_apiBindFailureExits1(self) -> Any:
        taken = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        busy = taken.getHost().port
        out, err, code = yield run_twistd("-n", "--pidfile=", "balancer", "--config",
                                          self.write_config(api_port=busy), cwd=ROOT)
        self.assertEqual(code, 1, out + err)
        self.assertIn(f"balancer: api: cannot listen on 127.0.0.1:{busy}: ".encode(), err)
        self.assertNotIn(b"Traceback", out + err)

    @inlineCallbacks
    def test_missingCertificateExits1(self) -> Any:
        missing = os.path.join(self.directory, "missing.crt")
        config = self.write_config(f'[api.tls]\ncert_path = "{missing}"\nkey_path = "{missing}"')
        out, err, code = yield run_twistd("-n", "--pidfile=", "balancer", "--config", config, cwd=ROOT)
        self.assertEqual(code, 1, out + err)
        self.assertIn(f'balancer: api.tls.cert_path: cannot read "{missing}": No such file or directory'.encode(), err)
        self.assertNotIn(b"Traceback", out + err)
