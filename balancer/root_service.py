"""
L{BalancerService}: the root of the service tree, one L{ServerService} child
per configured server, plus the clock that keeps per-second rates and the
relay engine its servers share (docs/architecture.md).
"""

from __future__ import annotations

import random
from typing import Any, Generator

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger

from balancer.acme.certificates import AcmeCertificates
from balancer.config.schema import Config, ServerConfig
from balancer.proxy.engine.engine import make_engine
from balancer.proxy.finished import FinishedConnections
from balancer.proxy.paths import DataPaths
from balancer.listeners.closing import LINGER
from balancer.listeners.handover import same_socket
from balancer.listening import BindError
from balancer.server_service import ServerService
from balancer.stats import RateClock

log = Logger()


class UnknownServer(KeyError):
    """No server has that name."""


class ServerExists(ValueError):
    """A server of that name already exists."""


class BalancerService(MultiService):
    """
    All servers of one configuration.

    Starting binds every server's listener before anything else runs; one
    failure unbinds the others and raises L{BindError}.  With C{[defaults]
    workers} over 1, listeners share their port with the other worker
    processes (C{SO_REUSEPORT}).

    @ivar engine: the relay engine of its servers' plain TCP relays, made
        for its reactor with C{[defaults] splice} where there can be one,
        else C{None}; closed once the service has stopped.
    @ivar finished: publishes every finished client connection of its servers.
    @ivar certificates: the ACME certificates its TLS servers serve for their
        C{acme_hosts} (C{None} without C{[acme]}); L{balancer.acme.service}
        fills it.
    """

    def __init__(self, config: Config, reactor: Any, rng: random.Random | None = None) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.rates = RateClock(reactor)
        self._rng = rng
        self.finished = FinishedConnections()
        self.engine = make_engine(reactor) if config.defaults.splice else None
        self._paths = DataPaths(reactor, self.engine)
        self.certificates = AcmeCertificates(config.acme.challenge) if config.acme is not None else None
        for name, server in config.servers.items():
            self._make_server(name, server).setServiceParent(self)

    def _make_server(self, name: str, server: ServerConfig) -> ServerService:
        defaults = self.config.defaults
        service = ServerService(
            name, server, self.reactor, self.rates, grace=defaults.shutdown_grace, rng=self._rng,
            reuse_port=defaults.workers > 1,
            paths=self._paths,
            udp_max_sessions=defaults.udp_max_sessions,
            finished=self.finished,
            certificates=self.certificates,
        )
        service.setName(name)
        return service

    def privilegedStartService(self) -> None:
        """Bind every listener, or none: a failure closes those already bound."""
        bound: list[ServerService] = []
        try:
            for server in self.servers():
                server.bind()
                bound.append(server)
        except BindError:
            for server in bound:
                server.unbind()
            raise
        super().privilegedStartService()

    def startService(self) -> None:
        """Start the servers and the rate clock."""
        super().startService()
        self.rates.start()

    def stopService(self) -> Deferred[None]:
        """Stop every server (listeners first, then relays get their grace), then close the engine."""
        self.rates.stop()
        stopped = super().stopService()
        engine = self.engine
        if engine is not None:
            stopped.addCallback(lambda _: engine.close())
        return stopped

    # The control operations the admin API builds on

    def servers(self) -> list[ServerService]:
        """The running servers, in configuration order."""
        return list(self)

    def server(self, name: str) -> ServerService:
        """
        The server called C{name}.

        @raise UnknownServer: if there is none.
        """
        try:
            return self.getServiceNamed(name)
        except KeyError:
            raise UnknownServer(name) from None

    def add_server(self, name: str, config: ServerConfig) -> ServerService:
        """
        Create, bind and start a server.

        @raise ServerExists: if the name is taken (nothing changes).
        @raise BindError: if it cannot listen (nothing changes).
        """
        if name in self.namedServices:
            raise ServerExists(name)
        service = self._make_server(name, config)
        service.bind()
        service.setServiceParent(self)
        log.info("server {server} added", server=name)
        return service

    @inlineCallbacks
    def update_server(self, name: str, config: ServerConfig) -> Generator[Deferred[Any], Any, None]:
        """
        Give server C{name} a new definition.

        In place when the listener is unaffected (L{ServerService.needs_new_listener}):
        live relays go on.  Otherwise a new server replaces it and the old
        one stops with its grace; the new server's listener is set up before
        the old one lets go of its address:

         - on the same address and transport, the new server takes the old
           one's listening socket (L{ServerService.take_listener}): clients
           queued on it are served, none is reset;
         - on another address, the new one binds first, then the old one
           closes without resetting a client (L{balancer.listeners.closing}:
           new clients are refused, those connected already are served);
           the Deferred fires once it has closed.

        @raise UnknownServer: if there is none.
        @raise BindError: if the new listener cannot be set up (the old one
            is kept, serving as before).
        """
        old = self.server(name)
        if not old.needs_new_listener(config):
            old.reconfigure(config)
            return
        new = self._make_server(name, config)
        if same_socket(old.config, config):
            new.take_listener(old)
            closed: Deferred[None] = succeed(None)
        else:
            new.bind()
            closed = old.unbind(linger=LINGER)
        old.disownServiceParent()
        new.setServiceParent(self)
        log.info("server {server} replaced with a new listener", server=name)
        yield closed

    def remove_server(self, name: str) -> Deferred[None]:
        """
        Stop a server: its listener closes and its relays are closed at once.

        @raise UnknownServer: if there is none.
        """
        service = self.server(name)
        service.grace = 0.0
        stopped = service.disownServiceParent()
        log.info("server {server} removed", server=name)
        return stopped if stopped is not None else succeed(None)
