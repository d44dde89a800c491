"""
The data paths (L{balancer.proxy.datapath}): both implementations provide
L{IDataPath}, and L{DataPaths.choose} picks one per listener's configuration.
"""

from __future__ import annotations

import attrs
from twisted.internet import reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from balancer.config.addresses import HostPort
from balancer.config.schema import BackendsTlsConfig, DiscoveryConfig, ServerConfig, SniConfig, TlsConfig
from balancer.proxy.datapath import IDataPath
from balancer.proxy.engine.engine import Engine
from balancer.proxy.engine.path import EnginePath
from balancer.proxy.paths import DataPaths
from balancer.proxy.sni_path import IReadsFirst, SniEnginePath
from balancer.proxy.tls_path import TlsEnginePath
from balancer.proxy.twisted_path import TwistedPath


def server_config(**options: object) -> ServerConfig:
    """A plain TCP server on 127.0.0.1, with C{options}."""
    return ServerConfig(bind=HostPort("127.0.0.1", 0), discovery=DiscoveryConfig(kind="static"), **options)  # type: ignore[arg-type]


class DataPathsTests(SynchronousTestCase):
    """Which path a listener's relays run on."""

    def setUp(self) -> None:
        self.engine = Engine(MemoryReactorClock())
        self.addCleanup(self.engine.close)
        self.paths = DataPaths(reactor, self.engine)

    def test_bothProvideTheInterface(self) -> None:
        self.assertTrue(verifyObject(IDataPath, self.paths.twisted))
        assert self.paths.engine is not None
        self.assertTrue(verifyObject(IDataPath, self.paths.engine))

    def test_plainTcpRunsOnTheEngine(self) -> None:
        path = self.paths.choose(server_config())
        self.assertIsInstance(path, EnginePath)
        assert isinstance(path, EnginePath)
        self.assertIs(path.engine, self.engine)

    def test_tlsTerminationInFrontOfPlainBackendsRunsOnTheEngine(self) -> None:
        """C{protocol = "tls"} with plain TCP backends: TLS on the client's socket, on the engine."""
        path = self.paths.choose(server_config(protocol="tls", tls=TlsConfig(cert_path="c", key_path="k")))
        self.assertIsInstance(path, TlsEnginePath)
        assert isinstance(path, TlsEnginePath)
        self.assertIs(path.engine, self.engine)

    def test_tlsToBackendsRunsOnTwisted(self) -> None:
        plain = server_config()
        for config in (
            attrs.evolve(plain, protocol="tls", tls=TlsConfig(cert_path="c", key_path="k"), backends_tls=BackendsTlsConfig()),
            attrs.evolve(plain, sni=SniConfig(), backends_tls=BackendsTlsConfig()),
            attrs.evolve(plain, backends_tls=BackendsTlsConfig()),
            attrs.evolve(plain, protocol="udp"),
        ):
            self.assertIs(self.paths.choose(config), self.paths.twisted)

    def test_sniRoutingRunsOnTheEngineAfterTheHello(self) -> None:
        """TCP routed by SNI, without TLS at either end, is read through Python until routed, then spliced."""
        path = self.paths.choose(server_config(sni=SniConfig()))
        self.assertIsInstance(path, SniEnginePath)
        self.assertTrue(IReadsFirst.providedBy(path))
        self.assertTrue(verifyObject(IDataPath, path))
        self.assertIsNot(path, self.paths.engine)
        self.assertIs(path, self.paths.choose(server_config(sni=SniConfig(read_timeout=3.0))))

    def test_withoutAnEngineEverythingRunsOnTwisted(self) -> None:
        paths = DataPaths(reactor)
        self.assertIsNone(paths.engine)
        self.assertIsInstance(paths.choose(server_config()), TwistedPath)
        self.assertIsInstance(paths.choose(server_config(sni=SniConfig())), TwistedPath)

    def test_onePathObjectPerKind(self) -> None:
        """A listener's path is compared by identity to tell whether a new configuration needs another."""
        self.assertIs(self.paths.choose(server_config()), self.paths.choose(server_config(max_connections=3)))
