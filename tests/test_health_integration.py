"""
The health checks against real peers on 127.0.0.1 (ports chosen by the
kernel) and real processes, on the real reactor; and L{HealthMonitor}
end to end.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
from typing import Any, Generator

from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.ssl import KeyPair
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from balancer.backends import Backend, Pool
from balancer.config.addresses import BackendSpec
from balancer.config.schema import HealthcheckConfig
from balancer.health import HealthCheckError, HealthMonitor, IHealthCheck, make_check
from tests.support.ports import refusing_port


HOST = "127.0.0.1"


class ServedConnection(Protocol):
    """A test server's connection; its factory's C{closings} fire as its connections close."""

    def connectionMade(self) -> None:
        self.closed: Deferred[None] = Deferred()
        self.factory.closings.append(self.closed)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(None)


class Hangup(ServedConnection):
    """Closes each connection at once."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.loseConnection()


class Banner(ServedConnection):
    """Writes the factory's C{banner} and closes."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.write(self.factory.banner)
        self.transport.loseConnection()


class Reply(ServedConnection):
    """Answers what it receives with C{got } and those bytes, and closes."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"got " + data)
        self.transport.loseConnection()


class UdpReply(DatagramProtocol):
    """Answers each datagram with C{got } and its bytes."""

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.transport.write(b"got " + data, addr)


