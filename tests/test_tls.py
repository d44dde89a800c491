"""Tests for L{balancer.proxy.tls}: real TLS handshakes over loopback, and the load-time checks."""

from __future__ import annotations

import os
from typing import Any

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from balancer.config.addresses import BackendSpec, HostPort
from balancer.config.schema import BackendsTlsConfig, DiscoveryConfig, ServerConfig, TlsConfig
from balancer.proxy.tls import GO_CIPHERS, BackendTLS, backend_context, check_tls_files, server_context
from balancer.tlsfiles import TLSError
from tests.support.certs import Authority, CertificateSet, make_certificates


class Echo(Protocol):
    """Echoes; fires C{lost} when closed."""

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


class EchoFactory(Factory):
    """Builds L{Echo}s and keeps them, to wait for their end."""

    noisy = False

    def __init__(self) -> None:
        self.echoes: list[Echo] = []

    def buildProtocol(self, addr: Any) -> Echo:
        echo = Echo()
        echo.factory = self
        self.echoes.append(echo)
        return echo


class Pinger(Protocol):
    """
    Sends a ping over TLS; C{done} fires with the negotiated (version,
    cipher) once echoed, or fails with why the connection ended before.
    """

    def __init__(self) -> None:
        self.done: Deferred[tuple[str, str]] = Deferred()
        self._negotiated: tuple[str, str] | None = None

    def connectionMade(self) -> None:
        self.transport.write(b"ping")

    def dataReceived(self, data: bytes) -> None:
        connection = self.transport.getHandle()
        self._negotiated = (connection.get_protocol_version_name(), connection.get_cipher_name())
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._negotiated is not None:
            self.done.callback(self._negotiated)
        else:
            self.done.errback(reason)


class HandshakeTestCase(TestCase):
    """Runs a TLS echo server with L{server_context} and connects to it."""

    timeout = 20

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.certs: CertificateSet = make_certificates(directory)

    def server_config(self, **options: Any) -> TlsConfig:
        return TlsConfig(cert_path=self.certs.server.cert_path, key_path=self.certs.server.key_path, **options)

    def backend_config(self, **options: Any) -> BackendsTlsConfig:
        options.setdefault("root_ca_cert_path", self.certs.ca_path)
        return BackendsTlsConfig(**options)

    @inlineCallbacks
    def handshake(self, server: Any, client: Any):  # type: ignore[no-untyped-def]
        """
        Connect C{client} (a client creator) to a server using C{server} (a
        server creator); fire with the negotiated (version, cipher) or fail.
        """
        factory = EchoFactory()
        port = yield SSL4ServerEndpoint(reactor, 0, server, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        pinger = Pinger()
        endpoint = wrapClientTLS(client, TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port))
        yield connectProtocol(endpoint, pinger)
        try:
            result = yield pinger.done
        finally:
            for echo in factory.echoes:
                yield echo.lost
        return result

    @inlineCallbacks
    def assertHandshakeFails(self, server: Any, client: Any, *errors: type[Exception]):  # type: ignore[no-untyped-def]
        try:
            result = yield self.handshake(server, client)
        except errors:
            return
        self.fail(f"handshake succeeded: {result}")


