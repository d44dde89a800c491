"""
L{ServerService}: one C{[servers.<name>]} at run time: its listener, backend
pool, strategy, live relays and counters.
"""

from __future__ import annotations

import random
from typing import Any, Iterator

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from balancer.backends import Backend, Pool
from balancer.config.schema import ServerConfig
from balancer.proxy.tcp import Relay, RelayFactory
from balancer.stats import RateClock, ServerCounters, Traffic
from balancer.strategies import make_strategy

log = Logger()

#: The connect timeout, in seconds, when C{backend_connection_timeout} is 0
#: (as C{etc/balancer.toml} documents); Twisted would read 0 as "fail at once".
DEFAULT_CONNECT_TIMEOUT = 30.0


class BindError(Exception):
    """A server could not listen on its address; the message names both."""


class ServerService(Service):
    """
    One configured server.

    Binding happens in L{bind} (called by C{privilegedStartService}), so a
    bad address fails before the process or the API call goes further.
    Stopping closes the listener first, then gives live relays C{grace}
    seconds to finish before closing them.

    @ivar counters: the server's own statistics.
    @ivar pool: its backends.
    @ivar relays: live client sessions by id.
    """

    def __init__(
        self,
        name: str,
        config: ServerConfig,
        reactor: Any,
        rates: RateClock,
        *,
        grace: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.reactor = reactor
        self.clock = reactor
        self.grace = grace
        self.counters = ServerCounters()
        self.pool = Pool(config.discovery.static_list)
        self.strategy = make_strategy(config.balance, rng)
        self.relays: dict[int, Relay] = {}
        self._rates = rates
        self._port: Any = None
        self._drained: list[Deferred[None]] = []

    # Life cycle

    def bind(self) -> None:
        """
        Start listening on the configured address.

        @raise BindError: naming the server, the address and the reason.
        """
        if self._port is not None:
            return
        bind = self.config.bind
        try:
            self._port = self.reactor.listenTCP(
                bind.port, RelayFactory(self), backlog=1024, interface=bind.listen_host
            )
        except CannotListenError as e:
            raise BindError(f'server "{self.name}": cannot listen on {bind}: {e.socketError}') from e
        log.info("{server}: listening on {address}", server=self.name, address=self.address)

    @property
    def address(self) -> str:
        """The address actually listened on (the real port when configured with 0)."""
        if self._port is None:
            return str(self.config.bind)
        host = self._port.getHost()
        return f"[{host.host}]:{host.port}" if ":" in host.host else f"{host.host}:{host.port}"

    @property
    def port(self) -> int:
        """The port listened on (0 before binding to port 0)."""
        return self._port.getHost().port if self._port is not None else self.config.bind.port

    def privilegedStartService(self) -> None:
        """Bind the listener (raising L{BindError} on failure)."""
        self.bind()
        super().privilegedStartService()

    def startService(self) -> None:
        """Bind if not bound yet, and count rates."""
        self.bind()
        self._rates.add(self.traffic_counters)
        super().startService()

    def unbind(self) -> Deferred[None]:
        """Stop listening (if listening); fires once the port is closed."""
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening)

    def stopService(self) -> Deferred[None]:
        """
        Close the listener at once, then let relays finish for up to C{grace}
        seconds (none with a C{grace} of 0) before closing those left.

        @return: fires when the listener and every relay are closed.
        """
        if self.running:
            self._rates.remove(self.traffic_counters)
        super().stopService()
        address = self.address
        listener = self.unbind()
        listener.addCallback(
            lambda _: log.info("{server}: stopped listening on {address}", server=self.name, address=address)
        )
        if not self.relays:
            return listener
        log.info(
            "{server}: {count} relays get {grace}s to finish",
            server=self.name,
            count=len(self.relays),
            grace=self.grace,
        )
        drained: Deferred[None] = Deferred()
        self._drained.append(drained)
        if self.grace > 0:
            deadline = self.clock.callLater(self.grace, self.close_all)
            drained.addCallback(lambda _: deadline.cancel() if deadline.active() else None)
        else:
            self.close_all()
        return gatherResults([listener, drained], consumeErrors=True).addCallback(lambda _: None)

    def close_all(self) -> None:
        """Close every live relay now."""
        for relay in list(self.relays.values()):
            relay.close()

    # Called by relays

    def admit(self, relay: Relay) -> bool:
        """Take a new client unless the server is at C{max_connections}."""
        limit = self.config.max_connections
        if limit and self.counters.active_connections >= limit:
            self.counters.over_limit += 1
            return False
        self.counters.active_connections += 1
        self.counters.total_connections += 1
        self.relays[relay.id] = relay
        return True

    def relay_ended(self, relay: Relay) -> None:
        """A client's session is over: both of its connections are closed."""
        self.counters.active_connections -= 1
        del self.relays[relay.id]
        if not self.relays:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def choose_backend(self, client_host: str, tried: set[str]) -> Backend | None:
        """The strategy's pick among backends that take connections and were not tried."""
        candidates = [b for b in self.pool.candidates() if b.key not in tried]
        return self.strategy.choose(candidates, client_host)

    def connect(self, backend: Backend, factory: Any) -> Any:
        """Open a connection to C{backend}; returns the connector."""
        timeout = self.config.backend_connection_timeout or DEFAULT_CONNECT_TIMEOUT
        return self.reactor.connectTCP(backend.host, backend.port, factory, timeout=timeout)

    def backend_released(self, backend: Backend) -> None:
        """A connection to C{backend} closed."""
        self.pool.forget_if_gone(backend)

    # Statistics

    def traffic_counters(self) -> Iterator[Traffic]:
        """The server's and its backends' traffic counters."""
        yield self.counters.traffic
        for backend in self.pool:
            yield backend.counters.traffic

    def stats(self) -> dict[str, Any]:
        """
        gobetween's C{/servers/<name>/stats} document, with its exact fields and
        types; a backend's C{sni} appears only when set (gobetween's C{omitempty}).
        """
        traffic = self.counters.traffic
        return {
            "active_connections": self.counters.active_connections,
            "rx_total": traffic.rx,
            "tx_total": traffic.tx,
            "rx_second": traffic.rx_second,
            "tx_second": traffic.tx_second,
            "backends": [
                {
                    "host": b.host,
                    "port": str(b.port),
                    "priority": b.spec.priority,
                    "weight": b.spec.weight,
                    **({"sni": b.spec.sni} if b.spec.sni else {}),
                    "stats": {
                        "live": b.live,
                        "discovered": b.discovered,
                        "total_connections": b.counters.total_connections,
                        "active_connections": b.counters.active_connections,
                        "refused_connections": b.counters.refused_connections,
                        "rx": b.counters.traffic.rx,
                        "tx": b.counters.traffic.tx,
                        "rx_second": b.counters.traffic.rx_second,
                        "tx_second": b.counters.traffic.tx_second,
                    },
                }
                for b in self.pool
            ],
        }
