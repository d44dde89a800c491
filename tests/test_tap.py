"""The twistd plugin: option parsing, the service tree, exit codes, and --demo."""

from __future__ import annotations

import json
import os
import signal
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from balancer.config.load import parse_config
from balancer.root_service import BalancerService
from balancer.server_service import ServerService
from balancer.tap import Options, build_service
from tests.support.clients import exchange
from tests.support.paths import ROOT, fixture
from tests.support.ports import free_port
from tests.support.processes import run_twistd, spawn_balancer, spawn_twistd
from tests.support.waiting import until

TWO_SERVERS = b"""
[servers.one]
bind = "127.0.0.1:3000"
[servers.one.discovery]
kind = "static"
static_list = ["127.0.0.1:9001"]
[servers.two]
bind = "127.0.0.1:3001"
balance = "leastconn"
[servers.two.discovery]
kind = "static"
static_list = ["127.0.0.1:9002", "127.0.0.1:9003"]
"""


def write_config(test: SynchronousTestCase, text: str) -> str:
    """Write a configuration file in a temporary directory; returns its path."""
    path = os.path.abspath(test.mktemp() + ".toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


class MakeServiceTests(SynchronousTestCase):
    """makeService builds the tree and does no I/O."""

    def test_oneChildPerServerAndNoIO(self) -> None:
        memory = MemoryReactorClock()
        root = build_service(parse_config(TWO_SERVERS, "x"), memory)
        balancer = root.getServiceNamed("balancer")
        self.assertIsInstance(balancer, BalancerService)
        children = list(balancer)
        self.assertEqual([c.name for c in children], ["one", "two"])
        self.assertTrue(all(isinstance(c, ServerService) for c in children))
        self.assertEqual((memory.tcpServers, memory.tcpClients, memory.getDelayedCalls()), ([], [], []))

    def test_startBindsEveryServer(self) -> None:
        memory = MemoryReactorClock()
        root = build_service(parse_config(TWO_SERVERS, "x"), memory)
        root.privilegedStartService()
        root.startService()
        self.assertEqual([(port, iface) for port, _, _, iface in memory.tcpServers],
                         [(3000, "127.0.0.1"), (3001, "127.0.0.1")])

    def test_demoAddsBackendsOnLoopbackAddresses(self) -> None:
        memory = MemoryReactorClock()
        root = build_service(parse_config(TWO_SERVERS, "x"), memory, demo=True)
        root.privilegedStartService()
        ports = sorted(port for port, _, _, _ in memory.tcpServers)
        self.assertEqual(ports, [3000, 3001, 9001, 9002, 9003])

    def test_optionsLoadConfig(self) -> None:
        options = Options()
        options.parseOptions(["--config", os.path.join(ROOT, "etc", "balancer.toml")])
        self.assertEqual(list(options["loaded"].servers), ["sample"])

    def test_optionsBadConfigExits1(self) -> None:
        options = Options()
        with self.assertRaises(SystemExit) as caught:
            options.parseOptions(["--config", fixture("bad", "three_errors.toml")])
        self.assertEqual(caught.exception.code, 1)


class TwistdTests(TestCase):
    """twistd itself, as an operator runs it (the installed plugin)."""

    timeout = 60

    @inlineCallbacks
    def test_twistdListsPlugin(self) -> None:
        """Run from an unrelated directory, so only the installed plugin can be found."""
        out, err, code = yield run_twistd("--help", cwd=tempfile.gettempdir(), installed_only=True)
        self.assertEqual(code, 0, err)
        self.assertIn(b"balancer", out)

    @inlineCallbacks
    def test_checkValid(self) -> None:
        out, err, code = yield run_twistd(
            "balancer", "--check", "--config", os.path.join(ROOT, "etc", "balancer.toml"), cwd=ROOT
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"configuration is valid (1 servers)", out)

    @inlineCallbacks
    def test_checkInvalidPrintsEveryError(self) -> None:
        path = fixture("bad", "three_errors.toml")
        out, err, code = yield run_twistd("balancer", "--check", "--config", path, cwd=ROOT)
        self.assertEqual(code, 1)
        lines = err.decode().strip().splitlines()
        self.assertEqual(len(lines), 3, err)
        self.assertTrue(lines[0].startswith(f"{path}: servers.web.bind: "))
        self.assertNotIn("Traceback", err.decode())

    @inlineCallbacks
    def test_checkReportsAnUnreadableCertificateByItsKeyPath(self) -> None:
        path = write_config(
            self,
            '[servers.secure]\nbind = "127.0.0.1:3443"\nprotocol = "tls"\n'
            '[servers.secure.tls]\ncert_path = "/nonexistent/cert.pem"\nkey_path = "/nonexistent/key.pem"\n'
            '[servers.secure.discovery]\nkind = "static"\nstatic_list = ["127.0.0.1:9001"]\n',
        )
        out, err, code = yield run_twistd("balancer", "--check", "--config", path, cwd=ROOT)
        self.assertEqual(code, 1)
        self.assertEqual(
            err.decode().strip().splitlines(),
            [
                f'{path}: servers.secure.tls.cert_path: cannot read "/nonexistent/cert.pem": No such file or directory',
                f'{path}: servers.secure.tls.key_path: cannot read "/nonexistent/key.pem": No such file or directory',
            ],
        )

    @inlineCallbacks
    def test_missingFileIsOneLine(self) -> None:
        out, err, code = yield run_twistd("-n", "balancer", "--config", "/nonexistent.toml", cwd=ROOT)
        self.assertEqual(code, 1)
        self.assertEqual(
            err.decode().strip(), "/nonexistent.toml: cannot read the configuration file: No such file or directory"
        )

    @inlineCallbacks
    def test_bindFailureExits1NamingServerAndAddress(self) -> None:
        taken = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port
        path = write_config(self, f"""
[servers.web]
bind = "127.0.0.1:{port}"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:1"]
""")
        out, err, code = yield run_twistd("-n", "--pidfile=", "balancer", "--config", path, cwd=ROOT)
        self.assertEqual(code, 1)
        self.assertIn(f'balancer: server "web": cannot listen on 127.0.0.1:{port}: '.encode(), err)
        self.assertNotIn(b"Traceback", err)

    @inlineCallbacks
    def test_demoServesThroughTheBalancer(self) -> None:
        """twistd -n balancer --demo: three named backends answer in turn through one port."""
        backs = [free_port() for _ in range(3)]
        path = write_config(self, f"""
[servers.demo]
bind = "127.0.0.1:0"
balance = "roundrobin"
[servers.demo.discovery]
kind = "static"
static_list = ["127.0.0.1:{backs[0]}", "127.0.0.1:{backs[1]}", "127.0.0.1:{backs[2]}"]
""")
        process = spawn_twistd(b"demo: listening on", "-n", "--pidfile=", "balancer", "--config", path,
                               "--demo", cwd=ROOT)
        self.addCleanup(process.stop)
        front = yield process.listening_port("demo")
        answers = []
        for _ in range(3):
            answer = yield exchange(front, b"GET / HTTP/1.0\r\n\r\n", half_close=False)
            answers.append(answer.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(sorted(answers), sorted(f"hello from demo-{i} (127.0.0.1:{p})\n".encode()
                                                 for i, p in enumerate(backs, start=1)))
        ended = yield process.stop()
        self.assertEqual(ended, (None, signal.SIGTERM), process.output.decode())
        self.assertIn(b"Main loop terminated.", process.output)


class LoggingSectionTests(TestCase):
    """[logging] decides where twistd's log goes."""

    timeout = 60

    @inlineCallbacks
    def test_jsonFileAtWarn(self) -> None:
        """With output = a file, format = json, level = warn: info lines stay out, warnings go in, one JSON object a line."""
        log_path = os.path.abspath(self.mktemp() + ".log")
        path = write_config(self, f"""
[logging]
level = "warn"
output = "{log_path}"
format = "json"
[servers.web]
bind = "127.0.0.1:0"
[servers.web.discovery]
kind = "exec"
exec_command = ["/bin/false"]
""")
        process = spawn_twistd(b"never printed", "-n", "--pidfile=", "balancer", "--config", path, cwd=ROOT)
        process.seen.addErrback(lambda _: None)
        self.addCleanup(process.stop)

        def records() -> list[dict]:
            if not os.path.exists(log_path):
                return []
            with open(log_path, encoding="utf-8") as f:
                return [json.loads(line) for line in f.read().splitlines()]

        yield until(lambda: any(r.get("level") == "warn" for r in records()), 30, "a warning in the JSON log", step=0.1)
        levels = {r["level"] for r in records()}
        self.assertEqual(levels - {"warn", "error", "critical"}, set())
        self.assertNotIn(b"starting up", process.output)

    @inlineCallbacks
    def test_infoHidesDebugAndTwistedChatter(self) -> None:
        """
        At level = "info" (the example's), ping health checks log neither
        their failed checks (debug) nor Twisted's factory start and stop.
        """
        live = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(live.stopListening)
        up, down = live.getHost().port, free_port()
        path = write_config(self, f"""
[logging]
level = "info"
[servers.web]
bind = "127.0.0.1:0"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:{up}", "127.0.0.1:{down}"]
[servers.web.healthcheck]
kind = "ping"
interval = "200ms"
timeout = "200ms"
fails = 3
passes = 2
""")
        process = spawn_balancer(self, path, marker=b"never printed")
        process.seen.addErrback(lambda _: None)
        yield process.wait_for(f"backend 127.0.0.1:{down} down after 3 failed checks".encode())
        self.assertNotIn(b"#debug]", process.output)
        self.assertNotIn(b"Starting factory", process.output)
        self.assertNotIn(b"Stopping factory", process.output)

    @inlineCallbacks
    def test_outputFileIsReopenedOnSigusr1(self) -> None:
        """logrotate's way: rename the file, send SIGUSR1, the next line is in a new file at the old path."""
        log_path = os.path.abspath(self.mktemp() + ".log")
        path = write_config(self, f"""
[logging]
output = "{log_path}"
[servers.web]
bind = "127.0.0.1:0"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:1"]
""")
        process = spawn_twistd(b"never printed", "-n", "--pidfile=", "balancer", "--config", path, cwd=ROOT)
        process.seen.addErrback(lambda _: None)
        self.addCleanup(process.stop)
        yield wait_for_file(log_path, b"web: listening on")
        os.rename(log_path, log_path + ".1")
        os.kill(process.transport.pid, signal.SIGUSR1)
        text = yield wait_for_file(log_path, b"reopened")
        self.assertIn(f"log file {log_path} reopened".encode(), text)
        with open(log_path + ".1", "rb") as f:
            self.assertIn(b"web: listening on", f.read())
        self.assertNotIn(b"web: listening on", text)


def wait_for_file(path: str, text: bytes, seconds: float = 30) -> Deferred[bytes]:
    """Fires with the content of the file at C{path} once it holds C{text} (fails after C{seconds})."""

    def content() -> bytes:
        if not os.path.exists(path):
            return b""
        with open(path, "rb") as f:
            return f.read()

    return until(lambda: text in content(), seconds, f"{text!r} in {path}", step=0.1).addCallback(lambda _: content())


class StateFileStartTests(TestCase):
    """A state file that cannot be loaded stops the start (and --check) with one line naming the file and the place."""

    timeout = 60

    def config_with_state(self, state_text: bytes) -> tuple[str, str]:
        """A configuration whose [state] path holds C{state_text}; returns (configuration path, state path)."""
        state = os.path.abspath(self.mktemp() + ".state.toml")
        with open(state, "wb") as f:
            f.write(state_text)
        config = write_config(self, f"""
[state]
path = "{state}"
[servers.web]
bind = "127.0.0.1:{free_port()}"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:1"]
""")
        return config, state

    @inlineCallbacks
    def test_checkReportsInvalidTomlWithLineAndColumn(self) -> None:
        config, state = self.config_with_state(b'deleted = ["a"]\n[servers.x]\nbind = "unterminated\n')
        out, err, code = yield run_twistd("balancer", "--check", "--config", config, cwd=ROOT)
        self.assertEqual((code, out), (1, b""))
        self.assertEqual(err.decode().strip().splitlines(),
                         [f"{state}: invalid TOML in the state file: Illegal character '\\n' (at line 3, column 21)"])

    @inlineCallbacks
    def test_foregroundStartExits1WithOneLine(self) -> None:
        config, state = self.config_with_state(b"deleted = 3\n")
        out, err, code = yield run_twistd("-n", "--pidfile=", "balancer", "--config", config, cwd=ROOT)
        self.assertEqual(code, 1)
        self.assertEqual(err.decode().strip().splitlines(),
                         [f"{state}: expected [servers.<name>] tables and a deleted = [...] list of names"])

    @inlineCallbacks
    def test_checkReportsTextThatIsNotUtf8(self) -> None:
        config, state = self.config_with_state(b'deleted = ["\xff"]\n')
        out, err, code = yield run_twistd("balancer", "--check", "--config", config, cwd=ROOT)
        self.assertEqual(code, 1)
        self.assertEqual(err.decode().strip().splitlines(), [f"{state}: the state file is not UTF-8 text (byte 12)"])

    @inlineCallbacks
    def test_checkAcceptsAGoodStateFile(self) -> None:
        config, state = self.config_with_state(b'deleted = ["web"]\n')
        out, err, code = yield run_twistd("balancer", "--check", "--config", config, cwd=ROOT)
        self.assertEqual(code, 0, err)
        self.assertIn(b"configuration is valid (0 servers)", out)