class ServerContextTests(HandshakeTestCase):
    """L{server_context} terminates TLS as C{[tls]} says."""

    @inlineCallbacks
    def test_handshakeAndVerifiedHostname(self):  # type: ignore[no-untyped-def]
        version, _ = yield self.handshake(
            server_context(self.server_config()), backend_context(self.backend_config(), "localhost")
        )
        self.assertEqual(version, "TLSv1.3")

    @inlineCallbacks
    def test_verifiedIpAddress(self):  # type: ignore[no-untyped-def]
        yield self.handshake(server_context(self.server_config()), backend_context(self.backend_config(), "127.0.0.1"))

    @inlineCallbacks
    def test_maxVersion(self):  # type: ignore[no-untyped-def]
        version, _ = yield self.handshake(
            server_context(self.server_config(max_version="tls1.2")), backend_context(self.backend_config(), "localhost")
        )
        self.assertEqual(version, "TLSv1.2")

    @inlineCallbacks
    def test_minVersionRefusesOlderClient(self):  # type: ignore[no-untyped-def]
        yield self.assertHandshakeFails(
            server_context(self.server_config(min_version="tls1.3")),
            backend_context(self.backend_config(max_version="tls1.2"), "localhost"),
            SSL.Error,
        )

    @inlineCallbacks
    def test_legacyTls1WhenAskedFor(self):  # type: ignore[no-untyped-def]
        version, _ = yield self.handshake(
            server_context(self.server_config(min_version="tls1", max_version="tls1")),
            backend_context(self.backend_config(min_version="tls1.0", max_version="tls1"), "localhost"),
        )
        self.assertEqual(version, "TLSv1")

    @inlineCallbacks
    def test_tls11(self):  # type: ignore[no-untyped-def]
        version, _ = yield self.handshake(
            server_context(self.server_config(min_version="tls1.1", max_version="tls1.1")),
            backend_context(self.backend_config(min_version="tls1"), "localhost"),
        )
        self.assertEqual(version, "TLSv1.1")

    @inlineCallbacks
    def test_defaultMinimumIsTls12(self):  # type: ignore[no-untyped-def]
        yield self.assertHandshakeFails(
            server_context(self.server_config()),
            backend_context(self.backend_config(min_version="tls1", max_version="tls1.1"), "localhost"),
            SSL.Error,
        )

    @inlineCallbacks
    def test_goCipherName(self):  # type: ignore[no-untyped-def]
        _, cipher = yield self.handshake(
            server_context(self.server_config(max_version="tls1.2", ciphers=("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",))),
            backend_context(self.backend_config(), "localhost"),
        )
        self.assertEqual(cipher, "ECDHE-ECDSA-AES128-GCM-SHA256")

    @inlineCallbacks
    def test_opensslCipherName(self):  # type: ignore[no-untyped-def]
        _, cipher = yield self.handshake(
            server_context(self.server_config(max_version="tls1.2", ciphers=("ECDHE-ECDSA-CHACHA20-POLY1305",))),
            backend_context(self.backend_config(), "localhost"),
        )
        self.assertEqual(cipher, "ECDHE-ECDSA-CHACHA20-POLY1305")

    @inlineCallbacks
    def test_noCommonCipher(self):  # type: ignore[no-untyped-def]
        yield self.assertHandshakeFails(
            server_context(self.server_config(max_version="tls1.2", ciphers=("ECDHE-ECDSA-AES128-GCM-SHA256",))),
            backend_context(
                self.backend_config(max_version="tls1.2", ciphers=("ECDHE-ECDSA-AES256-GCM-SHA384",)), "localhost"
            ),
            SSL.Error,
        )

    @inlineCallbacks
    def test_serverOrderWins(self):  # type: ignore[no-untyped-def]
        """As in Go since 1.17, whatever prefer_server_ciphers says."""
        server_order = ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384")
        for prefer in (True, False):
            server = self.server_config(max_version="tls1.2", ciphers=server_order, prefer_server_ciphers=prefer)
            _, cipher = yield self.handshake(
                server_context(server),
                backend_context(self.backend_config(ciphers=server_order[::-1]), "localhost"),
            )
            self.assertEqual(cipher, server_order[0], f"prefer_server_ciphers = {prefer}")

    def test_sessionTickets(self) -> None:
        with_tickets: Any = server_context(self.server_config())
        without_tickets: Any = server_context(self.server_config(session_tickets=False))
        self.assertTrue(with_tickets.enableSessionTickets)
        self.assertFalse(without_tickets.enableSessionTickets)

    @inlineCallbacks
    def test_chainFile(self):  # type: ignore[no-untyped-def]
        """A certificate file holding the leaf and then the intermediate CA that issued it."""
        root = Authority("root CA")
        pair = Authority("intermediate CA", issuer=root).issue(self.certs.directory, "leaf")
        trusting_root = BackendsTlsConfig(root_ca_cert_path=root.write(self.certs.directory, "root"))
        yield self.handshake(
            server_context(TlsConfig(cert_path=pair.cert_path, key_path=pair.key_path)),
            backend_context(trusting_root, "localhost"),
        )


