"""
L{ListeningService}: a service that listens on one address while it runs,
as the admin API and the metrics endpoint do.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger

from balancer.config.addresses import join_host_port

log = Logger()


class BindError(Exception):
    """
    Something could not listen on its address (the message names both), or
    its TLS files could not be loaded (the message names the key and file):
    a server, the API or the metrics endpoint.
    """


class ListeningService(Service):
    """
    Binds in C{privilegedStartService} (so a bad address ends the start, and
    a port below 1024 is bound before privileges are dropped), or in
    C{startService} when started without it; logs C{LABEL: listening on
    HOST:PORT} with the real port; stops listening when stopped.

    Subclasses say how to listen in L{bind}.

    @ivar label: how the log names what listens (C{"api"}, C{"metrics"}).
    """

    label = "listener"

    def __init__(self) -> None:
        self._port: Any = None

    def bind(self) -> Any:
        """Listen; returns the reactor's port.  Raising ends the start."""
        raise NotImplementedError

    def privilegedStartService(self) -> None:
        """Bind."""
        self._listen()
        super().privilegedStartService()

    def startService(self) -> None:
        """Bind, if not bound already."""
        self._listen()
        super().startService()

    def stopService(self) -> Deferred[None]:
        """Stop listening."""
        super().stopService()
        port, self._port = self._port, None
        return maybeDeferred(port.stopListening) if port is not None else succeed(None)

    def address(self) -> str:
        """C{HOST:PORT} listened on (the real port), "" while not listening."""
        if self._port is None:
            return ""
        host = self._port.getHost()
        return join_host_port(host.host, host.port)

    def _listen(self) -> None:
        if self._port is not None:
            return
        self._port = self.bind()
        host = self._port.getHost()
        log.info("{label}: listening on {address}", label=self.label, address=join_host_port(host.host, host.port))
