"""
C{kind = "probe"}: send C{probe_send} to the backend and match its answer
against C{probe_recv}, over TCP, TLS (not verified) or UDP.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint, ITCPTransport, IUDPTransport
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from balancer.config.schema import HealthcheckConfig
from balancer.health.base import IHealthCheck, failed, stream_endpoint
from balancer.health.escapes import decode_escapes

log = Logger()

Matcher = Callable[[bytes], bool]


def matcher(strategy: str, expected: str) -> Matcher:
    """
    The test an answer must pass.

    @param strategy: C{"starts_with"}: the answer begins with C{expected},
        its escapes decoded (L{decode_escapes}); C{"regexp"}: the Python
        regular expression C{expected} is found (C{re.search}) in the answer
        decoded as UTF-8 (undecodable bytes replaced).
    """
    if strategy == "regexp":
        pattern = re.compile(expected)
        return lambda answer: pattern.search(answer.decode("utf-8", "replace")) is not None
    prefix = decode_escapes(expected)
    return lambda answer: answer.startswith(prefix)


class _StreamExchange(Protocol):
    """
    Sends the probe once connected and closes the connection after the first
    C{recv_len} bytes (with C{recv_len} 0: the first chunk); L{answer} fires
    with them once closed, or with what came before the backend closed.
    """

    transport: ITCPTransport  # set on connection (TCP, or TLS over it), before L{answer} is handed out

    def __init__(self, send: bytes, recv_len: int) -> None:
        self._send = send
        self._recv_len = recv_len
        self._received = b""
        self._closing = False
        self.answer: Deferred[bytes] = Deferred(lambda _: self.transport.abortConnection())

    def connectionMade(self) -> None:
        if self._send:
            self.transport.write(self._send)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._received += data
        if len(self._received) >= max(self._recv_len, 1):
            self._closing = True
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.answer.called:
            self.answer.callback(self._received[: self._recv_len or None])


class _DatagramExchange(DatagramProtocol):
    """
    Sends the probe as one datagram to C{address:port}; L{answer} fires with
    the first datagram back (its first C{recv_len} bytes when C{recv_len} is
    above 0), or fails when the backend's host refuses the datagram; it
    fires once the socket is closed.
    """

    transport: IUDPTransport  # set by listenUDP, before L{answer} is handed out

    def __init__(self, address: str, port: int, send: bytes, recv_len: int) -> None:
        self._address = address
        self._port = port
        self._send = send
        self._recv_len = recv_len
        self._closing = False
        self.answer: Deferred[bytes] = Deferred(lambda _: self._close(Failure(CancelledError())))

    def startProtocol(self) -> None:
        self.transport.connect(self._address, self._port)
        self.transport.write(self._send, None)

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self._close(data[: self._recv_len or None])

    def connectionRefused(self) -> None:
        """The backend's host refused the datagram, as the select and poll reactors report it."""
        self._close(Failure(ConnectionRefusedError()))

    def stopProtocol(self) -> None:
        """
        The socket closed: ours, after the answer, or before any answer the
        reactor's, which is how the epoll reactor reports a refused datagram.
        """
        if not self._closing:
            self._settle(Failure(ConnectionRefusedError()))

    def _close(self, result: bytes | Failure) -> None:
        if self._closing:
            return
        self._closing = True
        maybeDeferred(self.transport.stopListening).addCallback(lambda _: self._settle(result))

    def _settle(self, result: bytes | Failure) -> None:
        if self.answer.called:
            return
        if isinstance(result, Failure):
            self.answer.errback(result)
        else:
            self.answer.callback(result)


@implementer(IHealthCheck)
class ProbeCheck:
    """
    Send C{probe_send} and match the answer with C{probe_strategy}: a match
    is a pass; no match, no connection or a refused datagram is a failure.
    """

    def __init__(self, config: HealthcheckConfig, reactor: Any) -> None:
        self._reactor = reactor
        self._protocol = config.probe_protocol
        self._send = decode_escapes(config.probe_send)
        self._recv_len = config.probe_recv_len
        self._matches = matcher(config.probe_strategy, config.probe_recv)

    def check(self, host: str, port: int) -> Deferred[bool]:
        """See L{IHealthCheck.check}."""
        answer = self._datagram(host, port) if self._protocol == "udp" else self._stream(host, port)
        return answer.addCallbacks(self._verdict, failed, callbackArgs=(host, port), errbackArgs=(host, port))

    def _verdict(self, answer: bytes, host: str, port: int) -> bool:
        if self._matches(answer):
            return True
        log.debug("probe of {host}:{port} got no match: {answer!r}", host=host, port=port, answer=answer)
        return False

    def _stream(self, host: str, port: int) -> Deferred[bytes]:
        endpoint: IStreamClientEndpoint = stream_endpoint(self._reactor, host, port)
        if self._protocol == "tls":
            endpoint = wrapClientTLS(CertificateOptions(), endpoint)
        exchange = _StreamExchange(self._send, self._recv_len)
        return connectProtocol(endpoint, exchange).addCallback(lambda _: exchange.answer)

    def _datagram(self, host: str, port: int) -> Deferred[bytes]:
        literal = isIPAddress(host) or isIPv6Address(host)
        resolving: Deferred[str] = succeed(host) if literal else self._reactor.resolve(host)
        return resolving.addCallback(self._send_datagram, port)

    def _send_datagram(self, address: str, port: int) -> Deferred[bytes]:
        exchange = _DatagramExchange(address, port, self._send, self._recv_len)
        self._reactor.listenUDP(0, exchange, interface="::" if isIPv6Address(address) else "")
        return exchange.answer