class BackendContextTests(HandshakeTestCase):
    """L{backend_context} verifies backends unless told not to, and can present a client certificate."""

    @inlineCallbacks
    def test_wrongCaFails(self):  # type: ignore[no-untyped-def]
        yield self.assertHandshakeFails(
            server_context(self.server_config()),
            backend_context(self.backend_config(root_ca_cert_path=self.certs.other_ca_path), "localhost"),
            SSL.Error,
        )

    @inlineCallbacks
    def test_wrongHostnameFails(self):  # type: ignore[no-untyped-def]
        yield self.assertHandshakeFails(
            server_context(self.server_config()),
            backend_context(self.backend_config(), "db.example.com"),
            VerificationError,
            SSL.Error,
        )

    @inlineCallbacks
    def test_systemTrustStoreDoesNotKnowTestCa(self):  # type: ignore[no-untyped-def]
        yield self.assertHandshakeFails(
            server_context(self.server_config()),
            backend_context(BackendsTlsConfig(), "localhost"),
            SSL.Error,
        )

    @inlineCallbacks
    def test_ignoreVerifyPasses(self):  # type: ignore[no-untyped-def]
        yield self.handshake(
            server_context(self.server_config()),
            backend_context(
                self.backend_config(root_ca_cert_path=self.certs.other_ca_path, ignore_verify=True), "db.example.com"
            ),
        )

    def require_client_certificate(self) -> Any:
        """A server context that demands a client certificate issued by the test CA."""
        ca = ssl.Certificate.loadPEM(open(self.certs.ca_path, "rb").read())
        server = ssl.PrivateCertificate.loadPEM(
            open(self.certs.server.cert_path, "rb").read() + open(self.certs.server.key_path, "rb").read()
        )
        return server.options(ca)

    def test_creatorKeptPerHost(self) -> None:
        loaded = BackendTLS(self.backend_config())
        self.assertIs(loaded.creator("127.0.0.1"), loaded.creator("127.0.0.1"))
        self.assertIsNot(loaded.creator("127.0.0.1"), loaded.creator("localhost"))

    @inlineCallbacks
    def test_clientCertificate(self):  # type: ignore[no-untyped-def]
        client = self.backend_config(cert_path=self.certs.client.cert_path, key_path=self.certs.client.key_path)
        yield self.handshake(self.require_client_certificate(), backend_context(client, "localhost"))

    @inlineCallbacks
    def test_noClientCertificateFails(self):  # type: ignore[no-untyped-def]
        yield self.assertHandshakeFails(
            self.require_client_certificate(), backend_context(self.backend_config(), "localhost"), SSL.Error
        )


class RefusedSettingsTests(SynchronousTestCase):
    """Settings that cannot be honoured raise L{TLSError} naming the key."""

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.certs = make_certificates(directory)

    def config(self, **options: Any) -> TlsConfig:
        options.setdefault("cert_path", self.certs.server.cert_path)
        options.setdefault("key_path", self.certs.server.key_path)
        return TlsConfig(**options)

    def assertRefused(self, key: str, text: str, config: Any) -> None:
        make = server_context if isinstance(config, TlsConfig) else lambda c: backend_context(c, "localhost")
        error = self.assertRaises(TLSError, make, config)
        self.assertEqual(error.key, key)
        self.assertIn(text, error.message)

    def test_ssl3(self) -> None:
        self.assertRefused("tls.min_version", "SSL 3.0", self.config(min_version="ssl3"))
        self.assertRefused("backends_tls.max_version", "SSL 3.0", BackendsTlsConfig(max_version="ssl3"))

    def test_minAboveMax(self) -> None:
        self.assertRefused("tls.min_version", "above max_version", self.config(min_version="tls1.3", max_version="tls1.2"))

    def test_unknownCipher(self) -> None:
        self.assertRefused("tls.ciphers[1]", "unknown cipher suite", self.config(ciphers=("AES128-SHA", "FAST-CIPHER")))

    def test_tls13Suite(self) -> None:
        self.assertRefused("backends_tls.ciphers[0]", "TLS 1.3", BackendsTlsConfig(ciphers=("TLS_AES_128_GCM_SHA256",)))

    def test_removedSuite(self) -> None:
        self.assertRefused("tls.ciphers[0]", "no longer", self.config(ciphers=("TLS_RSA_WITH_RC4_128_SHA",)))

    def test_everyGoNameIsKnownToOpenssl(self) -> None:
        for go_name in GO_CIPHERS:
            server_context(self.config(ciphers=(go_name,)))

    def test_missingCertificate(self) -> None:
        self.assertRefused("tls.cert_path", "cannot read", self.config(cert_path="/nonexistent/cert.pem"))

    def test_missingRootCa(self) -> None:
        missing = BackendsTlsConfig(root_ca_cert_path="/nonexistent/ca.pem")
        self.assertRefused("backends_tls.root_ca_cert_path", "cannot read", missing)