class Spawns:
    """
    The real reactor, noting how each process it spawns ends, so tests can
    wait for every child to be gone (also one killed after its check gave up).
    """

    def __init__(self) -> None:
        self.ends: list[Deferred[Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)

    def spawnProcess(self, protocol: Any, *args: Any, **kwargs: Any) -> Any:
        """
        Spawn on the real reactor; once spawned (ends are reported only by
        the reactor loop, so none is missed), the next entry of C{ends} fires
        with how the process ended.
        """
        process = reactor.spawnProcess(protocol, *args, **kwargs)  # type: ignore[attr-defined]
        ended: Deferred[Any] = Deferred()
        self.ends.append(ended)
        processEnded = protocol.processEnded

        def noted(reason: Failure) -> None:
            processEnded(reason)
            ended.callback(reason.value)

        protocol.processEnded = noted
        return process


class PeersTestCase(TestCase):
    """Starts peers that are stopped, and whose connections have closed, before the test ends."""

    timeout = 10

    @inlineCallbacks
    def serve(self, protocol: type[ServedConnection], *, tls: bool = False, **attributes: Any) -> Generator[Any, Any, int]:
        """Serve C{protocol} on 127.0.0.1 (over TLS with a fresh self-signed certificate); the port."""
        factory = Factory.forProtocol(protocol)
        factory.closings = []  # type: ignore[attr-defined]
        for name, value in attributes.items():
            setattr(factory, name, value)
        if tls:
            certificate = KeyPair.generate(size=2048).selfSignedCert(1, commonName="backend.test")
            port = reactor.listenSSL(0, factory, certificate.options(), interface=HOST)  # type: ignore[attr-defined]
        else:
            port = yield TCP4ServerEndpoint(reactor, 0, interface=HOST).listen(factory)
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: gatherResults(factory.closings))  # type: ignore[attr-defined]
        return port.getHost().port

    def serve_udp(self) -> int:
        """A UDP peer on 127.0.0.1 answering C{got } and what it receives; its port."""
        port = reactor.listenUDP(0, UdpReply(), interface=HOST)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def script(self, body: str) -> str:
        """An C{exec_command} running the shell script C{body}, written to the test's directory."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(body + "\n")
        return f"sh {shlex.quote(path)}"

    def check(self, **config: Any) -> IHealthCheck:
        """The check of C{config} on the real reactor."""
        check = make_check(HealthcheckConfig(interval=5.0, **config), reactor)
        assert check is not None
        return check


def closed_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class PingTests(PeersTestCase):
    """C{kind = "ping"} on real ports."""

    @inlineCallbacks
    def test_listeningPortPasses(self) -> Generator[Any, Any, None]:
        """A port that accepts connections passes."""
        port = yield self.serve(Hangup)
        result = yield self.check(kind="ping").check(HOST, port)
        self.assertIs(result, True)

    @inlineCallbacks
    def test_closedPortFails(self) -> Generator[Any, Any, None]:
        """A port nothing listens on fails."""
        result = yield self.check(kind="ping").check(HOST, refusing_port(self))
        self.assertIs(result, False)


class ProbeTests(PeersTestCase):
    """C{kind = "probe"} on real TCP, TLS and UDP peers."""

    BANNER = b"SSH-2.0-OpenSSH_9.6\r\n"

    @inlineCallbacks
    def probe(self, port: int, **config: Any) -> Generator[Any, Any, bool]:
        """The result of one probe of C{config} on C{port}."""
        result = yield self.check(kind="probe", **config).check(HOST, port)
        return result

    @inlineCallbacks
    def test_bannerStartsWith(self) -> Generator[Any, Any, None]:
        """A banner that starts with C{probe_recv} passes; another fails."""
        port = yield self.serve(Banner, banner=self.BANNER)
        results = []
        for expected in ("SSH-2.0-", "SSH-1.99-"):
            results.append((yield self.probe(port, probe_recv=expected)))
        self.assertEqual(results, [True, False])

    @inlineCallbacks
    def test_bannerRegexp(self) -> Generator[Any, Any, None]:
        """With C{probe_strategy = "regexp"}, the pattern is searched in the banner."""
        port = yield self.serve(Banner, banner=self.BANNER)
        results = []
        for pattern in (r"OpenSSH_\d+\.\d+\r$", r"^OpenSSH"):
            results.append((yield self.probe(port, probe_recv=pattern, probe_strategy="regexp")))
        self.assertEqual(results, [True, False])

    @inlineCallbacks
    def test_recvLenLimitsWhatIsMatched(self) -> Generator[Any, Any, None]:
        """With C{probe_recv_len} the first that many bytes are matched, without it the whole answer."""
        port = yield self.serve(Banner, banner=b"OK 42 ready\n")
        results = []
        for recv_len in (2, 0):
            result = yield self.probe(port, probe_recv="^OK$", probe_strategy="regexp", probe_recv_len=recv_len)
            results.append(result)
        self.assertEqual(results, [True, False])

    @inlineCallbacks
    def test_sendAndRecvEscapes(self) -> Generator[Any, Any, None]:
        """C{probe_send} goes out with its escapes decoded, and C{probe_recv}'s are decoded to match the answer."""
        port = yield self.serve(Reply)
        result = yield self.probe(port, probe_send=r"PING\x21\r\n", probe_recv=r"got PING!\r\n")
        self.assertIs(result, True)

    @inlineCallbacks
    def test_closeWithoutAnswerFails(self) -> Generator[Any, Any, None]:
        """A backend that closes without answering fails."""
        port = yield self.serve(Hangup)
        result = yield self.probe(port, probe_send="PING", probe_recv="PONG")
        self.assertIs(result, False)

    @inlineCallbacks
    def test_closedPortFails(self) -> Generator[Any, Any, None]:
        """A TCP port nothing listens on fails."""
        result = yield self.probe(refusing_port(self), probe_recv="SSH")
        self.assertIs(result, False)

    @inlineCallbacks
    def test_tlsWithoutVerification(self) -> Generator[Any, Any, None]:
        """Over TLS, a self-signed certificate is accepted and the banner matched."""
        port = yield self.serve(Banner, tls=True, banner=self.BANNER)
        results = []
        for expected in ("SSH-2.0-", "HTTP"):
            results.append((yield self.probe(port, probe_protocol="tls", probe_recv=expected)))
        self.assertEqual(results, [True, False])

    @inlineCallbacks
    def test_udpAnswer(self) -> Generator[Any, Any, None]:
        """Over UDP, one datagram goes out and the first one back is matched."""
        port = self.serve_udp()
        results = []
        for expected in (r"got ping\n", "pong"):
            results.append((yield self.probe(port, probe_protocol="udp", probe_send=r"ping\n", probe_recv=expected)))
        self.assertEqual(results, [True, False])

    @inlineCallbacks
    def test_udpRefused(self) -> Generator[Any, Any, None]:
        """Over UDP, a port nothing listens on (refused by the host) fails."""
        result = yield self.probe(closed_udp_port(), probe_protocol="udp", probe_send="ping", probe_recv="got")
        self.assertIs(result, False)


