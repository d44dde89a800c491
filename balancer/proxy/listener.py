"""
L{IListener}: what a relay needs of the listener that accepted its client
(docs/architecture.md).

It is declared here, next to the relays (L{balancer.proxy.tcp},
L{balancer.proxy.tls_relay}, L{balancer.proxy.sni}), and provided by the
server that runs the listener, so that nothing in C{balancer.proxy} reaches
up into the service tree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from balancer.backends import Backend
    from balancer.proxy.tcp import Attempt, Relay


class IListener(Interface):
    """A listener's relays: their admission, backends, counters and settings."""

    name = Attribute("The server's name (C{str}), for the log.")
    config = Attribute(
        "The server's C{ServerConfig}: the relays read their idle timeouts and C{[sni] read_timeout} there."
    )
    clock = Attribute("The C{IReactorTime} of the relays' timers.")
    counters = Attribute("The server's C{ServerCounters}: traffic, C{sni_failures}, C{tls_failures}.")
    path = Attribute("The L{IDataPath<balancer.proxy.datapath.IDataPath>} the relays' bytes move on.")
    connect_timeout = Attribute(
        "Seconds (C{float}) a backend has to accept a connection, and, over TLS, again to finish its handshake."
    )

    finished = Attribute(
        "The L{FinishedConnections<balancer.proxy.finished.FinishedConnections>} each relay is published to when it ends."
    )

    def admit(relay: Relay) -> str | None:
        """
        Take C{relay}'s new client, unless the access rules or the limit of
        live clients refuse it; a client taken is live until L{relay_ended}.

        @return: C{None} if taken, else why not: C{DENIED} or C{OVER_LIMIT}
            (L{balancer.proxy.finished}).
        """

    def relay_ended(relay: Relay) -> None:
        """A relay admitted is over: both of its connections are closed."""

    def choose_backend(client_host: str, tried: set[str], server_name: str | None) -> Backend | None:
        """
        The backend for a client from C{client_host} among those that take
        connections and are not in C{tried} (by key), serving C{server_name}
        when the listener routes by SNI; C{None} if there is none.
        """

    def rejects(server_name: str | None) -> bool:
        """Whether a client asking for C{server_name} is closed (C{[sni]} rejects that name)."""

    def proxy_header(client: Any) -> bytes:
        """The PROXY protocol header for a client's transport (empty: none)."""

    def connect(attempt: Attempt) -> Any:
        """Start connecting C{attempt} to its backend (over TLS if the listener's backends speak it); returns the connector."""

    def backend_released(backend: Backend) -> None:
        """A relay's connection to C{backend}, or its attempt at one, is over."""
