"""
twistd without C{-n}: every start failure (a taken port, a bad
certificate, a bad state file) ends the daemon's parent with status 1 and
the message, leaving no pidfile; a good start leaves a running daemon whose
pid is in the pidfile.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Generator

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.support.clients import exchange
from tests.support.paths import ROOT, scratch_directory
from tests.support.ports import free_port
from tests.support.processes import source_env, twistd_path
from tests.support.waiting import until


class Finished(ProcessProtocol):
    """Collects a process's stdout and stderr; L{done} fires with (stdout, stderr, exit code) once both are closed and it has exited."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.done: Deferred[tuple[bytes, bytes, int | None]] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.done.callback((self.out, self.err, getattr(reason.value, "exitCode", None)))


def run_daemon(directory: str, *args: str, seconds: float = 30) -> Deferred[tuple[bytes, bytes, int | None]]:
    """
    Run C{twistd --pidfile=DIR/twistd.pid --logfile=DIR/twistd.log balancer ARGS}
    (a daemon) from C{ROOT}; fires with (stdout, stderr, exit code) of the
    command, which is twistd's daemon parent.  If it has not ended after
    C{seconds} (the hang this module is about), it is killed and the test fails.
    """
    protocol = Finished()
    process = reactor.spawnProcess(
        protocol,
        twistd_path(),
        [twistd_path(), f"--pidfile={directory}/twistd.pid", f"--logfile={directory}/twistd.log", "balancer", *args],
        env=source_env(),
        path=ROOT,
    )

    def hung(failure: Failure) -> Failure:
        if process.pid is not None:
            os.kill(process.pid, signal.SIGKILL)
        return failure

    return protocol.done.addTimeout(seconds, reactor, onTimeoutCancel=lambda result, timeout: hung(Failure(
        AssertionError(f"twistd did not end within {timeout} s: {protocol.out!r} {protocol.err!r}"))))


def alive(pid: int) -> bool:
    """Whether a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def server_config(bind: str, extra: str = "") -> str:
    """A configuration with one server on C{bind}, and C{extra} TOML before it."""
    return f"""{extra}
[servers.web]
bind = "{bind}"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:1"]
"""


class DaemonStartTests(TestCase):
    """twistd without C{-n}, as an init script runs it."""

    timeout = 90

    def write(self, directory: str, name: str, text: str) -> str:
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    @inlineCallbacks
    def test_takenPortExits1WithTheMessageAndNoPidfile(self) -> None:
        taken = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port
        directory = scratch_directory(self)
        config = self.write(directory, "balancer.toml", server_config(f"127.0.0.1:{port}"))
        out, err, code = yield run_daemon(directory, "--config", config)
        self.assertEqual(code, 1, (out, err))
        self.assertIn(f'balancer: server "web": cannot listen on 127.0.0.1:{port}: '.encode(), err)
        self.assertFalse(os.path.exists(os.path.join(directory, "twistd.pid")))
        with open(os.path.join(directory, "twistd.log"), encoding="utf-8") as f:
            self.assertIn(f'start failed: server "web": cannot listen on 127.0.0.1:{port}', f.read())

    @inlineCallbacks
    def test_badCertificateExits1WithTheMessageAndNoPidfile(self) -> None:
        directory = scratch_directory(self)
        cert = self.write(directory, "cert.pem", "not a certificate\n")
        key = self.write(directory, "key.pem", "not a key\n")
        config = self.write(directory, "balancer.toml", f"""
[servers.secure]
bind = "127.0.0.1:0"
protocol = "tls"
[servers.secure.tls]
cert_path = "{cert}"
key_path = "{key}"
[servers.secure.discovery]
kind = "static"
static_list = ["127.0.0.1:1"]
""")
        out, err, code = yield run_daemon(directory, "--config", config)
        self.assertEqual(code, 1, (out, err))
        self.assertIn(f"{config}: servers.secure.tls.cert_path: ".encode(), err)
        self.assertNotIn(b"Traceback", err)
        self.assertFalse(os.path.exists(os.path.join(directory, "twistd.pid")))

    @inlineCallbacks
    def test_badStateFileExits1NamingFileAndPlace(self) -> None:
        directory = scratch_directory(self)
        state = self.write(directory, "state.toml", '[servers.x]\nbind = "unterminated\n')
        config = self.write(directory, "balancer.toml",
                            server_config("127.0.0.1:0", f'[state]\npath = "{state}"\n'))
        out, err, code = yield run_daemon(directory, "--config", config)
        self.assertEqual(code, 1, (out, err))
        self.assertEqual(err.decode().strip().splitlines(),
                         [f"{state}: invalid TOML in the state file: Illegal character '\\n' (at line 2, column 21)"])
        self.assertFalse(os.path.exists(os.path.join(directory, "twistd.pid")))

    @inlineCallbacks
    def test_goodStartLeavesARunningDaemonInThePidfile(self) -> None:
        """
    The parent exits 0 with nothing to say; the daemon it left serves,
    logs to twistd's --logfile (rotated on SIGUSR1, as twistd does), and
    stops on SIGTERM to the pid in the pidfile.
    """
        directory = scratch_directory(self)
        backend = free_port()  # --demo serves the static_list addresses, so the port is chosen before the start
        config = self.write(directory, "balancer.toml", f"""
[servers.demo]
bind = "127.0.0.1:0"
[servers.demo.discovery]
kind = "static"
static_list = ["127.0.0.1:{backend}"]
""")
        out, err, code = yield run_daemon(directory, "--config", config, "--demo")
        pidfile = os.path.join(directory, "twistd.pid")
        with open(pidfile, encoding="ascii") as f:
            pid = int(f.read())
        self.addCleanup(stop_daemon, pid)
        self.assertEqual((out, err, code), (b"", b"", 0))
        log_path = os.path.join(directory, "twistd.log")
        with open(log_path, encoding="utf-8") as f:
            listening = re.search(r"demo: listening on 127\.0\.0\.1:(\d+)", f.read())
        assert listening is not None, "the daemon's log does not say where it listens"
        answer = yield exchange(int(listening.group(1)), b"GET / HTTP/1.0\r\n\r\n", half_close=False)
        self.assertIn(f"hello from demo-1 (127.0.0.1:{backend})".encode(), answer)
        os.kill(pid, signal.SIGUSR1)
        yield until(lambda: os.path.exists(log_path + ".1"), 30, "twistd's --logfile rotated on SIGUSR1", step=0.1)
        yield stop_daemon(pid)
        self.assertFalse(os.path.exists(pidfile))


@inlineCallbacks
def stop_daemon(pid: int, seconds: float = 30) -> Generator[Deferred[None], None, None]:
    """Send SIGTERM to C{pid} (a daemon this test started) if it still runs, and wait up to C{seconds} for it to end."""
    if not alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    try:
        yield until(lambda: not alive(pid), seconds, f"daemon {pid} to stop", step=0.1)
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        raise
