"""
The running servers, as the control layer sees and changes them.

This is the one module of the control package that touches the data path's
objects: L{BalancerService} and its L{ServerService}s (C{name}, C{config},
C{running}, C{address}, C{port}, C{relays}, C{pool}, their statistics
through L{server_report}), their pools' L{balancer.backends.Backend}s and
their relays.  Everything else reads the frozen views made here
(L{balancer.control.views}) and changes servers through the few commands
below (docs/architecture.md).
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from balancer.backends import ACTIVE
from balancer.config.dump import to_mapping
from balancer.config.overrides import OverrideConfig
from balancer.config.schema import ServerConfig
from balancer.control.catalogue import BackendCatalogue
from balancer.control.errors import ListenerError, UnknownServer
from balancer.control.sums import PeerStatistics
from balancer.control.views import DiscoveryStatus, PoolEntry, ServiceView, SessionView
from balancer.listening import BindError
from balancer.server_service import ServerService
from balancer.root_service import BalancerService
from balancer.stats import server_report

log = Logger()


class RunningServers:
    """Views of, and commands to, the servers of one L{BalancerService}."""

    def __init__(self, balancer: BalancerService, peers: PeerStatistics) -> None:
        """@param peers: the other worker processes' statistics, summed into the views'."""
        self._balancer = balancer
        self._peers = peers

    # Reading

    def stopping(self) -> bool:
        """Whether the balancer is stopping (or not started)."""
        return not self._balancer.running

    def names(self) -> list[str]:
        """The servers' names, in configuration order."""
        return [name_of(server) for server in self._balancer.servers()]

    def config(self, name: str) -> ServerConfig:
        """Server C{name}'s definition. @raise UnknownServer"""
        return self._server(name).config

    def configs(self) -> dict[str, ServerConfig]:
        """Every server's definition by name, in configuration order."""
        return {name_of(server): server.config for server in self._balancer.servers()}

    def service(self, name: str) -> ServiceView:
        """A view of server C{name}. @raise UnknownServer"""
        return self._view(self._server(name))

    def services(self) -> list[ServiceView]:
        """A view of every server, in configuration order."""
        return [self._view(server) for server in self._balancer.servers()]

    def sessions(self, catalogue: BackendCatalogue) -> list[SessionView]:
        """A view of every live relay, server by server; C{catalogue} names the backends."""
        return [
            session_view(server, relay, catalogue.claims(name_of(server)))
            for server in self._balancer.servers()
            for relay in list(server.relays.values())
        ]

    def session(self, id: int, catalogue: BackendCatalogue) -> SessionView | None:
        """A view of live relay C{id}, or None."""
        for server in self._balancer.servers():
            relay = server.relays.get(id)
            if relay is not None:
                return session_view(server, relay, catalogue.claims(name_of(server)))
        return None

    # Changing

    def add(self, name: str, config: ServerConfig) -> None:
        """Create, bind and start server C{name}. @raise ListenerError: it cannot listen (nothing changed)."""
        try:
            self._balancer.add_server(name, config)
        except BindError as e:
            raise ListenerError(str(e)) from e

    def update(self, name: str, config: ServerConfig) -> Deferred[None]:
        """
        Give server C{name} a new definition (in place, or with a new listener).

        @return: fires once applied; fails with L{ListenerError} when the new
            listener cannot be set up (the old one is kept).
        """
        return self._balancer.update_server(name, config).addErrback(_listener_error)

    def reload_files(self, name: str) -> None:
        """
        Server C{name} reads the files it names again (certificates, keys):
        for new clients; its socket and live relays stay.

        @raise ListenerError: if they cannot be used (nothing changed).
        """
        try:
            self._server(name).reload_files()
        except BindError as e:
            raise ListenerError(str(e)) from e

    def remove(self, name: str) -> Deferred[None]:
        """Stop server C{name}: its listener closes, its relays are closed at once; fires once stopped."""
        return self._balancer.remove_server(name)

    def close_session(self, id: int) -> bool:
        """Close relay C{id} (both of its connections) now; False if there is none."""
        for server in self._balancer.servers():
            relay = server.relays.get(id)
            if relay is not None:
                log.info("{server}: closing session {id} by request", server=server.name, id=id)
                relay.close()
                return True
        return False

    def set_admin_states(self, catalogue: BackendCatalogue, states: dict[str, str]) -> None:
        """Give every pool entry the admin state of its /v1 id in C{states} (active if none)."""
        for server in self._balancer.servers():
            claims = catalogue.claims(name_of(server))
            for backend in server.pool:
                backend.admin_state = states.get(claims.get(backend.key, backend.key), ACTIVE)

    def set_overrides(self, catalogue: BackendCatalogue, overrides: Mapping[str, OverrideConfig]) -> None:
        """
        Give every pool the overrides of C{overrides} (by C{host:port}),
        except for the addresses a created backend linked to its server
        takes (C{catalogue}): those keep their own parameters.
        """
        for server in self._balancer.servers():
            claims = catalogue.claims(name_of(server))
            server.pool.set_overrides({key: o for key, o in overrides.items() if key not in claims})

    def close_backend_sessions(self, targets: Mapping[str, list[str]]) -> int:
        """
        Close now every relay to a backend of C{targets} (server name to the
        C{host:port} of backends in its pool); returns how many.
        """
        return close_backend_relays(self._balancer, targets)

    def _server(self, name: str) -> ServerService:
        try:
            return self._balancer.server(name)
        except KeyError:
            raise UnknownServer(name) from None

    def _view(self, server: ServerService) -> ServiceView:
        name = name_of(server)
        statistics = self._peers.total(name, server_report(server))
        by_address = {(b["host"], b["port"]): b["stats"] for b in statistics["backends"]}
        health = server.health
        pool = tuple(
            PoolEntry(
                service=name,
                key=backend.key,
                spec=backend.spec,
                live=backend.live,
                discovered=backend.discovered,
                admin_state=backend.admin_state,
                statistics=dict(by_address[(backend.host, str(backend.port))]),
                check=health.result(backend.key) if health is not None else None,
            )
            for backend in server.pool
        )
        return ServiceView(
            name=name,
            config=server.config,
            definition=to_mapping(server.config),
            running=bool(server.running),
            address=server.address,
            port=server.port,
            sessions=len(server.relays),
            statistics=statistics,
            pool=pool,
            discovery=discovery_status(server),
        )