def server_with(**sections: Any) -> ServerConfig:
    """A C{protocol = "tls"} server config with the given TLS sections."""
    return ServerConfig(
        bind=HostPort("127.0.0.1", 0),
        discovery=DiscoveryConfig(kind="static", static_list=(BackendSpec("127.0.0.1", 8000),)),
        protocol="tls" if "tls" in sections else "tcp",
        **sections,
    )


class CheckTlsFilesTests(SynchronousTestCase):
    """L{check_tls_files} reports every problem at once, by dotted key."""

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.certs = make_certificates(self.directory)

    def write(self, name: str, content: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(content)
        return path

    def check(self, **tls: Any) -> list[tuple[str, str]]:
        tls.setdefault("cert_path", self.certs.server.cert_path)
        tls.setdefault("key_path", self.certs.server.key_path)
        return check_tls_files(server_with(tls=TlsConfig(**tls)))

    def keys(self, problems: list[tuple[str, str]]) -> list[str]:
        return [key for key, _ in problems]

    def test_goodFiles(self) -> None:
        self.assertEqual(self.check(), [])
        backends = BackendsTlsConfig(
            root_ca_cert_path=self.certs.ca_path, cert_path=self.certs.client.cert_path, key_path=self.certs.client.key_path
        )
        self.assertEqual(check_tls_files(server_with(backends_tls=backends)), [])

    def test_noTlsSections(self) -> None:
        self.assertEqual(check_tls_files(server_with()), [])

    def test_missingFiles(self) -> None:
        problems = self.check(cert_path="/nonexistent/cert.pem", key_path="/nonexistent/key.pem")
        self.assertEqual(self.keys(problems), ["tls.cert_path", "tls.key_path"])
        self.assertIn('cannot read "/nonexistent/cert.pem"', problems[0][1])

    def test_notACertificate(self) -> None:
        problems = self.check(cert_path=self.write("junk.pem", b"not a certificate\n"))
        self.assertEqual(self.keys(problems), ["tls.cert_path"])
        self.assertIn("no PEM certificate", problems[0][1])

    def test_notAKey(self) -> None:
        problems = self.check(key_path=self.certs.server.cert_path)
        self.assertEqual(self.keys(problems), ["tls.key_path"])
        self.assertIn("no PEM private key", problems[0][1])

    def test_keyOfAnotherCertificate(self) -> None:
        problems = self.check(key_path=self.certs.client.key_path)
        self.assertEqual(self.keys(problems), ["tls.key_path"])
        self.assertIn("is not the key of the certificate", problems[0][1])

    def test_encryptedKey(self) -> None:
        key = serialization.load_pem_private_key(open(self.certs.server.key_path, "rb").read(), None)
        encrypted = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"secret")
        )
        problems = self.check(key_path=self.write("encrypted.key", encrypted))
        self.assertEqual(self.keys(problems), ["tls.key_path"])
        self.assertIn("encrypted", problems[0][1])

    def test_severalProblemsAtOnce(self) -> None:
        problems = self.check(min_version="ssl3", ciphers=("NOPE",), key_path=self.certs.client.key_path)
        self.assertEqual(self.keys(problems), ["tls.min_version", "tls.ciphers[0]", "tls.key_path"])

    def test_backendsTls(self) -> None:
        backends = BackendsTlsConfig(
            root_ca_cert_path=self.write("bad-ca.pem", b"junk"),
            cert_path=self.certs.client.cert_path,
            key_path=self.certs.server.key_path,
            max_version="ssl3",
        )
        problems = check_tls_files(server_with(backends_tls=backends))
        self.assertEqual(
            self.keys(problems),
            ["backends_tls.max_version", "backends_tls.key_path", "backends_tls.root_ca_cert_path"],
        )

    def test_acmeWithoutFiles(self) -> None:
        self.assertEqual(check_tls_files(server_with(tls=TlsConfig(acme_hosts=("example.com",)))), [])
