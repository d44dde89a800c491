"""
Traffic counters and per-second rates (docs/DESIGN.md §6).

Bytes are counted once, when they move.  Rates are the bytes moved during the
last whole second: a L{RateClock} snapshots every registered counter once a
second on the injected reactor clock, so tests drive it with C{task.Clock}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

if TYPE_CHECKING:
    from balancer.server_service import ServerService

#: The server counters past gobetween's statistics document that /v1 and /metrics show.
SERVER_COUNTERS = ("total_connections", "over_limit", "no_backend", "denied", "tls_failures", "sni_failures")


@attrs.define(eq=False)
class Traffic:
    """
    Bytes moved in each direction, and the rate over the last second.

    @ivar rx: bytes received from backends (relayed to clients).
    @ivar tx: bytes transmitted to backends (received from clients).
    """

    rx: int = 0
    tx: int = 0
    rx_second: int = 0
    tx_second: int = 0
    _rx_mark: int = 0
    _tx_mark: int = 0

    def tick(self, seconds: int = 1) -> None:
        """
        Close a period: the rate is what moved since the previous tick,
        averaged over the C{seconds} the period lasted.
        """
        self.rx_second = (self.rx - self._rx_mark) // seconds
        self.tx_second = (self.tx - self._tx_mark) // seconds
        self._rx_mark = self.rx
        self._tx_mark = self.tx


@attrs.define(eq=False)
class BackendCounters:
    """The per-backend statistics of gobetween's C{/servers/<name>/stats}."""

    traffic: Traffic = attrs.Factory(Traffic)
    total_connections: int = 0
    active_connections: int = 0
    refused_connections: int = 0


@attrs.define(eq=False)
class ServerCounters:
    """
    Per-server statistics: gobetween's fields plus the refusals /v1 and /metrics show.

    @ivar over_limit: clients closed because C{max_connections} was reached.
    @ivar no_backend: clients closed because no backend could take them.
    @ivar denied: clients refused by access rules (for UDP, datagrams of
        clients without a session dropped by them).
    @ivar tls_failures: clients whose TLS handshake with the balancer
        failed or did not finish in time (C{protocol = "tls"}).
    @ivar sni_failures: clients closed before routing by SNI: a first
        flight that is not a ClientHello, none within C{read_timeout}, or a
        name no backend serves under C{unexpected_hostname_strategy = "reject"}.
    """

    traffic: Traffic = attrs.Factory(Traffic)
    active_connections: int = 0
    total_connections: int = 0
    over_limit: int = 0
    no_backend: int = 0
    denied: int = 0
    tls_failures: int = 0
    sni_failures: int = 0


class RateClock:
    """Ticks the L{Traffic} counters of registered sources once a second."""

    def __init__(self, reactor: IReactorTime) -> None:
        self._sources: list[Callable[[], Iterable[Traffic]]] = []
        self._loop = LoopingCall.withCount(self._tick)
        self._loop.clock = reactor

    def add(self, source: Callable[[], Iterable[Traffic]]) -> None:
        """Keep the rates of the counters C{source()} returns up to date."""
        self._sources.append(source)

    def remove(self, source: Callable[[], Iterable[Traffic]]) -> None:
        """Stop updating the counters of C{source}."""
        self._sources.remove(source)

    def start(self) -> None:
        """Begin ticking; the first rates appear one second later."""
        if not self._loop.running:
            self._loop.start(1.0, now=False)

    def stop(self) -> None:
        """Stop ticking."""
        if self._loop.running:
            self._loop.stop()

    def _tick(self, seconds: int) -> None:
        # seconds > 1 when the reactor was too busy to tick on time
        for source in list(self._sources):
            for traffic in source():
                traffic.tick(seconds)


def server_report(server: ServerService) -> dict[str, Any]:
    """
    Every statistic of a server that adds up over worker processes, as a
    worker reports it: gobetween's document (L{ServerService.stats}) with the
    L{SERVER_COUNTERS} at its top level.
    """
    counters = server.counters
    return {**server.stats(), **{key: getattr(counters, key) for key in SERVER_COUNTERS}}
