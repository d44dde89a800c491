"""
Demo backends for C{--demo}: small servers, started in the balancer's own
process on the loopback backend addresses of the configuration, each
answering with its own name so that balancing is visible at once.

A client that speaks first with an HTTP request (curl) gets an HTTP answer;
one that says nothing for a moment (nc) gets a line naming the backend, then
an echo of whatever it types.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable

from twisted.application.internet import TCPServer
from twisted.application.service import MultiService
from twisted.internet.interfaces import IAddress, IReactorTime, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from balancer.config.addresses import BackendSpec
from balancer.config.schema import Config

#: How long a demo backend waits for an HTTP request before greeting.
GREETING_DELAY = 0.3
_HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")


class DemoBackend(Protocol):
    """Answers with the backend's name: over HTTP, or as a greeting and an echo."""

    transport: ITransport  # set on connection, which comes right after the factory builds it

    def __init__(self, name: str, clock: IReactorTime) -> None:
        self.name = name
        self._greeting = clock.callLater(GREETING_DELAY, self._greet)
        self._greeted = False

    def _greet(self) -> None:
        self._greeted = True
        self.transport.write(f"hello from {self.name}\n".encode())

    def dataReceived(self, data: bytes) -> None:
        """HTTP gets one response naming the backend; anything else is echoed."""
        if not self._greeted and data.startswith(_HTTP_METHODS):
            self._greeting.cancel()
            body = f"hello from {self.name}\n".encode()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            self.transport.loseConnection()
            return
        if not self._greeted:
            self._greeting.cancel()
            self._greet()
        self.transport.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Forget the pending greeting."""
        if self._greeting.active():
            self._greeting.cancel()


class DemoFactory(Factory):
    """Builds L{DemoBackend}s named after their address."""

    noisy = False

    def __init__(self, name: str, clock: IReactorTime) -> None:
        self.name = name
        self.clock = clock

    def buildProtocol(self, addr: IAddress | None) -> DemoBackend:
        return DemoBackend(self.name, self.clock)


def loopback_backends(config: Config) -> list[BackendSpec]:
    """The distinct static backends of C{config} on loopback addresses."""
    found: dict[str, BackendSpec] = {}
    for server in config.servers.values():
        for spec in server.discovery.static_list:
            if spec.host == "localhost" or _is_loopback(spec.host):
                found.setdefault(spec.key, spec)
    return list(found.values())


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def demo_service(backends: Iterable[BackendSpec], reactor: Any) -> MultiService:
    """One TCP demo server per backend address, named C{demo-1}, C{demo-2}, ..."""
    service = MultiService()
    for number, spec in enumerate(backends, start=1):
        host = "127.0.0.1" if spec.host == "localhost" else spec.host
        factory = DemoFactory(f"demo-{number} ({spec.key})", reactor)
        TCPServer(spec.port, factory, interface=host, reactor=reactor).setServiceParent(service)
    return service
