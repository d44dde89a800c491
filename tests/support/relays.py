"""
TCP relays on fakes: a started L{ServerService} on a L{MemoryReactorClock},
clients and backends on string transports that half-close and abort as TCP
transports do.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from balancer.config.addresses import HostPort, parse_backend_line
from balancer.config.schema import DiscoveryConfig, ServerConfig
from balancer.proxy.tcp import BackendSide, Relay, RelayFactory
from balancer.server_service import ServerService
from balancer.stats import RateClock

BACKENDS = ("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")


class FakeTransport(StringTransport):
    """
    A L{StringTransport} that half-closes and aborts as a TCP transport does,
    and records the producer registered when it was asked to close.
    """

    def __init__(self, peer: str = "192.0.2.1") -> None:
        super().__init__(peerAddress=IPv4Address("TCP", peer, 40000))
        self.write_closed = False
        self.aborted = False
        self.producer_at_close: list[Any] = []

    def loseWriteConnection(self) -> None:
        self.producer_at_close.append(self.producer)
        self.write_closed = True

    def loseConnection(self) -> None:
        self.producer_at_close.append(self.producer)
        super().loseConnection()

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    def unregisterProducer(self) -> None:
        """As TCP transports do, unregistering with no producer is harmless."""
        self.producer = None
        self.streaming = None


def server_config(backends: tuple[str, ...] = BACKENDS, **options: Any) -> ServerConfig:
    """A C{[servers.X]} with static C{backends} and the given options."""
    options.setdefault("balance", "roundrobin")
    options.setdefault("bind", HostPort("127.0.0.1", 0))
    specs = tuple(parse_backend_line(line) for line in backends)
    return ServerConfig(discovery=DiscoveryConfig(kind="static", static_list=specs), **options)


def make_server(
    reactor: MemoryReactorClock | None = None,
    backends: tuple[str, ...] = BACKENDS,
    *,
    grace: float = 10.0,
    seed: int = 0,
    rates: RateClock | None = None,
    **options: Any,
) -> ServerService:
    """A started L{ServerService} on a memory reactor (C{server.reactor})."""
    reactor = reactor if reactor is not None else MemoryReactorClock()
    rates = rates if rates is not None else RateClock(reactor)
    server = ServerService(
        "web", server_config(backends, **options), reactor, rates, grace=grace, rng=random.Random(seed)
    )
    server.startService()
    return server


def accept(server: ServerService, peer: str = "192.0.2.1") -> tuple[Relay, FakeTransport]:
    """A client from C{peer} arrives at C{server}; returns its relay and transport."""
    client = RelayFactory(server).buildProtocol(IPv4Address("TCP", peer, 40000))
    transport = FakeTransport(peer)
    client.makeConnection(transport)
    return client.relay, transport


def connect(server: ServerService, index: int = -1) -> tuple[BackendSide, FakeTransport]:
    """The backend of the C{index}th connect attempt accepts; returns its side and transport."""
    factory = server.reactor.tcpClients[index][2]
    side = factory.buildProtocol(None)
    transport = FakeTransport()
    side.makeConnection(transport)
    return side, transport


def fail(server: ServerService, index: int = -1, reason: Exception | None = None) -> None:
    """The C{index}th connect attempt fails (refused, unless another C{reason} is given)."""
    factory = server.reactor.tcpClients[index][2]
    factory.clientConnectionFailed(server.reactor.connectors[index], Failure(reason or ConnectionRefusedError()))


def attempted(server: ServerService) -> list[str]:
    """C{host:port} of every connect attempt so far, in order."""
    return [f"{host}:{port}" for host, port, *_ in server.reactor.tcpClients]


def lose(side: Any) -> None:
    """The connection of a relay's side is closed."""
    side.connectionLost(Failure(ConnectionDone()))


def relayed(**options: Any) -> tuple[ServerService, Relay, FakeTransport, BackendSide, FakeTransport]:
    """A server with one client relayed to its first backend."""
    server = make_server(**options)
    relay, client = accept(server)
    side, backend = connect(server)
    return server, relay, client, side, backend
