"""
The ACME parts without a CA: the cache (gobetween's file format), the
schedule of orders, renewals and retries (L{AcmeService} on a fake clock with
a fake order), the certificate chosen by server name and the TLS-ALPN-01
answer (in-memory handshakes), the HTTP-01 resource, the worker message.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from balancer.acme import ordering
from balancer.acme.cache import ACCOUNT_FILE, CacheError, CertificateCache, parse
from balancer.acme.certificates import AcmeCertificates
from balancer.acme.http01 import challenge_site
from balancer.acme.service import RENEW_BEFORE, AcmeService, acme_hosts, renewal_time
from balancer.config.load import parse_config
from balancer.config.schema import AcmeConfig, TlsConfig
from balancer.proxy.tls import server_context
from balancer.workers.child import AcmeChallenge, AcmeIssued, read_message
from balancer.workers.supervisor import certificate_message, challenge_message
from tests.support.certs import Authority
from tests.support.memory_tls import memory_handshake

DAY = datetime.timedelta(days=1)


def chain_pem(directory: str, hostname: str, authority: Authority | None = None) -> bytes:
    """A key and a certificate for C{hostname} (30 days, from a test CA) in the cache's format."""
    pair = (authority or Authority()).issue(directory, hostname, hostnames=(hostname,), ips=())
    with open(pair.key_path, "rb") as k, open(pair.cert_path, "rb") as c:
        return k.read() + c.read()


