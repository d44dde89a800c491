"""
L{IControl}: everything the admin APIs (and the coming CLI, dashboard and
cluster code) may ask of or do to the running balancer, in one place.

Queries answer with frozen views (L{balancer.control.views}) or plain
values, never with the running services.  Commands change the balancer:
each returns a Deferred that fires once the change is applied and persisted
(C{[state] path}, or the cluster's store: then a change based on a state
another balancer has changed since fails with
L{balancer.control.errors.ChangeConflict}, and one made while the store
does not answer with L{balancer.control.errors.ClusterUnavailable}), or
fails with one of L{balancer.control.errors} (or a
L{balancer.config.errors.ConfigError}, L{balancer.policy.ChangeRefused});
none raises at once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Interface

from balancer.config.schema import Config
from balancer.control.reloading import ReloadReport
from balancer.control.views import BackendView, ClusterView, ProcessInfo, ServiceView, SessionView


class IControl(Interface):
    """What the admin API can see and change."""

    # Queries

    def info() -> ProcessInfo:
        """The process: pid, version, start time and now, configuration path and revision."""

    def shutting_down() -> bool:
        """Whether the balancer is stopping (or not started): no change is taken then."""

    def server_names() -> list[str]:
        """Names of the running servers, in configuration order."""

    def server_definition(name: str) -> dict[str, Any]:
        """A server's definition in configuration key names. @raise UnknownServer"""

    def service(name: str) -> ServiceView:
        """A view of one running server, statistics summed over the worker processes. @raise UnknownServer"""

    def services() -> list[ServiceView]:
        """A view of every running server, in configuration order."""

    def backends() -> dict[str, BackendView]:
        """
        Every backend by /v1 id (a created backend's name, else
        C{host:port}): the created ones first, linked or not, then those of
        the services' pools.
        """

    def backend(id: str) -> BackendView:
        """One backend by /v1 id. @raise UnknownBackend"""

    def sessions() -> list[SessionView]:
        """Every live client session of worker 0."""

    def session(id: int) -> SessionView:
        """One live client session. @raise UnknownSession"""

    def effective_config() -> Config:
        """The configuration the balancer runs now, runtime changes included."""

    def dump(format: str) -> str:
        """The effective configuration as "toml" or "json". @raise DumpFormatError"""

    def changed_at(kind: str, name: str) -> float:
        """
        When the configuration of C{name} last changed, in epoch seconds of the
        balancer's clock (its start time if not since): C{kind} "server" for a
        C{[servers.<name>]}, "backend" for a /v1 server id, "balancer" (name "") for any change.
        """

    def shared_version(kind: str, name: str) -> int | None:
        """
        In a cluster (C{[cluster]}), the store revision that last changed the
        resource (C{kind} as for L{changed_at}), the same on every balancer;
        None outside a cluster and while nothing shared sets it.
        """

    def cluster() -> ClusterView | None:
        """The cluster this balancer belongs to and its members; None without C{[cluster]}."""

    # Commands

    def add_server(name: str, definition: object) -> Deferred[dict[str, Any]]:
        """
        Validate, bind, start and persist a new server; fires with its definition.
        Atomic: on any failure nothing changed.  C{name} must be a valid
        C{[servers.<name>]} name.  The change passes
        L{balancer.policy.check_server_change} under C{[api]}'s policy; a
        secret given as C{"********"} is refused (there is none to keep, see
        L{balancer.config.secrets.keep_secrets}).
        Fails with ConfigError, ServerExists, ListenerError, ChangeRefused.
        """

    def update_server(name: str, definition: object) -> Deferred[dict[str, Any]]:
        """
        Validate a server's new definition, apply it and persist it; fires with it.
        In place (relays kept) when C{bind}, C{protocol}, C{tls}, C{sni} and C{udp}
        are unchanged; else a new listener replaces the old one, whose relays get
        the shutdown grace: on the same address it keeps the listening socket
        (clients queued on it are served), on another address it binds before
        the old one closes (without resetting a client).  Atomic: on any failure nothing changed.  The change
        passes L{balancer.policy.check_server_change} under C{[api]}'s policy; a
        secret given as C{"********"} keeps the server's current one.
        Fails with UnknownServer, ConfigError, ListenerError, ChangeRefused.
        """

    def remove_server(name: str) -> Deferred[None]:
        """
        Persist a server's removal, then stop it (listener and relays); fires once it stopped.
        If the removal cannot be persisted, nothing changed.  Fails with UnknownServer.
        """

    def create_backend(name: str, parameters: object, services: list[str]) -> Deferred[dict[str, Any]]:
        """
        Create a backend and link it to C{services} (static discovery only);
        persisted; fires with its record.  Atomic: on failure nothing changed.
        Fails with ConfigError, ServerExists, UnknownServer, LinkError.
        """

    def update_backend(name: str, parameters: object, services: list[str] | None) -> Deferred[dict[str, Any]]:
        """
        Give a created backend new parameters and, unless None, a new set of
        linked services; the services' static lists follow.  Persisted; fires with its record.
        Fails with UnknownBackend, ConfigError, UnknownServer, LinkError.
        """

    def remove_backend(name: str) -> Deferred[None]:
        """Remove a created backend that no service uses.  Fails with UnknownBackend, BackendInUse."""

    def link_backends(server: str, names: list[str]) -> Deferred[None]:
        """
        Make C{names} the created backends linked to server C{server} (others
        are unlinked); its static list follows.  Fails with UnknownServer, UnknownBackend, LinkError.
        """

    def set_backend_state(id: str, state: str | None) -> Deferred[None]:
        """
        Set a backend's admin state ("maintenance" or "drain"; None clears it),
        in every pool that has it; persisted.  Fails with UnknownBackend.
        """

    def set_override(id: str, values: object) -> Deferred[dict[str, int]]:
        """
        Override parameters of a backend found by discovery (static lists
        included): C{values} maps some of C{weight}, C{priority} and
        C{max_connections} to an integer in its range (set) or None (clear;
        the backend's own value applies again); parameters not named keep
        their override.  It applies at once in every pool that has the
        backend, in every worker process, and at each discovery round;
        persisted (C{[state]}) and in C{/dump} (C{[overrides."host:port"]}).
        Fires with the parameters overridden now.  Fails with UnknownBackend,
        ConfigError (naming each bad key and its range), NotOverridable (a
        backend created through the API: L{update_backend} changes it).
        """

    def close_session(id: int) -> Deferred[None]:
        """Close a live client session (both of its connections) now.  Fails with UnknownSession."""

    def close_backend_sessions(id: str) -> Deferred[int]:
        """
        Close every client session to a backend now (relays, and each UDP
        client's current session), in every service
        that uses it and in every worker process (HAProxy's C{shutdown
        sessions server}); fires with the number closed in worker 0 (the
        other workers close theirs as they get the message).  Fails with UnknownBackend.
        """

    def reload() -> Deferred[ReloadReport]:
        """
        Load the configuration file again (C{SIGHUP} does the same) and apply
        what differs, with the runtime changes made through the API on top
        of it, as the API applies changes: servers removed, changed (in
        place, live relays kept, unless C{bind}, C{protocol}, C{[tls]},
        C{[sni]} or C{[udp]} changed) and added; servers whose certificate
        or key files changed under the same paths read them again.  A server
        whose change cannot be applied (its new address cannot be bound) is
        refused and runs as before; the others apply.  The worker processes
        get the new configuration.  Fires with what was done (also logged,
        one line).  Fails with ReloadRefused (each problem logged, one line
        each) when the file does not validate: nothing changed then.
        """
