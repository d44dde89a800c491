"""
The seam every health check kind implements: L{IHealthCheck}, and
L{HealthCheckError} for a result that is neither a pass nor a failure;
what the kinds share: L{stream_endpoint} and L{failed}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

log = Logger()


class HealthCheckError(Exception):
    """
    A check ran but gave no verdict (an C{exec} command printed something
    else than the expected outputs); the backend keeps its status and counts.
    """


class IHealthCheck(Interface):
    """Checks one backend once."""

    def check(host: str, port: int) -> Deferred[bool]:
        """
        Check the backend C{host:port} once, without blocking the reactor.

        @return: a L{Deferred} that fires with C{True} (pass) or C{False}
            (failure: refused, closed, wrong answer), or errbacks with
            L{HealthCheckError} (no verdict).  Cancelling it (the monitor does
            when C{check_timeout} runs out) stops the check and frees what it
            holds: connection, socket or process.
        """


def failed(reason: Failure, host: str, port: int) -> bool:
    """
    Turn a network failure of a check of C{host:port} into a failed check.

    Logged at debug level: the transition the failures lead to is what
    operators see.

    @return: C{False}
    """
    log.debug("check of {host}:{port} failed: {reason}", host=host, port=port, reason=reason.getErrorMessage())
    return False


def stream_endpoint(reactor: Any, host: str, port: int) -> IStreamClientEndpoint:
    """
    Where a check connects to the backend C{host:port} over TCP: an address
    is connected to directly, a name through L{HostnameEndpoint} (its IPv4
    and IPv6 addresses, in turn).

    L{HostnameEndpoint} tells a refused connection only when its next
    attempt is due (0.3 s later, even with one address): for an address,
    a refused check would last that long, or time out under a shorter
    C{timeout}, instead of failing at once.
    """
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port)
    return HostnameEndpoint(reactor, host, port)