class FakeOrders:
    """L{ordering.order} stand-in: each call waits on a Deferred the test fires."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Callable[..., None], Callable[..., None], Deferred[bytes]]] = []

    def __call__(self, directory: Any, account: bytes, hostname: str, kind: str, answer: Any, withdraw: Any) -> Any:
        waiting: Deferred[bytes] = Deferred()
        self.calls.append((hostname, kind, answer, withdraw, waiting))
        return waiting


class AcmeServiceTests(SynchronousTestCase):
    """When certificates are ordered, renewed and retried, and where they go."""

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.reactor = MemoryReactorClock()
        self.reactor.advance(datetime.datetime.now(datetime.timezone.utc).timestamp())
        self.certificates = AcmeCertificates()
        self.orders = FakeOrders()
        self.told: list[str] = []

    def service(self, *hosts: str) -> AcmeService:
        service = AcmeService(
            AcmeConfig(cache_dir=self.directory),
            hosts,
            self.certificates,
            self.reactor,
            order=self.orders,
            in_thread=lambda f, *args: maybeDeferred(f, *args),
            from_thread=lambda f, *args: f(*args),
            issued=self.told.append,
        )
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def test_ordersAtStartWithoutCache(self) -> None:
        self.service("a.test")
        [(hostname, kind, _, _, waiting)] = self.orders.calls
        self.assertEqual((hostname, kind), ("a.test", "http"))
        self.assertIsNone(self.certificates.certificate("a.test"))
        pem = chain_pem(self.directory, "issued")
        waiting.callback(pem)
        self.assertIsNotNone(self.certificates.certificate("a.test"))
        with open(os.path.join(self.directory, "a.test"), "rb") as f:
            self.assertEqual(f.read(), pem)
        self.assertEqual(self.told, ["a.test"])
        self.assertTrue(os.path.exists(os.path.join(self.directory, ACCOUNT_FILE)))

    def test_cachedCertificateIsServedAndRenewedBeforeExpiry(self) -> None:
        pem = chain_pem(self.directory, "cached")
        CertificateCache(self.directory).store("a.test", pem)
        self.service("a.test")
        self.assertEqual(self.orders.calls, [])
        self.assertIsNotNone(self.certificates.certificate("a.test"))
        issued = parse(pem, "test")
        due = (renewal_time(issued) - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        self.reactor.advance(due - 60)
        self.assertEqual(self.orders.calls, [])
        self.reactor.advance(120)
        self.assertEqual([c[0] for c in self.orders.calls], ["a.test"])
        # The old certificate is served until the new one is there.
        self.assertEqual(self.certificates.issued("a.test").pem, pem)  # type: ignore[union-attr]
        renewed = chain_pem(self.directory, "renewed")
        self.orders.calls[0][4].callback(renewed)
        self.assertEqual(self.certificates.issued("a.test").pem, renewed)  # type: ignore[union-attr]

    def test_renewalTime(self) -> None:
        start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
        ninety = parse(chain_pem(self.directory, "x"), "x")
        self.assertEqual(renewal_time(ninety), ninety.not_after - min(RENEW_BEFORE, (ninety.not_after - ninety.not_before) / 3))
        long = type(ninety)(ninety.pair, start, start + 90 * DAY, b"")
        self.assertEqual(renewal_time(long), start + 60 * DAY)
        short = type(ninety)(ninety.pair, start, start + 6 * DAY, b"")
        self.assertEqual(renewal_time(short), start + 4 * DAY)

    def test_failuresAreRetriedWithBackoff(self) -> None:
        self.service("a.test")
        delays = []
        for attempt in range(5):
            self.orders.calls[-1][4].errback(ordering.OrderError("ConnectionError: refused"))
            [call] = self.reactor.getDelayedCalls()
            delays.append(call.getTime() - self.reactor.seconds())
            self.reactor.advance(delays[-1])
        self.assertEqual(delays, [2, 4, 8, 16, 32])
        self.assertEqual(len(self.orders.calls), 6)
        self.orders.calls[-1][4].callback(chain_pem(self.directory, "at last"))
        self.assertIsNotNone(self.certificates.certificate("a.test"))

    def test_httpChallengeIsAnsweredThenWithdrawn(self) -> None:
        self.service("a.test")
        _, _, answer, withdraw, _ = self.orders.calls[0]
        challenge = ordering.challenges.HTTP01(token=b"t" * 32)
        answer(challenge, "key-authorization")
        token = challenge.encode("token")
        self.assertEqual(self.certificates.http_answer(token), "key-authorization")
        withdraw(challenge)
        self.assertIsNone(self.certificates.http_answer(token))

    def test_tlsAlpnChallengeIsAnsweredThenWithdrawn(self) -> None:
        self.service("a.test")
        _, _, answer, withdraw, _ = self.orders.calls[0]
        challenge = ordering.TLSALPN01(token=b"t" * 32)
        answer(challenge, "key-authorization")
        pair = self.certificates.challenge("a.test")
        assert pair is not None
        extension = pair.certificate.to_cryptography().extensions.get_extension_for_oid(ordering.ACME_IDENTIFIER)
        self.assertTrue(extension.critical)
        self.assertEqual(
            extension.value.value, b"\x04\x20" + hashlib.sha256(b"key-authorization").digest()  # type: ignore[attr-defined]
        )
        withdraw(challenge)
        self.assertIsNone(self.certificates.challenge("a.test"))

    def test_stopCancelsPlannedOrders(self) -> None:
        service = self.service("a.test")
        self.orders.calls[0][4].errback(ordering.OrderError("refused"))
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        service.stopService()
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class CacheTests(SynchronousTestCase):
    """C{cache_dir}'s files, as gobetween's autocert writes them."""

    def test_keyThenChain(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        authority = Authority("root")
        pem = chain_pem(directory, "a.test", Authority("intermediate", issuer=authority))
        issued = parse(pem, "a.test")
        self.assertEqual(len(issued.pair.chain), 1)
        self.assertEqual(issued.not_after - issued.not_before, 31 * DAY)

    def test_unusableFileIsNamed(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, "a.test"), "wb") as f:
            f.write(b"not pem")
        with self.assertRaises(CacheError) as caught:
            CertificateCache(directory).load("a.test")
        self.assertIn(os.path.join(directory, "a.test"), str(caught.exception))

    def test_accountKeyIsKept(self) -> None:
        cache = CertificateCache(self.mktemp())
        first = cache.account_key()
        self.assertEqual(cache.account_key(), first)
        serialization.load_pem_private_key(first, password=None)
        self.assertEqual(os.stat(os.path.join(cache.directory, ACCOUNT_FILE)).st_mode & 0o777, 0o600)


def handshake(creator: Any, server_name: bytes | None, alpn: bytes | None = None) -> SSL.Connection:
    """A client handshake with a server connection of C{creator}, in memory; the client's end (also after a failure)."""
    client, _, _ = memory_handshake(creator, server_name, alpn)
    return client


