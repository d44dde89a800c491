"""
Backends at run time: their configured spec, health, admin state and counters,
and the pool a server picks them from.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Iterable, Iterator, Mapping

import attrs

from balancer.config.addresses import BackendSpec
from balancer.config.overrides import OverrideConfig, overridden
from balancer.stats import BackendCounters

ACTIVE = "active"
DRAIN = "drain"
MAINTENANCE = "maintenance"


def _changed(backend: Backend, attribute: object, value: Any) -> Any:
    """A field that decides whether C{backend} takes new connections changed: tell its pool."""
    if backend.changed is not None:
        backend.changed()
    return value


@attrs.define(eq=False)
class Backend:
    """
    One backend of one server.

    @ivar spec: address, weight, priority, limits, as configured or discovered.
    @ivar live: the health check's verdict (True without health checks).
    @ivar discovered: whether the latest discovery still lists it.
    @ivar admin_state: L{ACTIVE}, L{DRAIN} (no new connections, keeps its
        relays) or L{MAINTENANCE} (no new connections).
    @ivar changed: called when any of the above is set (its L{Pool} forgets
        its candidates), or C{None}.
    """

    spec: BackendSpec = attrs.field(on_setattr=_changed)
    live: bool = attrs.field(default=True, on_setattr=_changed)
    discovered: bool = attrs.field(default=True, on_setattr=_changed)
    admin_state: str = attrs.field(default=ACTIVE, on_setattr=_changed)
    counters: BackendCounters = attrs.Factory(BackendCounters)

    #: C{host:port}, the backend's identity within its server (a new spec keeps it).
    key: str = attrs.field(init=False)
    changed: Callable[[], None] | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.key = self.spec.key

    @property
    def host(self) -> str:
        """The host to connect to."""
        return self.spec.host

    @property
    def port(self) -> int:
        """The port to connect to."""
        return self.spec.port


def addresses_of(backends: Iterable[Backend]) -> frozenset[tuple[Any, ...]]:
    """
    The addresses of C{backends} given by address (not by name), in the
    forms a datagram socket reports its peers: C{(IP, port)}, and for an
    IPv6 socket C{(IP, port, 0, 0)}, an IPv4 address also mapped into IPv6
    (C{::ffff:a.b.c.d}) as a dual-stack socket reports it.
    """
    found: set[tuple[Any, ...]] = set()
    for backend in backends:
        try:
            address = ipaddress.ip_address(backend.host)
        except ValueError:
            continue
        port = backend.port
        hosts = [str(address)]
        if isinstance(address, ipaddress.IPv4Address):
            hosts.append(f"::ffff:{address}")
        for host in hosts:
            found.update({(host, port), (host, port, 0, 0)})
    return frozenset(found)


class Pool:
    """
    The backends of one server, keyed by C{host:port}, in a stable order.

    Replacing the list (discovery) keeps the L{Backend} objects of backends
    that stay, so their statistics and health survive; backends that leave
    are kept while they still have connections, marked not discovered.
    A backend's spec is the one discovered with its override, if any
    (L{set_overrides}), applied again at each discovery round.

    @ivar addresses: the C{(IP address, port)} of the backends given by
        address (L{addresses_of}), for a UDP listener to know them at once.
    """

    def __init__(self, specs: Iterable[BackendSpec] = (), initially_live: bool = True) -> None:
        self._backends: dict[str, Backend] = {}
        self._ordered: list[Backend] = []
        self._initially_live = initially_live
        self._found: dict[str, BackendSpec] = {}
        self._overrides: Mapping[str, OverrideConfig] = {}
        # The candidates while no backend changed, when none has a limit of its own.
        self._candidates: list[Backend] | None = None
        self.addresses: frozenset[tuple[Any, ...]] = frozenset()
        self.replace(specs)

    def replace(self, specs: Iterable[BackendSpec]) -> None:
        """Make C{specs} the discovered backends."""
        wanted = {spec.key: spec for spec in specs}
        for key, backend in list(self._backends.items()):
            if key not in wanted:
                if backend.counters.active_connections:
                    backend.discovered = False
                else:
                    del self._backends[key]
                    del self._found[key]
        for key, found in wanted.items():
            self._found[key] = found
            spec = overridden(found, self._overrides)
            existing = self._backends.get(key)
            if existing is None:
                backend = self._backends[key] = Backend(spec, live=self._initially_live)
                backend.changed = self._forget_candidates
            else:
                existing.spec = spec
                existing.discovered = True
        self._reorder()

    def forget_if_gone(self, backend: Backend) -> None:
        """Drop an undiscovered backend once its last connection has closed."""
        if not backend.discovered and not backend.counters.active_connections:
            if self._backends.get(backend.key) is backend:
                del self._backends[backend.key]
                del self._found[backend.key]
                self._reorder()

    def set_overrides(self, overrides: Mapping[str, OverrideConfig]) -> None:
        """Give each backend the override of its C{host:port} in C{overrides} (none: its discovered spec)."""
        self._overrides = dict(overrides)
        for key, backend in self._backends.items():
            backend.spec = overridden(self._found[key], self._overrides)
        self.addresses = addresses_of(self._ordered)

    def _reorder(self) -> None:
        """Sort once per change of membership, not once per new client."""
        self._ordered = sorted(self._backends.values(), key=lambda b: (b.host, b.port))
        self._candidates = None
        self.addresses = addresses_of(self._ordered)

    def _forget_candidates(self) -> None:
        self._candidates = None

    def get(self, key: str) -> Backend | None:
        """The backend C{host:port}, if present."""
        return self._backends.get(key)

    def __iter__(self) -> Iterator[Backend]:
        return iter(self._ordered)

    def __len__(self) -> int:
        return len(self._backends)

    def candidates(self) -> list[Backend]:
        """
        Backends that may take a new connection now, ordered by C{host:port}:
        live, discovered, active, and under their own C{max_connections}.
        The same list (not to be changed) until a backend changes, when no
        backend has a C{max_connections} (whose count changes with every
        connection): this runs for every new client.
        """
        found = self._candidates
        if found is not None:
            return found
        # One loop, no call per backend and no comprehension (a function of its own in Python 3.11).
        found = []
        limited = False
        for b in self._ordered:
            limit = b.spec.max_connections
            if limit:
                limited = True
            if b.live and b.discovered and b.admin_state == ACTIVE and (not limit or b.counters.active_connections < limit):
                found.append(b)
        if not limited:
            self._candidates = found
        return found
