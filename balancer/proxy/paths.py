"""
L{DataPaths}: the data paths of one reactor, and which one a listener's
relays run on (docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

from balancer.config.schema import ServerConfig
from balancer.proxy.datapath import IDataPath
from balancer.proxy.engine.engine import Engine
from balancer.proxy.engine.path import EnginePath
from balancer.proxy.sni_path import SniEnginePath
from balancer.proxy.tls_path import TlsEnginePath
from balancer.proxy.twisted_path import TwistedPath


def runs_on_engine(config: ServerConfig) -> bool:
    """
    Whether a server's relays can run on the relay engine: plain TCP at both
    ends, nothing to read or encrypt besides the bytes relayed (no TLS, no
    SNI routing).
    """
    return config.protocol == "tcp" and config.tls is None and config.sni is None and config.backends_tls is None


def routes_sni_on_engine(config: ServerConfig) -> bool:
    """
    Whether a server's relays can run on the relay engine after reading the
    client's ClientHello: TCP routed by SNI, without TLS at either end.
    """
    return config.protocol == "tcp" and config.tls is None and config.sni is not None and config.backends_tls is None


def terminates_tls_on_engine(config: ServerConfig) -> bool:
    """
    Whether a server's relays can run on the relay engine with TLS
    terminated on the client's socket: C{protocol = "tls"} in front of
    backends speaking plain TCP.
    """
    return config.protocol == "tls" and config.backends_tls is None


class DataPaths:
    """
    Twisted's transports on C{reactor}, and the relay engine where there is one.

    @ivar twisted: the path on Twisted's transports.
    @ivar engine: the path on the relay engine, or C{None}.
    @ivar sni_engine: the path on the relay engine for SNI routing, or C{None}.
    @ivar tls_engine: the path on the relay engine for TLS termination, or C{None}.
    """

    def __init__(self, reactor: Any, engine: Engine | None = None) -> None:
        self.twisted = TwistedPath(reactor)
        self.engine = EnginePath(engine) if engine is not None else None
        self.sni_engine = SniEnginePath(engine) if engine is not None else None
        self.tls_engine = TlsEnginePath(engine) if engine is not None else None

    def choose(self, config: ServerConfig) -> IDataPath:
        """
        The path for a listener of C{config}: the engine if there is one and
        the configuration L{runs_on_engine} (or L{routes_sni_on_engine}, or
        L{terminates_tls_on_engine}), else Twisted's transports.
        """
        if self.engine is not None and runs_on_engine(config):
            return self.engine
        if self.sni_engine is not None and routes_sni_on_engine(config):
            return self.sni_engine
        if self.tls_engine is not None and terminates_tls_on_engine(config):
            return self.tls_engine
        return self.twisted