def discovery_status(server: ServerService) -> DiscoveryStatus | None:
    """The fetches of C{server}'s running discovery; None while it is stopped."""
    runner = server.discovery
    if runner is None:
        return None
    return DiscoveryStatus(
        kind=server.config.discovery.kind,
        fetches=runner.fetches,
        failures=runner.failures,
        last_success=runner.last_success,
        last_error=runner.last_error,
    )


def session_view(server: ServerService, relay: Any, claims: dict[str, str]) -> SessionView:
    """
    A view of C{relay}, a live relay of C{server}; C{claims} are the created
    backends linked to C{server} by C{host:port} (their names are their /v1 ids).
    """
    client = relay.client_address
    backend = relay.backend
    key = backend.key if backend is not None else None
    id = claims.get(key, key) if key is not None and server.pool.get(key) is backend else None
    return SessionView(
        id=relay.id,
        service=name_of(server),
        client_host=getattr(client, "host", str(client)),
        client_port=getattr(client, "port", None),
        backend=key,
        server=id,
        rx=relay.rx,
        tx=relay.tx,
        started_at=relay.started_at,
    )


def close_backend_relays(balancer: BalancerService, targets: Mapping[str, list[str]]) -> int:
    """
    Close every session of C{balancer}'s servers whose backend is one of
    C{targets} (server name to backend C{host:port}s): relays, and the
    current UDP session of each client (HAProxy's C{shutdown sessions
    server}).  Worker 0 calls it through L{RunningServers}, the other worker
    processes when worker 0 tells them (L{balancer.workers.child}).

    @return: how many sessions were closed.
    """
    closed = 0
    for server in balancer.servers():
        keys = set(targets.get(name_of(server), ()))
        if not keys:
            continue
        relays = [relay for relay in server.relays.values() if relay.backend is not None and relay.backend.key in keys]
        for relay in relays:
            relay.close()
        udp = server.udp
        datagrams = [s for s in udp.sessions.values() if s.backend.key in keys] if udp is not None else []
        for session in datagrams:
            session.end("closed by request")
        count = len(relays) + len(datagrams)
        closed += count
        if count:
            log.info("{server}: closed {count} sessions of {backends} by request", server=server.name,
                     count=count, backends=", ".join(sorted(keys)))
    return closed


def name_of(server: ServerService) -> str:
    """Server C{server}'s name (every server is made with one; L{Service.name} may be None in general)."""
    name = server.name
    if name is None:
        raise ValueError("a running server without a name")
    return name


def _listener_error(failure: Failure) -> None:
    """A data path's L{BindError} as the control layer's L{ListenerError}, with the same message."""
    failure.trap(BindError)
    raise ListenerError(str(failure.value)) from failure.value
