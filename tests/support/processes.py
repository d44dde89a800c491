"""Running real peer processes from tests: twistd, with bounded waits."""

from __future__ import annotations

import os
import re
import signal
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase

from tests.support.paths import ROOT


def twistd_path() -> str:
    """The C{twistd} script installed beside the running Python."""
    return os.path.join(os.path.dirname(sys.executable), "twistd")


def source_env() -> dict[str, str]:
    """The environment for a child that runs this checkout's code (not an older installed copy)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return env


def run_twistd(*args: str, cwd: str, installed_only: bool = False) -> Deferred[tuple[bytes, bytes, int]]:
    """
    Run C{twistd ARGS} to completion; fires with (stdout, stderr, exit code).

    @param installed_only: run only what C{pip install} put in the environment,
        so the test shows that the installed package works on its own.
    """
    env = dict(os.environ) if installed_only else source_env()
    return getProcessOutputAndValue(twistd_path(), args, env=env, path=cwd, reactor=reactor)


class WatchedProcess(ProcessProtocol):
    """
    A child process whose output is collected; L{seen} fires when a line
    containing a given text appears, L{wait_for} when a pattern does, and
    L{ended} when the process exits.
    """

    def __init__(self, marker: bytes) -> None:
        self.output = b""
        self._marker = marker
        self._waiting: list[tuple[re.Pattern[bytes], Deferred[re.Match[bytes]]]] = []
        self.seen: Deferred[None] = Deferred()
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.seen.called and self._marker in self.output:
            self.seen.callback(None)
        for entry in list(self._waiting):
            pattern, waiting = entry
            match = pattern.search(self.output)
            if match is not None:
                self._waiting.remove(entry)
                waiting.callback(match)

    errReceived = outReceived

    def processEnded(self, reason: object) -> None:
        value = getattr(reason, "value", None)
        if not self.seen.called:
            self.seen.errback(RuntimeError(f"process ended before {self._marker!r}:\n{self.output.decode()}"))
        waiting, self._waiting = self._waiting, []
        for pattern, d in waiting:
            d.errback(RuntimeError(f"process ended before {pattern.pattern!r}:\n{self.output.decode()}"))
        self.ended.callback((getattr(value, "exitCode", None), getattr(value, "signal", None)))

    def wait_for(self, pattern: bytes, seconds: float = 30) -> Deferred[re.Match[bytes]]:
        """
        Fires with the first match of C{pattern} in the output, now or once
        it appears; fails if the process ends first, or after C{seconds}.
        """
        compiled = re.compile(pattern)
        match = compiled.search(self.output)
        if match is not None:
            return succeed(match)
        if self.ended.called:
            return fail(RuntimeError(f"process ended before {pattern!r}:\n{self.output.decode()}"))
        waiting: Deferred[re.Match[bytes]] = Deferred()
        self._waiting.append((compiled, waiting))
        return waiting.addTimeout(seconds, reactor)

    def listening_port(self, name: str) -> Deferred[int]:
        """Fires with the port that C{name} (a server, C{api}) logs it listens on, on 127.0.0.1."""
        found = self.wait_for(rb"\b" + re.escape(name.encode()) + rb": listening on 127\.0\.0\.1:(\d+)")
        return found.addCallback(lambda match: int(match.group(1)))

    def stop(self) -> Deferred[tuple[int | None, int | None]]:
        """
        Send SIGTERM to the process (we started it) and wait for it to exit.

        Fires with (exit code, signal): twistd ends a graceful SIGTERM shutdown
        by re-raising the signal, so a clean stop is (None, SIGTERM).
        """
        pid = self.transport.pid if self.transport is not None else None
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
        return self.ended


def spawn_balancer(test: SynchronousTestCase, config_path: str, *, marker: bytes = b"api: listening on",
                   descriptors: int | None = None) -> WatchedProcess:
    """
    Start C{twistd -n --pidfile= balancer --config CONFIG_PATH} on this
    checkout's code; the returned protocol watches for C{marker} (by default,
    the API listening).  Stopped (SIGTERM) when C{test} ends.

    @param descriptors: run it under C{ulimit -n} of this many.
    """
    argv = [twistd_path(), "-n", "--pidfile=", "balancer", "--config", config_path]
    if descriptors is not None:
        argv = ["/bin/sh", "-c", f'ulimit -n {descriptors} && exec "$0" "$@"', *argv]
    process = WatchedProcess(marker)
    reactor.spawnProcess(process, argv[0], argv, env=source_env(), path=ROOT)
    test.addCleanup(process.stop)
    return process


def spawn_twistd(marker: bytes, *args: str, cwd: str) -> WatchedProcess:
    """Start C{twistd ARGS}; the returned protocol watches for C{marker}."""
    protocol = WatchedProcess(marker)
    reactor.spawnProcess(protocol, twistd_path(), [twistd_path(), *args], env=source_env(), path=cwd)
    return protocol
