"""
Reloading the configuration file of a real C{twistd -n balancer}: C{SIGHUP}
(what systemd's C{ExecReload=/bin/kill -HUP $MAINPID} sends) and
C{POST /v1/balancer/reload}.  A good file applies (servers added, removed,
changed) while long transfers go on; a bad file changes nothing and every
problem is logged; a server moving to another address refuses no client;
one whose listener is rebuilt on the same address keeps its socket; a
changed certificate file is read again; the other worker process gets the
change.
"""

from __future__ import annotations

import os
import re
import signal
from typing import Any

import attrs
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.support.certs import Authority
from tests.support.clients import Echo, exchange, serve
from tests.support.paths import scratch_directory
from tests.support.ports import free_port
from tests.support.processes import WatchedProcess, spawn_balancer
from tests.support.waiting import until

#: Bytes a conversation sends each round (and gets back).
ROUND = 4096
#: Rounds each long conversation goes on for after the reload.
ROUNDS_AFTER = 20
#: Clients connecting in a loop, at once, to each plain server while it is reloaded.
PARALLEL = 8
#: Connections each loop must make after the reload before it stops.
AFTER_RELOAD = 20


class Conversation(Protocol):
    """
    A long transfer: sends L{ROUND} bytes, waits for their echo, again and
    again until L{finish} (or C{limit} rounds); C{ended} fires with the
    rounds done and the reason the connection ended.  Over TLS,
    C{certificate} is the server's (DER), as the first answer found it.
    """

    transport: Any

    def __init__(self, limit: int = 0) -> None:
        """@param limit: if over 0, close after that many rounds."""
        self.limit = limit
        self.rounds = 0
        self.certificate = b""
        self._pending = b""
        self._finishing = False
        self.ended: Deferred[tuple[int, Failure]] = Deferred()

    def connectionMade(self) -> None:
        self._send()

    def _send(self) -> None:
        self._pending = os.urandom(ROUND)
        self._received = b""
        self.transport.write(self._pending)

    def dataReceived(self, data: bytes) -> None:
        if not self.rounds and not self._received:
            peer = getattr(self.transport, "getPeerCertificate", lambda: None)()
            self.certificate = Certificate(peer).dump() if peer is not None else b""
        self._received += data
        if len(self._received) < ROUND:
            return
        assert self._received == self._pending, "the echo differs from what was sent"
        self.rounds += 1
        if self.rounds == self.limit:
            self.transport.loseConnection()
        elif self._finishing:
            self.transport.loseWriteConnection()
        else:
            reactor.callLater(0.005, self._send)

    def finish(self) -> None:
        """End after the round under way: shut down the write side, the echo backend then closes."""
        self._finishing = True

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.ended.callback((self.rounds, reason))


def read(path: str) -> bytes:
    """The bytes of the file at C{path}."""
    with open(path, "rb") as f:
        return f.read()


def write(path: str, text: str) -> None:
    """Make C{text} the file at C{path}."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def server(name: str, backend: int, bind: str = "127.0.0.1:0", extra: str = "") -> str:
    """A C{[servers.NAME]} section relaying to the backend on 127.0.0.1 port C{backend}."""
    return f"""
