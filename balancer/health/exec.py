"""
C{kind = "exec"}: run C{exec_command} with the backend's host and port as
its last two arguments, and read its verdict from what it prints.
"""

from __future__ import annotations

import shlex

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from balancer.config.schema import HealthcheckConfig
from balancer.health.base import HealthCheckError, IHealthCheck

log = Logger()


class _Run(ProcessProtocol):
    """
    One run of the command: collects its standard output; L{ended} fires with
    (exit code, output), the exit code C{None} when a signal ended it.
    Cancelling L{ended} kills the process (SIGKILL, this process only).
    """

    transport: IProcessTransport  # set by spawnProcess, before L{ended} is handed out

    def __init__(self) -> None:
        self._output: list[bytes] = []
        self.ended: Deferred[tuple[int | None, bytes]] = Deferred(lambda _: self._kill())

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._output.append(data)

    def processEnded(self, reason: Failure) -> None:
        status = reason.value
        code = status.exitCode if isinstance(status, (ProcessDone, ProcessTerminated)) else None
        if not self.ended.called:
            self.ended.callback((code, b"".join(self._output)))

    def _kill(self) -> None:
        try:
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass


@implementer(IHealthCheck)
class ExecCheck:
    """
    Run C{exec_command} (split like a shell would, but run without one, with
    the balancer's environment), adding the host and port as arguments.

    Its standard output, stripped of surrounding whitespace, equal to
    C{exec_expected_positive_output} is a pass; equal to
    C{exec_expected_negative_output}, a non-zero exit, or a command that
    cannot be started is a failure; any other output is a
    L{HealthCheckError}.

    @raise ValueError: naming C{exec_command} when it does not split into a
        command (unbalanced quotes, nothing but spaces).
    """

    def __init__(self, config: HealthcheckConfig, reactor: IReactorProcess) -> None:
        self._reactor = reactor
        try:
            self._argv = shlex.split(config.exec_command)
        except ValueError as e:
            raise ValueError(f'exec_command: {e} in "{config.exec_command}"') from None
        if not self._argv:
            raise ValueError(f'exec_command: no command in "{config.exec_command}"')
        self._positive = config.exec_expected_positive_output
        self._negative = config.exec_expected_negative_output

    def check(self, host: str, port: int) -> Deferred[bool]:
        """See L{IHealthCheck.check}."""
        run = _Run()
        try:
            self._reactor.spawnProcess(run, self._argv[0], [*self._argv, host, str(port)], env=None)
        except OSError as e:
            log.debug("check of {host}:{port} failed: {error}", host=host, port=port, error=e)
            return succeed(False)
        return run.ended.addCallback(self._verdict, host, port)

    def _verdict(self, ended: tuple[int | None, bytes], host: str, port: int) -> bool:
        code, raw = ended
        output = raw.decode("utf-8", "replace").strip()
        if code != 0:
            log.debug("check of {host}:{port} failed: exit code {code}", host=host, port=port, code=code)
            return False
        if output == self._positive:
            return True
        if output == self._negative:
            return False
        raise HealthCheckError(
            f'exec_command printed "{output}", neither "{self._positive}" (pass) nor "{self._negative}" (failure)'
        )
