"""
L{balancer.proxy.tls_relay.RelayTLSFactory}: what a relay writes to a TLS
side is encrypted and handed to the TCP transport at once, not held for a
timer until the next turn of the reactor (Twisted's default TLS transport
aggregates small writes that way); the listener and backend TLS factories
are such factories.  Handshakes run in memory, on a memory reactor.
"""

from __future__ import annotations

import os

from OpenSSL import SSL
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from balancer.config.schema import TlsConfig
from balancer.proxy.tls import server_context
from balancer.proxy.tls_relay import BackendTLSFactory, RelayTLSFactory
from tests.support.certs import make_certificates


class TlsWritesTests(SynchronousTestCase):
    """A write to a relay's TLS side goes out in the same call."""

    def test_writeReachesTheTcpTransportAtOnce(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        certs = make_certificates(directory)
        clock = MemoryReactorClock()
        config = TlsConfig(cert_path=certs.server.cert_path, key_path=certs.server.key_path)
        factory = RelayTLSFactory(server_context(config), False, Factory.forProtocol(Protocol), clock)
        server = factory.buildProtocol(None)
        tcp = StringTransport()
        server.makeConnection(tcp)
        client = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        client.set_connect_state()
        for _ in range(10):
            try:
                client.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                server.dataReceived(client.bio_read(65536))
            except SSL.WantReadError:
                pass
            if tcp.value():
                client.bio_write(tcp.value())
                tcp.clear()
        self.assertTrue(server.wrappedProtocol.connected)
        tcp.clear()
        server.write(b"relayed bytes")
        self.assertEqual(clock.getDelayedCalls(), [])
        client.bio_write(tcp.value())
        self.assertEqual(client.recv(100), b"relayed bytes")

    def test_listenerAndBackendFactoriesAreRelayFactories(self) -> None:
        self.assertTrue(issubclass(BackendTLSFactory, RelayTLSFactory))