def subject(connection: SSL.Connection) -> str:
    certificate = connection.get_peer_certificate(as_cryptography=True)
    assert certificate is not None
    return str(certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


class ServerNameTests(SynchronousTestCase):
    """The certificate a TLS listener of C{acme_hosts} sends, by the client's server name."""

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.certificates = AcmeCertificates("sni")
        self.certificates.put("a.test", parse(chain_pem(self.directory, "a.test"), "a"))
        self.creator = server_context(TlsConfig(acme_hosts=("a.test", "b.test")), self.certificates.only(["a.test", "b.test"]))

    def test_knownNameGetsItsCertificate(self) -> None:
        self.assertEqual(subject(handshake(self.creator, b"A.test")), "a.test")

    def test_renewedCertificateServedToNewHandshakes(self) -> None:
        handshake(self.creator, b"a.test")
        self.certificates.put("a.test", parse(chain_pem(self.directory, "renewed.a.test"), "a"))
        self.assertEqual(subject(handshake(self.creator, b"a.test")), "renewed.a.test")

    def test_nameWithoutCertificateIsRefusedAndLoggedOnce(self) -> None:
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        for _ in range(3):
            self.assertIsNone(handshake(self.creator, b"b.test").get_peer_certificate())
        self.assertIsNone(handshake(self.creator, b"other.test").get_peer_certificate())
        told = [e for e in logged if "no certificate for" in e.get("log_format", "")]
        self.assertEqual([e["hostname"] for e in told], ["b.test"])

    def test_tlsAlpnChallengeOnlyForAcmeTls(self) -> None:
        challenge = parse(ordering.alpn_certificate("a.test", "key-authorization"), "alpn")
        self.certificates.answer_tls("a.test", challenge.pair)
        validation = handshake(self.creator, b"a.test", b"acme-tls/1")
        self.assertEqual(validation.get_alpn_proto_negotiated(), b"acme-tls/1")
        self.assertIsNotNone(
            validation.get_peer_certificate(as_cryptography=True).extensions.get_extension_for_oid(  # type: ignore[union-attr]
                ordering.ACME_IDENTIFIER
            )
        )
        self.assertEqual(subject(handshake(self.creator, b"a.test", b"h2")), "a.test")

    def test_filesStillServeOtherNames(self) -> None:
        pair = Authority().issue(self.directory, "files", hostnames=("files.test",), ips=())
        creator = server_context(
            TlsConfig(cert_path=pair.cert_path, key_path=pair.key_path, acme_hosts=("a.test",)),
            self.certificates.only(["a.test"]),
        )
        self.assertEqual(subject(handshake(creator, b"a.test")), "a.test")
        self.assertEqual(subject(handshake(creator, b"other.test")), "files.test")
        self.assertEqual(subject(handshake(creator, None)), "files.test")


class Http01Tests(SynchronousTestCase):
    """C{GET /.well-known/acme-challenge/TOKEN} on C{http_bind}."""

    def render(self, certificates: AcmeCertificates, *path: bytes) -> tuple[int, bytes]:
        site = challenge_site(certificates)
        request = DummyRequest(list(path))
        resource = site.getResourceFor(request)
        body = resource.render(request)
        return request.responseCode or 200, body if isinstance(body, bytes) else b"".join(request.written)

    def test_answersTokenBeingValidated(self) -> None:
        certificates = AcmeCertificates()
        certificates.answer_http("tok", "tok.thumb")
        self.assertEqual(self.render(certificates, b".well-known", b"acme-challenge", b"tok"), (200, b"tok.thumb"))
        certificates.answer_http("tok", None)
        self.assertEqual(self.render(certificates, b".well-known", b"acme-challenge", b"tok")[0], 404)
        self.assertEqual(self.render(certificates, b"other")[0], 404)


class ConfigTests(SynchronousTestCase):
    """Hosts collected from the servers, and the workers' message."""

    def test_acmeHostsOnceEach(self) -> None:
        config = parse_config(
            b'[acme]\n[servers.a]\nbind = ":1"\nprotocol = "tls"\n[servers.a.tls]\nacme_hosts = ["x.test", "Y.test"]\n'
            b'[servers.a.discovery]\nkind = "static"\nstatic_list = ["127.0.0.1:9"]\n'
            b'[servers.b]\nbind = ":2"\nprotocol = "tls"\n[servers.b.tls]\nacme_hosts = ["y.test"]\n'
            b'[servers.b.discovery]\nkind = "static"\nstatic_list = ["127.0.0.1:9"]\n',
            "x.toml",
        )
        self.assertEqual(acme_hosts(config), ["x.test", "y.test"])

    def test_workerMessage(self) -> None:
        self.assertEqual(read_message(certificate_message("a.test")), AcmeIssued("a.test"))

    def test_workerChallengeMessage(self) -> None:
        pem = ordering.alpn_certificate("a.test", "key-authorization")
        self.assertEqual(read_message(challenge_message("a.test", pem)), AcmeChallenge("a.test", pem))
        self.assertEqual(read_message(challenge_message("a.test", None)), AcmeChallenge("a.test", None))


class WantedTests(SynchronousTestCase):
    """A listener made at runtime (a server added or changed) with new C{acme_hosts}."""

    def test_newHostsAreOrderedOnce(self) -> None:
        directory = self.mktemp()
        certificates = AcmeCertificates()
        orders = FakeOrders()
        service = AcmeService(
            AcmeConfig(cache_dir=directory), ["a.test"], certificates, MemoryReactorClock(),
            order=orders, in_thread=lambda f, *args: maybeDeferred(f, *args), from_thread=lambda f, *args: f(*args),
        )
        certificates.only(["a.test"])
        self.assertEqual(orders.calls, [])
        service.startService()
        certificates.only(["a.test", "B.test"])
        certificates.only(["b.test"])
        self.assertEqual([c[0] for c in orders.calls], ["a.test", "b.test"])
        service.stopService()
        certificates.only(["c.test"])
        self.assertEqual(len(orders.calls), 2)
