"""
One OpenSSL context per certificate (L{balancer.proxy.tls.server_context}):
the listener's connections share the context of their certificate (the
files', an ACME name's, a TLS-ALPN-01 challenge's) instead of building one
each; a renewed certificate gets a new one.  Handshakes run in memory.
"""

from __future__ import annotations

import os
from typing import Any

from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from balancer.acme import ordering
from balancer.acme.cache import parse
from balancer.acme.certificates import AcmeCertificates
from balancer.config.schema import TlsConfig
from balancer.proxy.tls import server_context
from tests.support.certs import Authority
from tests.support.memory_tls import memory_handshake


def pem(directory: str, hostname: str) -> bytes:
    """A key and a certificate for C{hostname} from a new test CA, in the ACME cache's format."""
    pair = Authority().issue(directory, hostname, hostnames=(hostname,), ips=())
    with open(pair.key_path, "rb") as k, open(pair.cert_path, "rb") as c:
        return k.read() + c.read()


def server_after_handshake(creator: Any, server_name: bytes | None, alpn: bytes | None = None) -> SSL.Connection:
    """A server connection of C{creator} after a client's handshake with it (in memory); a failed handshake raises."""
    _, server, error = memory_handshake(creator, server_name, alpn)
    if error is not None:
        raise error
    return server


class ContextPerCertificateTests(SynchronousTestCase):
    """Connections reuse their certificate's context."""

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.certificates = AcmeCertificates("sni")
        self.certificates.put("a.test", parse(pem(self.directory, "a.test"), "a"))
        pair = Authority().issue(self.directory, "files", hostnames=("files.test",), ips=())
        self.creator = server_context(
            TlsConfig(cert_path=pair.cert_path, key_path=pair.key_path, acme_hosts=("a.test",)),
            self.certificates.only(["a.test"]),
        )

    def test_filesCertificateContextShared(self) -> None:
        first = server_after_handshake(self.creator, b"other.test").get_context()
        self.assertIs(server_after_handshake(self.creator, None).get_context(), first)

    def test_acmeNameContextSharedUntilRenewed(self) -> None:
        first = server_after_handshake(self.creator, b"a.test").get_context()
        self.assertIs(server_after_handshake(self.creator, b"a.test").get_context(), first)
        self.certificates.put("a.test", parse(pem(self.directory, "a.test"), "a"))
        renewed = server_after_handshake(self.creator, b"a.test").get_context()
        self.assertIsNot(renewed, first)
        self.assertIs(server_after_handshake(self.creator, b"a.test").get_context(), renewed)

    def test_challengeContextSharedUntilAnotherChallenge(self) -> None:
        """A CA validating a name connects several times: one context per challenge certificate."""
        challenge = parse(ordering.alpn_certificate("a.test", "key-authorization"), "alpn")
        self.certificates.answer_tls("a.test", challenge.pair)
        first = server_after_handshake(self.creator, b"a.test", b"acme-tls/1")
        self.assertEqual(first.get_alpn_proto_negotiated(), b"acme-tls/1")
        self.assertIs(server_after_handshake(self.creator, b"a.test", b"acme-tls/1").get_context(), first.get_context())
        other = parse(ordering.alpn_certificate("a.test", "another-authorization"), "alpn")
        self.certificates.answer_tls("a.test", other.pair)
        self.assertIsNot(server_after_handshake(self.creator, b"a.test", b"acme-tls/1").get_context(), first.get_context())
