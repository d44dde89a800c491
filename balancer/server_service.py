"""
L{ServerService}: one C{[servers.<name>]} at run time: its listener, backend
pool, strategy, live relays and counters.

What a server's protocol features need is settled here, once per listener
or per configuration: its listener kind (L{balancer.listeners}: plain TCP,
TCP reading the SNI first, TLS termination, or UDP) and data path
(L{balancer.proxy.paths}), the admission and SNI router applied at
admission and routing, the PROXY protocol version and the TLS settings of
connections to backends.  The relay itself stays the same for all of them.
"""

from __future__ import annotations

import random
from typing import AbstractSet, Any, Iterator

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from zope.interface import implementer

from balancer.acme.certificates import AcmeCertificates
from balancer.backends import Backend, Pool
from balancer.config.addresses import BackendSpec
from balancer.config.schema import LISTENER_KEYS, ServerConfig
from balancer.discovery import DiscoveryRunner
from balancer.health import HealthMonitor
from balancer.listeners import listen
from balancer.listeners.closing import close_gently
from balancer.listeners.handover import hand_over
from balancer.listening import BindError
from balancer.proxy.admission import Admission
from balancer.proxy.datapath import IDataPath
from balancer.proxy.finished import SHUTDOWN, FinishedConnections
from balancer.proxy.listener import IListener
from balancer.proxy.paths import DataPaths
from balancer.proxy.proxy_protocol import header
from balancer.proxy.sni import REJECT, SniRouter
from balancer.proxy.tcp import Attempt, Relay
from balancer.proxy.tls import BackendTLS
from balancer.proxy.tls_relay import BackendTLSFactory
from balancer.proxy.udp import UdpProxy
from balancer.stats import RateClock, ServerCounters, Traffic
from balancer.strategies import make_strategy
from balancer.tlsfiles import TLSError

log = Logger()

#: The connect timeout, in seconds, when C{backend_connection_timeout} is 0
#: (as C{etc/balancer.toml} documents); Twisted would read 0 as "fail at once".
DEFAULT_CONNECT_TIMEOUT = 30.0


def listener_keys_changed(old: ServerConfig, new: ServerConfig) -> bool:
    """Whether going from C{old} to C{new} changes one of the L{LISTENER_KEYS}."""
    return any(getattr(old, key) != getattr(new, key) for key in LISTENER_KEYS)


def _initially_live(config: ServerConfig) -> bool:
    """Backends start live unless checks run and C{initial_status} says unhealthy."""
    return config.healthcheck.kind == "none" or config.healthcheck.initial_status == "healthy"