class ExecTests(PeersTestCase):
    """C{kind = "exec"} running real scripts."""

    def setUp(self) -> None:
        self.spawns = Spawns()
        self.addCleanup(lambda: gatherResults(self.spawns.ends))

    def run_check(self, command: str, **config: Any) -> Deferred[bool]:
        """One check of C{127.0.0.1:8080} by C{command}, spawned through L{Spawns}."""
        check = make_check(HealthcheckConfig(kind="exec", interval=5.0, exec_command=command, **config), self.spawns)
        assert check is not None
        return check.check(HOST, 8080)

    @inlineCallbacks
    def test_outputs(self) -> Generator[Any, Any, None]:
        """The positive output passes and the negative one fails, surrounding whitespace ignored."""
        results = []
        for body in ("echo 1", "echo 0", "printf '  1\\n\\n'"):
            results.append((yield self.run_check(self.script(body))))
        self.assertEqual(results, [True, False, True])

    @inlineCallbacks
    def test_configuredOutputs(self) -> Generator[Any, Any, None]:
        """C{exec_expected_positive_output} and C{exec_expected_negative_output} replace 1 and 0."""
        results = []
        for body in ("echo up", "echo down"):
            command = self.script(body)
            results.append((yield self.run_check(command, exec_expected_positive_output="up",
                                                 exec_expected_negative_output="down")))
        self.assertEqual(results, [True, False])

    @inlineCallbacks
    def test_hostAndPortAppended(self) -> Generator[Any, Any, None]:
        """The command is split like a shell line, and the host and port come after its own arguments."""
        command = self.script('echo "$1|$2|$3"') + " 'first arg'"
        result = yield self.run_check(command, exec_expected_positive_output="first arg|127.0.0.1|8080")
        self.assertIs(result, True)

    def test_otherOutputIsAnError(self) -> Deferred[HealthCheckError]:
        """Output that is neither expected one is a L{HealthCheckError} that quotes it."""
        checking = self.assertFailure(self.run_check(self.script("echo maybe")), HealthCheckError)
        checking.addCallback(lambda error: self.assertIn('printed "maybe"', str(error)))
        return checking

    @inlineCallbacks
    def test_nonZeroExitFails(self) -> Generator[Any, Any, None]:
        """A non-zero exit fails, whatever the command printed."""
        result = yield self.run_check(self.script("echo 1; exit 3"))
        self.assertIs(result, False)

    @inlineCallbacks
    def test_missingCommandFails(self) -> Generator[Any, Any, None]:
        """A command that cannot be started fails (also when a shell would have found nothing to run)."""
        results = []
        for command in (shlex.quote(os.path.abspath(self.mktemp())), self.script("exec ./no-such-command")):
            results.append((yield self.run_check(command)))
        self.assertEqual(results, [False, False])

    @inlineCallbacks
    def test_timeoutKillsTheProcess(self) -> Generator[Any, Any, None]:
        """A check cancelled by its timeout kills the process it started with SIGKILL."""
        checking = self.run_check(self.script("exec sleep 30")).addTimeout(0.5, reactor)
        yield self.assertFailure(checking, TimeoutError)
        ended = yield self.spawns.ends[0]
        self.assertEqual(ended.signal, signal.SIGKILL)


class MonitorTests(PeersTestCase):
    """L{HealthMonitor} on the real reactor."""

    @inlineCallbacks
    def watch(self, spec: BackendSpec, live: bool, **config: Any) -> Generator[Any, Any, tuple[Backend, bool]]:
        """Monitor one backend until its first transition; the backend and its new status."""
        changed: Deferred[tuple[Backend, bool]] = Deferred()
        spawns = Spawns()
        monitor = HealthMonitor(
            Pool([spec], initially_live=live),
            HealthcheckConfig(**config),
            spawns,
            on_change=lambda backend, now: changed.callback((backend, now)),
        )
        monitor.start()
        try:
            change = yield changed
        finally:
            monitor.stop()
            yield gatherResults(spawns.ends)
        return change

    @inlineCallbacks
    def test_unhealthyBackendComesUp(self) -> Generator[Any, Any, None]:
        """A backend that starts unhealthy comes up after C{passes} successful pings."""
        port = yield self.serve(Hangup)
        backend, live = yield self.watch(BackendSpec(HOST, port), False, kind="ping", interval=0.1, passes=2)
        self.assertEqual((backend.key, live, backend.live), (f"{HOST}:{port}", True, True))

    @inlineCallbacks
    def test_execTimeoutTakesBackendDown(self) -> Generator[Any, Any, None]:
        """An exec check that outlives C{timeout} is killed and counted as a failure."""
        command = self.script("exec sleep 30")
        backend, live = yield self.watch(
            BackendSpec(HOST, 8080), True, kind="exec", exec_command=command, interval=1.0, timeout=0.2
        )
        self.assertEqual((live, backend.live), (False, False))