[servers.{name}]
bind = "{bind}"
{extra}
[servers.{name}.discovery]
kind = "static"
static_list = ["127.0.0.1:{backend}"]
"""


HEAD = """
[defaults]
shutdown_grace = "1s"
{defaults}
[api]
enabled = true
bind = "127.0.0.1:0"
"""


def reload_line(process: WatchedProcess, after: int = 0) -> Deferred[str]:
    """Fires with the first reload log line (C{reload: servers ...} or C{reload: no change}) past byte C{after} of the output."""
    pattern = re.compile(rb"reload: (servers [^\n]*|no change[^\n]*)")

    def found() -> bool:
        return pattern.search(process.output, after) is not None

    def line(_: None) -> str:
        match = pattern.search(process.output, after)
        assert match is not None
        return "reload: " + match.group(1).decode()

    return until(found, 30, "a reload log line").addCallback(line)


class ReloadTests(TestCase):
    """One balancer process, reloaded."""

    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:
        directory = scratch_directory(self)
        self.directory = directory
        self.config = os.path.join(directory, "balancer.toml")
        port = yield serve(self, Echo)
        self.echo = port.getHost().port

    def sighup(self, process: WatchedProcess) -> int:
        """Send SIGHUP to the twistd we started; returns how much output there was before."""
        before = len(process.output)
        assert process.transport is not None
        os.kill(process.transport.pid, signal.SIGHUP)
        return before

    @inlineCallbacks
    def call(self, api: int, method: str, path: str) -> Any:
        """Fires with (status, decoded JSON) of one API request."""
        response = yield treq.request(method, f"http://127.0.0.1:{api}{path}", persistent=False)
        content = yield response.json()
        return response.code, content

    @inlineCallbacks
    def test_goodFileAppliesWhileLongTransfersGoOn(self) -> Any:
        head = HEAD.format(defaults="")
        write(self.config, head + server("keep", self.echo) + server("tuned", self.echo, extra='balance = "roundrobin"')
              + server("gone", self.echo))
        process = spawn_balancer(self, self.config)
        keep = yield process.listening_port("keep")
        tuned = yield process.listening_port("tuned")
        gone = yield process.listening_port("gone")
        yield process.seen
        talks = []
        for port in (keep, tuned):
            talk = Conversation()
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), talk)
            talks.append(talk)
        yield until(lambda: all(t.rounds >= 3 for t in talks), 30, "the transfers under way")

        write(self.config, head + server("keep", self.echo) + server("tuned", self.echo, extra='balance = "leastconn"')
              + server("added", self.echo))
        line = yield reload_line(process, self.sighup(process))
        self.assertEqual(line, "reload: servers added added; removed gone; changed tuned")
        at_reload = [t.rounds for t in talks]
        yield until(lambda: all(t.rounds >= n + ROUNDS_AFTER for t, n in zip(talks, at_reload)), 30,
                    "the transfers going on after the reload")
        for talk in talks:
            talk.finish()
        ended = yield gatherResults([t.ended for t in talks])
        for rounds, reason in ended:
            self.assertTrue(reason.check(ConnectionDone), reason)
        added = yield process.listening_port("added")
        answer = yield exchange(added, b"hello")
        self.assertEqual(answer, b"hello")
        yield self.assertFailure(exchange(gone, b"x"), ConnectionRefusedError)
        self.assertIn(b"tuned: reconfigured", process.output)
        self.assertEqual(process.output.count(b"keep: listening on"), 1)

    @inlineCallbacks
    def test_badFileChangesNothingAndLogsEveryProblem(self) -> Any:
        head = HEAD.format(defaults="")
        good = head + server("keep", self.echo)
        write(self.config, good)
        process = spawn_balancer(self, self.config)
        keep = yield process.listening_port("keep")
        api = yield process.listening_port("api")
        write(self.config, head + server("keep", self.echo, extra='colour = "red"\nbalance = "fastest"')
              + server("other", self.echo))
        before = self.sighup(process)
        yield process.wait_for(rb"reload: \S+ not applied \(2 problems\): nothing changed")
        text = process.output[before:].decode()
        self.assertIn("servers.keep.colour: unknown key", text)
        self.assertIn("servers.keep.balance: ", text)
        self.assertIn("fastest", text)
        self.assertNotIn("other: listening", text)
        answer = yield exchange(keep, b"still here")
        self.assertEqual(answer, b"still here")

        code, body = yield self.call(api, "POST", "/v1/balancer/reload")
        self.assertEqual(code, 422, body)
        details = [error["detail"] for error in body["errors"]]
        self.assertEqual(len(details), 2, details)
        self.assertTrue(any("servers.keep.colour" in d for d in details), details)

        write(self.config, good + server("other", self.echo))
        code, body = yield self.call(api, "POST", "/v1/balancer/reload")
        self.assertEqual(code, 200, body)
        self.assertEqual(body["meta"]["summary"], "reload: servers added other")
        self.assertEqual(body["meta"]["added"], ["other"])
        other = yield process.listening_port("other")
        answer = yield exchange(other, b"new")
        self.assertEqual(answer, b"new")
        code, body = yield self.call(api, "POST", "/v1/balancer/reload")
        self.assertEqual((code, body["meta"]["summary"]), (200, "reload: no change"))

    @inlineCallbacks
    def test_runtimeChangesStayOnTopOfTheReloadedFile(self) -> Any:
        head = HEAD.format(defaults="")
        write(self.config, head + server("keep", self.echo) + server("dropped", self.echo))
        process = spawn_balancer(self, self.config)
        api = yield process.listening_port("api")
        yield process.listening_port("dropped")
        response = yield treq.delete(f"http://127.0.0.1:{api}/servers/dropped", persistent=False)
        self.assertEqual(response.code, 200)
        definition = {"bind": "127.0.0.1:0", "discovery": {"kind": "static", "static_list": [f"127.0.0.1:{self.echo}"]}}
        response = yield treq.post(f"http://127.0.0.1:{api}/servers/posted", json=definition, persistent=False)
        self.assertEqual(response.code, 200)
        write(self.config, head + server("keep", self.echo, extra='balance = "leastconn"')
              + server("dropped", self.echo))
        code, body = yield self.call(api, "POST", "/v1/balancer/reload")
        self.assertEqual((code, body["meta"]["summary"]), (200, "reload: servers changed keep"), body)
        code, names = yield self.call(api, "GET", "/servers")
        self.assertEqual(sorted(names), ["keep", "posted"])

    @inlineCallbacks
    def test_rebindRefusesNoClientAndTheSameAddressKeepsItsSocket(self) -> Any:
        authority = Authority()
        cert, key = attrs.astuple(authority.issue(self.directory, "secure"))
        renewed = os.path.join(self.directory, "renewed")
        os.makedirs(renewed)
        cert2, key2 = attrs.astuple(authority.issue(renewed, "secure"))
        first, second = (Certificate.loadPEM(read(path)).dump() for path in (cert, cert2))
        trust = Certificate.loadPEM(read(authority.write(self.directory)))
        tls = f'protocol = "tls"\n[servers.secure.tls]\ncert_path = "{cert}"\nkey_path = "{key}"'
        head = HEAD.format(defaults="")
        write(self.config, head + server("moving", self.echo) + server("steady", self.echo)
              + server("secure", self.echo, extra=tls))
        process = spawn_balancer(self, self.config)
        old = yield process.listening_port("moving")
        steady = yield process.listening_port("steady")
        secure = yield process.listening_port("secure")
        yield process.seen
        new = free_port()
        reloaded: list[bool] = []
        seen: list[bytes] = []

        @inlineCallbacks
        def moving_loop() -> Any:
            port, moved, after = old, False, 0
            while after < AFTER_RELOAD:
                try:
                    answer = yield exchange(port, b"ping")
                except ConnectionRefusedError:
                    self.assertFalse(moved, "refused on the new address")
                    port, moved = new, True
                    continue
                self.assertEqual(answer, b"ping", f"port {port}")
                after += bool(reloaded and moved)
            return moved

        @inlineCallbacks
        def steady_loop() -> Any:
            after = 0
            while after < AFTER_RELOAD:
                answer = yield exchange(steady, b"ping")
                self.assertEqual(answer, b"ping")
                after += bool(reloaded)

        @inlineCallbacks
        def secure_loop() -> Any:
            after = 0
            while after < AFTER_RELOAD:
                talk = Conversation(limit=1)
                endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", secure, optionsForClientTLS("localhost", trust))
                yield connectProtocol(endpoint, talk)
                rounds, reason = yield talk.ended
                self.assertEqual(rounds, 1, reason)
                seen.append(talk.certificate)
                after += bool(reloaded)

        loops = [*(moving_loop() for _ in range(PARALLEL)), *(steady_loop() for _ in range(PARALLEL)), secure_loop()]
        yield deferLater(reactor, 0.2, lambda: None)
        for source, target in ((cert2, cert), (key2, key)):
            with open(target, "wb") as f:
                f.write(read(source))
        write(self.config, head + server("moving", self.echo, bind=f"127.0.0.1:{new}")
              + server("steady", self.echo, extra='balance = "leastconn"') + server("secure", self.echo, extra=tls))
        line = yield reload_line(process, self.sighup(process))
        reloaded.append(True)
        self.assertEqual(line, f"reload: servers changed moving (listener rebound to 127.0.0.1:{new}), steady, "
                               "secure (files read again)")
        results = yield gatherResults(loops, consumeErrors=True)
        self.assertEqual(results[:PARALLEL], [True] * PARALLEL)
        self.assertEqual((seen[0], seen[-1]), (first, second))
        self.assertEqual(process.output.count(b"steady: listening on"), 1)
        self.assertEqual(process.output.count(b"secure: listening on"), 1)
        self.assertIn(b"secure: certificate and key files read again", process.output)

    @inlineCallbacks
    def test_theOtherWorkerGetsTheChange(self) -> Any:
        head = HEAD.format(defaults="workers = 2")
        write(self.config, head + server("tuned", self.echo) + server("gone", self.echo))
        process = spawn_balancer(self, self.config)
        yield process.wait_for(rb"worker 1 \(pid \d+\) serving")
        write(self.config, head + server("tuned", self.echo, extra='balance = "leastconn"') + server("added", self.echo))
        line = yield reload_line(process, self.sighup(process))
        self.assertEqual(line, "reload: servers added added; removed gone; changed tuned")
        match = yield process.wait_for(rb"\[worker 1\] added: listening on 127\.0\.0\.1:(\d+)")
        yield process.wait_for(rb"\[worker 1\] tuned: reconfigured")
        yield process.wait_for(rb"\[worker 1\] gone: stopped listening")
        self.assertEqual(int(match.group(1)), (yield process.listening_port("added")))
        self.assertNotIn(b"worker 1 ended", process.output)