@implementer(IListener)
class ServerService(Service):
    """
    One configured server: the L{IListener} of its relays.

    Binding happens in L{bind} (called by C{privilegedStartService}), so a
    bad address fails before the process or the API call goes further.
    Stopping closes the listener first, then gives live relays C{grace}
    seconds to finish before closing them.

    While running, its discovery keeps the pool's membership up to date and
    its health monitor each backend's C{live} flag.  Static backends are in
    the pool from the start, so a server built but not started already
    shows them.

    @ivar counters: the server's own statistics.
    @ivar pool: its backends.
    @ivar relays: live client sessions by id.
    @ivar discovery: the running discovery (None while stopped).
    @ivar health: the running health monitor (None while stopped).
    @ivar udp: the datagram proxy of a C{protocol = "udp"} server, else
        C{None} (its sessions are not relays).
    @ivar reuse_port: whether its listener shares its port with other
        worker processes (C{SO_REUSEPORT}, L{balancer.reuseport}).
    @ivar udp_max_sessions: C{[defaults] udp_max_sessions}, the limit of UDP
        sessions of a C{protocol = "udp"} server without C{max_connections}.
    @ivar certificates: the ACME certificates of C{[acme]} (C{None} without
        that section), which its listener serves for its C{tls.acme_hosts}.
    @ivar path: the data path its TCP relays run on, chosen from the
        C{paths} it was given for its configuration when it was made
        (L{DataPaths.choose}).
    """

    name: str

    def __init__(
        self,
        name: str,
        config: ServerConfig,
        reactor: Any,
        rates: RateClock,
        *,
        grace: float = 10.0,
        rng: random.Random | None = None,
        reuse_port: bool = False,
        paths: DataPaths | None = None,
        udp_max_sessions: int = 0,
        finished: FinishedConnections | None = None,
        certificates: AcmeCertificates | None = None,
    ) -> None:
        self.name = name
        self.finished = finished if finished is not None else FinishedConnections()
        self.udp_max_sessions = udp_max_sessions
        self.certificates = certificates
        self.reuse_port = reuse_port
        self.config = config
        self.reactor = reactor
        self.clock = reactor
        self.grace = grace
        self.counters = ServerCounters()
        self.pool = Pool(config.discovery.static_list, initially_live=_initially_live(config))
        self.strategy = make_strategy(config.balance, rng)
        self.relays: dict[int, Relay] = {}
        self.discovery: DiscoveryRunner | None = None
        self.health: HealthMonitor | None = None
        self._paths = paths if paths is not None else DataPaths(reactor)
        self.path: IDataPath = self._paths.choose(config)
        self._rng = rng
        self._rates = rates
        self._port: Any = None
        self._drained: list[Deferred[None]] = []
        self._backend_tls: BackendTLS | None = None
        self._admission = Admission(self.counters, name)
        self.udp = (
            UdpProxy.from_config(
                config,
                self.choose_backend,
                self.counters,
                reactor=reactor,
                clock=self.clock,
                name=name,
                released=self.backend_released,
                udp_max_sessions=udp_max_sessions,
                finished=self.finished,
                backends=self.pool,
            )
            if config.protocol == "udp"
            else None
        )
        self._apply(config)

    def _apply(self, config: ServerConfig) -> None:
        """Compile what admission and routing use from C{config}."""
        self._admission.configure(config)
        self._sni = SniRouter.from_config(config.sni) if config.sni is not None else None
        self._proxy_version = config.proxy_protocol.version if config.proxy_protocol is not None else None

    # Life cycle

    def bind(self) -> None:
        """
        Start listening on the configured address.

        @raise BindError: naming the server, the address and the reason.
        """
        if self._port is not None:
            return
        config = self.config
        self._backend_tls = self._load_backend_tls(config)
        bind = config.bind
        try:
            self._port = listen(self)
        except CannotListenError as e:
            raise BindError(f'server "{self.name}": cannot listen on {bind}: {e.socketError}') from e
        except TLSError as e:
            raise BindError(f'server "{self.name}": {e}') from e
        log.info(
            "{server}: listening on {address} ({protocol})",
            server=self.name,
            address=self.address,
            protocol=config.protocol,
        )

    def _load_backend_tls(self, config: ServerConfig) -> BackendTLS | None:
        """
        The loaded C{[backends_tls]}, if any.

        @raise BindError: naming the server, the key and the file.
        """
        if config.backends_tls is None:
            return None
        try:
            return BackendTLS(config.backends_tls)
        except TLSError as e:
            raise BindError(f'server "{self.name}": {e}') from e

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
        """Bind if not bound yet, count rates, start discovery and health checks."""
        self.bind()
        self._rates.add(self.traffic_counters)
        super().startService()
        self._start_watching()

    def _start_watching(self) -> None:
        """Start this configuration's discovery and health monitor."""
        self.discovery = DiscoveryRunner(self.config.discovery, self.reactor, self.set_backends, name=self.name)
        self.health = HealthMonitor(self.pool, self.config.healthcheck, self.reactor)
        self.health.start()
        self.discovery.start()

    def _stop_watching(self) -> None:
        for watcher in (self.discovery, self.health):
            if watcher is not None:
                watcher.stop()
        self.discovery = self.health = None

    def set_backends(self, specs: list[BackendSpec]) -> None:
        """Make C{specs} the pool's discovered backends (those that stay keep stats and health)."""
        self.pool.replace(specs)
        if self.health is not None:
            self.health.backends_changed()

    def reconfigure(self, config: ServerConfig) -> None:
        """
        Apply a new definition in place: strategy, limits, timeouts, access
        rules, PROXY protocol, backend TLS, discovery and health checks
        change for new clients; live relays are kept.  The listener is not
        touched, so C{bind}, C{protocol}, C{tls}, C{sni} and C{udp} must be
        unchanged, and so must be its data path (L{needs_new_listener}).

        @raise BindError: if a changed C{[backends_tls]} cannot be loaded
            (nothing changes then).
        """
        assert not self.needs_new_listener(config)
        backend_tls = self._backend_tls
        if config.backends_tls != self.config.backends_tls:
            backend_tls = self._load_backend_tls(config)
        old, self.config = self.config, config
        self._backend_tls = backend_tls
        self._apply(config)
        if self.udp is not None:
            self.udp.configure(config)
        if config.balance != old.balance:
            self.strategy = make_strategy(config.balance, self._rng)
        if (config.discovery, config.healthcheck) != (old.discovery, old.healthcheck):
            running = self.running
            self._stop_watching()
            if config.discovery.kind == "static":
                self.set_backends(list(config.discovery.static_list))
            if running:
                self._start_watching()
        log.info("{server}: reconfigured", server=self.name)

    def needs_new_listener(self, config: ServerConfig) -> bool:
        """
        Whether going to C{config} needs a new listener: a listener key
        changes (L{listener_keys_changed}), or its relays would run on
        another data path (on the engine, C{[backends_tls]} added or removed).
        """
        return listener_keys_changed(self.config, config) or self._paths.choose(config) is not self.path

    def take_listener(self, old: ServerService) -> None:
        """
        Listen from now on with the socket of C{old}, a server of the same
        address and transport (L{balancer.listeners.handover.same_socket})
        that this one replaces: the socket stays open, so clients queued in
        its backlog are served by this server; C{old} keeps its relays and
        no longer listens.

        @raise BindError: if this server's listener cannot be set up (its
            C{[tls]} or C{[backends_tls]} files); C{old} goes on listening.
        """
        if old._port is None:
            self.bind()
            return
        backend_tls = self._load_backend_tls(self.config)
        try:
            self.path, self._port = hand_over(old._port, old.path, self, self._paths)
        except TLSError as e:
            raise BindError(f'server "{self.name}": {e}') from e
        old._port = None
        self._backend_tls = backend_tls
        log.info("{server}: {address} now served as newly defined (same socket)", server=self.name, address=self.address)

    def reload_files(self) -> None:
        """
        Read the files this server names again (C{[tls]} and
        C{[backends_tls]} certificates, keys and CA files): what serves its
        listening socket is built again, for new clients; the socket and
        live relays stay.

        @raise BindError: if the files cannot be used (nothing changes then).
        """
        backend_tls = self._load_backend_tls(self.config)
        if self._port is not None and self.config.protocol == "tls":
            try:
                self.path, self._port = hand_over(self._port, self.path, self, self._paths)
            except TLSError as e:
                raise BindError(f'server "{self.name}": {e}') from e
        self._backend_tls = backend_tls
        log.info("{server}: certificate and key files read again", server=self.name)

    def unbind(self, linger: float = 0.0) -> Deferred[None]:
        """
        Stop listening (if listening); fires once the port is closed.

        @param linger: if over 0, close without resetting a client: new
            clients are refused at once, those already connected are
            accepted for C{linger} seconds (L{balancer.listeners.closing}).
        """
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        if linger > 0:
            return close_gently(port, self.clock, linger)
        return maybeDeferred(port.stopListening)

    def stopService(self) -> Deferred[None]:
        """
        Close the listener at once, then let relays finish for up to C{grace}
        seconds (none with a C{grace} of 0) before closing those left.

        @return: fires when the listener and every relay are closed.
        """
        if self.running:
            self._rates.remove(self.traffic_counters)
        self._stop_watching()
        super().stopService()
        address = self.address
        listener = self.unbind()
        listener.addCallback(
            lambda _: log.info("{server}: stopped listening on {address}", server=self.name, address=address)
        )
        udp = self.udp
        if udp is not None:
            # Answers to a closed listening socket cannot reach clients: sessions end now.
            return gatherResults([listener, udp.close_all()], consumeErrors=True).addCallback(lambda _: None)
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
            relay.close(SHUTDOWN)

    # Called by relays

    def admit(self, relay: Relay) -> str | None:
        """
        Take a new client unless the access rules refuse it (counted in
        C{denied}) or the server is at C{max_connections} (C{over_limit});
        returns why not, or C{None}.
        """
        refusal = self._admission.take(relay.client_host)
        if refusal is None:
            self.relays[relay.id] = relay
        return refusal

    def relay_ended(self, relay: Relay) -> None:
        """A client's session is over: both of its connections are closed."""
        self._admission.ended()
        del self.relays[relay.id]
        if not self.relays:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def choose_backend(self, client_host: str, tried: AbstractSet[str] = frozenset(), server_name: str | None = None) -> Backend | None:
        """
        The strategy's pick among backends that take connections and were
        not tried; with C{[sni]}, among those of them that serve C{server_name}.
        """
        candidates = self.pool.candidates()
        if self._sni is not None:
            routed = self._sni.choose(server_name, candidates)
            candidates = [] if isinstance(routed, str) else routed
        if tried:
            candidates = [b for b in candidates if b.key not in tried]
        return self.strategy.choose(candidates, client_host)

    def rejects(self, server_name: str | None) -> bool:
        """
        Whether C{[sni]} closes a client asking for C{server_name}
        (C{unexpected_hostname_strategy = "reject"} and no candidate serves
        it; with no candidate at all, the client is rather one no backend could take).
        """
        if self._sni is None:
            return False
        candidates = self.pool.candidates()
        return bool(candidates) and self._sni.choose(server_name, candidates) == REJECT

    def proxy_header(self, client: Any) -> bytes:
        """The PROXY protocol header for a client's transport (empty without C{[proxy_protocol]})."""
        if self._proxy_version is None:
            return b""
        return header(self._proxy_version, client.getPeer(), client.getHost())

    @property
    def connect_timeout(self) -> float:
        """Seconds a backend has to accept a connection (and, with C{[backends_tls]}, again to finish its handshake)."""
        return self.config.backend_connection_timeout or DEFAULT_CONNECT_TIMEOUT

    def connect(self, attempt: Attempt) -> Any:
        """
        Open a connection to the attempt's backend on the data path (over
        TLS with C{[backends_tls]}); returns the connector.
        """
        spec = attempt.backend.spec
        factory: Any = attempt
        if self._backend_tls is not None:
            factory = BackendTLSFactory(self._backend_tls.creator(spec.host), attempt, self.clock)
        return self.path.connect(spec.host, spec.port, factory, self.connect_timeout)

    def backend_released(self, backend: Backend) -> None:
        """A connection to C{backend} closed."""
        if not backend.discovered:
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
