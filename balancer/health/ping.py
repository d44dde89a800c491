"""C{kind = "ping"}: a backend passes when it accepts a TCP connection."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from balancer.config.schema import HealthcheckConfig
from balancer.health.base import IHealthCheck, failed, stream_endpoint


class _Hangup(Protocol):
    """Closes the connection as soon as it is made; L{closed} fires with C{True} once it is."""

    transport: ITCPTransport  # set on connection, before L{closed} is handed out

    def __init__(self) -> None:
        self.closed: Deferred[bool] = Deferred(lambda _: self.transport.abortConnection())

    def connectionMade(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.closed.called:
            self.closed.callback(True)


@implementer(IHealthCheck)
class PingCheck:
    """
    Connect to the backend over TCP and close at once: connected is a pass
    (the check ends once the connection is closed), refused or unreachable
    is a failure.  Host names resolve to IPv4 and IPv6 addresses.
    """

    def __init__(self, config: HealthcheckConfig, reactor: Any) -> None:
        self._reactor = reactor

    def check(self, host: str, port: int) -> Deferred[bool]:
        """See L{IHealthCheck.check}."""
        endpoint = stream_endpoint(self._reactor, host, port)
        hangup = _Hangup()
        connecting = connectProtocol(endpoint, hangup).addCallback(lambda _: hangup.closed)
        return connecting.addErrback(failed, host, port)
