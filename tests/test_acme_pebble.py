"""
ACME end to end: a real twistd balancer orders certificates for its
C{acme_hosts} from Debian's C{pebble} ACME test server, which validates
HTTP-01 on C{[acme] http_bind} and TLS-ALPN-01 on the server's own
listener; a client asking for the name (SNI) gets pebble's certificate.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Generator

from cryptography import x509
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support.paths import scratch_directory
from tests.support.pebble import Pebble, served_certificate
from tests.support.ports import refusing_port
from tests.support.processes import WatchedProcess, spawn_balancer

HOST = "web.acme.test"


def acme_config(directory: str, pebble: Pebble, challenge: str, backend_port: int, workers: int = 1) -> str:
    """Write a balancer configuration with one TLS server of C{acme_hosts = [HOST]}; return its path."""
    path = os.path.join(directory, "balancer.toml")
    with open(path, "w") as f:
        f.write(
            f"""
[defaults]
workers = {workers}

[acme]
challenge = "{challenge}"
http_bind = "127.0.0.1:0"
cache_dir = "{os.path.join(directory, 'cache')}"
directory_url = "{pebble.directory_url}"
directory_ca_cert_path = "{pebble.ca_path}"

[servers.web]
bind = "127.0.0.1:0"
protocol = "tls"

  [servers.web.tls]
  acme_hosts = ["{HOST}"]

  [servers.web.discovery]
  kind = "static"
  static_list = ["127.0.0.1:{backend_port}"]
"""
        )
    return path


def issuer(certificate: x509.Certificate) -> str:
    """The common name of C{certificate}'s issuer."""
    return str(certificate.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def names(certificate: x509.Certificate) -> list[str]:
    """The DNS names of C{certificate}'s subjectAltName."""
    return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )


class PebbleTests(TestCase):
    """Certificates from pebble, through each challenge we answer."""

    timeout = 120

    def setUp(self) -> None:
        self.directory = scratch_directory(self)
        self.pebble = Pebble(self.directory)

    @inlineCallbacks
    def issued(self, challenge: str, workers: int = 1) -> Generator[Deferred[Any], Any, tuple[WatchedProcess, int]]:
        """Start the balancer, then pebble on its ports; fire once the certificate is issued."""
        config = acme_config(self.directory, self.pebble, challenge, refusing_port(self), workers)
        balancer = spawn_balancer(self, config, marker=b"web: listening on")
        tls_port = yield balancer.listening_port("web")
        http_port = tls_port
        if challenge == "http":
            http_port = yield balancer.listening_port("acme")
        yield self.pebble.start(self, http_port=http_port, tls_port=tls_port)
        yield balancer.wait_for(rb"acme: certificate for web\.acme\.test valid until", 60)
        return balancer, tls_port

    @inlineCallbacks
    def test_http01(self) -> Generator[Deferred[Any], Any, None]:
        _, port = yield self.issued("http")
        root = yield self.pebble.root_pem()
        served = yield served_certificate(port, HOST, trusted=root)
        self.assertEqual(names(served), [HOST])
        self.assertIn("Pebble Intermediate CA", issuer(served))
        self.assertTrue(os.path.exists(os.path.join(self.directory, "cache", HOST)))

    @inlineCallbacks
    def test_tlsAlpn01(self) -> Generator[Deferred[Any], Any, None]:
        _, port = yield self.issued("sni")
        root = yield self.pebble.root_pem()
        served = yield served_certificate(port, HOST, trusted=root)
        self.assertEqual(names(served), [HOST])
        self.assertIn("Pebble Intermediate CA", issuer(served))

    @inlineCallbacks
    def test_http01WithTwoWorkers(self) -> Generator[Deferred[Any], Any, None]:
        """Worker 0 orders; worker 1 serves the certificate too (every handshake gets it)."""
        balancer, port = yield self.issued("http", workers=2)
        yield balancer.wait_for(rb"\[worker 1\] acme: serving the certificate for web\.acme\.test from ")
        for _ in range(20):
            served = yield served_certificate(port, HOST)
            self.assertEqual(names(served), [HOST])

    @inlineCallbacks
    def test_tlsAlpn01WithTwoWorkers(self) -> Generator[Deferred[Any], Any, None]:
        """Worker 1 answers TLS-ALPN-01 too (the CA may reach either), with the certificate worker 0 sends."""
        config = acme_config(self.directory, self.pebble, "sni", refusing_port(self), workers=2)
        balancer = spawn_balancer(self, config, marker=b"web: listening on")
        port = yield balancer.listening_port("web")
        yield balancer.wait_for(rb"worker 1 \(pid \d+\) serving")
        yield self.pebble.start(self, http_port=port, tls_port=port)
        yield balancer.wait_for(rb"acme: certificate for web\.acme\.test valid until", 60)
        # Only attempts before pebble listened failed: the first validation passed, whichever worker it reached.
        self.assertNotIn(b"ValidationError", balancer.output)
        yield balancer.wait_for(rb"\[worker 1\] acme: serving the certificate for web\.acme\.test from ")
        for _ in range(20):
            served = yield served_certificate(port, HOST)
            self.assertEqual(names(served), [HOST])

    @inlineCallbacks
    def test_serverAddedByReloadGetsItsCertificate(self) -> Generator[Deferred[Any], Any, None]:
        """A reload (SIGHUP) that adds a server with new acme_hosts: worker 0 orders them, the new listener serves them."""
        balancer, _ = yield self.issued("http")
        config = os.path.join(self.directory, "balancer.toml")
        with open(config, "a") as f:
            f.write(
                '\n[servers.more]\nbind = "127.0.0.1:0"\nprotocol = "tls"\n'
                '[servers.more.tls]\nacme_hosts = ["more.acme.test"]\n'
                f'[servers.more.discovery]\nkind = "static"\nstatic_list = ["127.0.0.1:{refusing_port(self)}"]\n'
            )
        assert balancer.transport is not None
        os.kill(balancer.transport.pid, signal.SIGHUP)
        port = yield balancer.listening_port("more")
        yield balancer.wait_for(rb"acme: certificate for more\.acme\.test valid until", 60)
        served = yield served_certificate(port, "more.acme.test")
        self.assertEqual(names(served), ["more.acme.test"])

    @inlineCallbacks
    def test_cachedCertificateReusedAtStart(self) -> Generator[Deferred[Any], Any, None]:
        """Restarted with pebble gone, the balancer serves the certificate from cache_dir and orders nothing."""
        balancer, _ = yield self.issued("http")
        root = yield self.pebble.root_pem()
        yield balancer.stop()
        assert self.pebble.process is not None
        yield self.pebble.process.stop()
        again = spawn_balancer(self, os.path.join(self.directory, "balancer.toml"), marker=b"web: listening on")
        port = yield again.listening_port("web")
        yield again.wait_for(rb"acme: serving the certificate for web\.acme\.test from ")
        served = yield served_certificate(port, HOST, trusted=root)
        self.assertEqual(names(served), [HOST])
        self.assertNotIn(b"acme: ordering", again.output)
