"""
L{EnginePath}: the data path on the relay engine (docs/architecture.md), for
plain TCP at both ends: clients accepted and backends connected by
L{balancer.proxy.engine.sockets}, the bytes spliced from socket to socket in
the kernel by L{balancer.proxy.engine.splice}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import ClientFactory
from zope.interface import implementer

from balancer.proxy.datapath import IDataPath
from balancer.proxy.engine import sockets
from balancer.proxy.engine.engine import Engine
from balancer.proxy.engine.splice import splice

if TYPE_CHECKING:
    from balancer.proxy.tcp import BackendSide, ClientSide, Relay


@implementer(IDataPath)
class EnginePath:
    """
    The relay engine C{engine}.

    Its transports read nothing until joined, so a relay on it never has
    early data or a client that ended its stream before the join.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def listen(self, port: int, factory: IProtocolFactory, interface: str, reuse_port: bool) -> sockets.EngineListener:
        """Listen on the engine (L{sockets.listen})."""
        return sockets.listen(self.engine, port, factory, interface, reuse_port=reuse_port)

    def connect(self, host: str, port: int, factory: ClientFactory, timeout: float) -> Any:
        """Connect on the engine (an L{sockets.EngineConnector})."""
        return sockets.EngineConnector(self.engine, host, port, factory, timeout)

    def serve_with(self, listener: sockets.EngineListener, factory: IProtocolFactory) -> None:
        """Serve the clients C{listener} accepts from now on with C{factory} (another server's)."""
        listener.serve(factory)

    def join(self, relay: Relay, client: ClientSide, backend: BackendSide) -> None:
        """Splice the two sockets (both start reading), counting each read."""
        splice(client, backend, relay.count_tx, relay.count_rx)
