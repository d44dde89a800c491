"""The listener kinds (L{balancer.listeners}): which kind a configuration makes."""

from __future__ import annotations

import attrs
from twisted.trial.unittest import SynchronousTestCase

from balancer.config.addresses import HostPort
from balancer.config.schema import DiscoveryConfig, ServerConfig, SniConfig, TlsConfig
from balancer.listeners import KINDS, kind_of


class KindTests(SynchronousTestCase):
    """Each protocol and C{[sni]} make one kind, and every kind has its module."""

    def test_kindsByConfiguration(self) -> None:
        plain = ServerConfig(bind=HostPort("127.0.0.1", 0), discovery=DiscoveryConfig(kind="static"))
        tls = attrs.evolve(plain, protocol="tls", tls=TlsConfig(cert_path="c", key_path="k"))
        self.assertEqual(
            [
                kind_of(plain),
                kind_of(attrs.evolve(plain, sni=SniConfig())),
                kind_of(tls),
                kind_of(attrs.evolve(tls, sni=SniConfig())),
                kind_of(attrs.evolve(plain, protocol="udp")),
            ],
            ["tcp", "sni", "tls", "tls", "udp"],
        )

    def test_everyKindListens(self) -> None:
        self.assertEqual(sorted(KINDS), ["sni", "tcp", "tls", "udp"])
