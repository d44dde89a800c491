"""
C{kind = "exec"}: run a command; each line it prints is a backend.

C{exec_command} is the argv (no shell); a program without a C{/} is looked up
on C{PATH}.  The child inherits the balancer's environment and working
directory.  Each non-blank line of its standard output is a C{static_list}
line (C{"host:port [weight=N] [priority=N] [max_connections=N] [sni=NAME]"}).
A non-zero exit, a death by signal or a line that does not parse fails the
fetch; cancelling the fetch (the runner's timeout) kills the child with
SIGKILL.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.procutils import which
from zope.interface import implementer

from balancer.config.addresses import AddressError, BackendSpec, parse_backend_line
from balancer.config.schema import DiscoveryConfig
from balancer.discovery.base import DiscoveryError, IDiscovery

log = Logger()

_SHOWN_STDERR = 200


class _Collector(ProcessProtocol):
    """
    Collects a child's output; fires C{done} with its stdout when it exits
    with 0, or fails it with the exit code or signal and the start of stderr.
    """

    transport: IProcessTransport  # set by spawnProcess, before C{done} can be cancelled

    def __init__(self, command: str, done: Deferred[bytes]) -> None:
        self._command = command
        self._done = done
        self._out: list[bytes] = []
        self._err: list[bytes] = []

    def outReceived(self, data: bytes) -> None:
        self._out.append(data)

    def errReceived(self, data: bytes) -> None:
        self._err.append(data)

    def kill(self) -> None:
        """Kill the child (SIGKILL, only this process) and close its pipes."""
        pid = self.transport.pid
        log.info("discovery command {command} (pid {pid}) cancelled: killing it", command=self._command, pid=pid)
        try:
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
        self.transport.loseConnection()

    def processEnded(self, reason: Failure) -> None:
        if self._done.called:
            return
        code = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        if code == 0:
            self._done.callback(b"".join(self._out))
            return
        how = f"was killed by signal {signal}" if signal else f"exited with code {code}"
        stderr = b"".join(self._err)[:_SHOWN_STDERR].decode("utf-8", "replace").strip()
        self._done.errback(DiscoveryError(f"{self._command} {how}" + (f": {stderr}" if stderr else "")))


def parse_lines(output: bytes) -> list[BackendSpec]:
    """
    The backends in a command's output, one C{static_list} line each.

    @raise DiscoveryError: naming the first line that does not parse.
    """
    try:
        text = output.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DiscoveryError(f"the output is not UTF-8: {e}") from None
    backends = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                backends.append(parse_backend_line(line))
            except AddressError as e:
                raise DiscoveryError(f"line {number}: {e}") from None
    return backends


@implementer(IDiscovery)
class ExecDiscovery:
    """Runs C{exec_command} once per fetch and parses what it prints."""

    DEFAULT_TIMEOUT = 3.0

    def __init__(self, config: DiscoveryConfig, reactor: IReactorProcess) -> None:
        self._argv = list(config.exec_command)
        self._reactor = reactor

    def _executable(self) -> str:
        program = self._argv[0]
        if "/" in program:
            return program
        found = which(program)
        if not found:
            raise DiscoveryError(f'exec_command: "{program}" is not an executable on PATH')
        return found[0]

    def fetch(self) -> Deferred[list[BackendSpec]]:
        """Run the command; fires with its backends when it exits."""
        done: Deferred[bytes] = Deferred(lambda d: collector.kill())
        collector = _Collector(self._argv[0], done)
        try:
            self._reactor.spawnProcess(collector, self._executable(), self._argv, env=os.environ)
        except DiscoveryError as e:
            done.errback(e)
        except OSError as e:
            done.errback(DiscoveryError(f"{self._argv[0]}: cannot start: {e.strerror}"))
        return done.addCallback(parse_lines)
