"""
One certificate order with the C{acme} library (RFC 8555): blocking, for a
thread (L{balancer.acme.service} runs it with C{deferToThread}).

The library has no TLS-ALPN-01 (RFC 8737) types any more; the two small
classes here register it, and L{alpn_certificate} makes its self-signed
certificate.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Any, Callable

import attrs
import josepy as jose
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ObjectIdentifier

from balancer.acme.cache import new_key_pem

#: How long one order may take, validation included.
ORDER_TIMEOUT = datetime.timedelta(seconds=90)
#: id-pe-acmeIdentifier, the extension of a TLS-ALPN-01 certificate.
ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """The (empty) answer to a TLS-ALPN-01 challenge."""

    typ = "tls-alpn-01"


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """A TLS-ALPN-01 challenge: its validation is the key authorization."""

    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: jose.JWK, **unused: Any) -> str:
        """The key authorization, which L{alpn_certificate} certifies."""
        return self.key_authorization(account_key)


#: Our challenge kinds and the ACME challenge type each answers.
CHALLENGE_TYPES = {"http": challenges.HTTP01, "sni": TLSALPN01, "tls": TLSALPN01}


class OrderError(Exception):
    """An order that did not give a certificate; the message says why."""


@attrs.frozen
class Directory:
    """
    Where to order: C{[acme] directory_url}, and the CA file that verifies
    it (C{None}: the system's roots).
    """

    url: str
    ca_path: str | None = None


def order(
    directory: Directory,
    account_pem: bytes,
    hostname: str,
    kind: str,
    answer: Callable[[Any, str], None],
    withdraw: Callable[[Any], None],
) -> bytes:
    """
    Order a certificate for C{hostname}, answering its challenge of C{kind}.

    @param account_pem: the account's EC P-256 private key; the account is
        created at the CA if it has none.
    @param answer: called (through the reactor) with each challenge and its
        validation before the CA is told to check it.
    @param withdraw: called with each answered challenge once the order ended.
    @return: the new private key and the certificate chain, in PEM (as cached).
    @raise OrderError: when the CA refuses or cannot be reached.
    """
    key = jose.JWKEC(key=serialization.load_pem_private_key(account_pem, password=None))
    network = client.ClientNetwork(
        key, alg=jose.ES256, verify_ssl=directory.ca_path or True, user_agent="balancer"  # type: ignore[arg-type]
    )
    answered: list[Any] = []
    try:
        acme = client.ClientV2(client.ClientV2.get_directory(directory.url, network), network)
        try:
            acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
        except errors.ConflictError as e:
            network.account = messages.RegistrationResource(uri=e.location, body=messages.Registration())
        certificate_key = new_key_pem()
        pending = acme.new_order(crypto_util.make_csr(certificate_key, [hostname]))
        for authorization in pending.authorizations:
            if authorization.body.status == messages.STATUS_VALID:
                continue
            challenge = _challenge(authorization, kind, hostname)
            response, validation = challenge.chall.response_and_validation(key)
            answer(challenge.chall, validation)
            answered.append(challenge.chall)
            acme.answer_challenge(challenge, response)
        done = acme.poll_and_finalize(pending, datetime.datetime.now() + ORDER_TIMEOUT)
    except (errors.Error, messages.Error, OSError, ValueError) as e:
        raise OrderError(f"{type(e).__name__}: {e}") from e
    finally:
        for challenge in answered:
            withdraw(challenge)
    return certificate_key + done.fullchain_pem.encode("ascii")


def _challenge(authorization: messages.AuthorizationResource, kind: str, hostname: str) -> Any:
    wanted = CHALLENGE_TYPES[kind]
    for challenge in authorization.body.challenges:
        if isinstance(challenge.chall, wanted):
            return challenge
    offered = ", ".join(c.chall.typ for c in authorization.body.challenges)
    raise OrderError(f"the CA offers no {wanted.typ} challenge for {hostname} (only {offered})")


def alpn_certificate(hostname: str, key_authorization: str) -> bytes:
    """
    The self-signed TLS-ALPN-01 certificate for C{hostname} (RFC 8737): its
    name, and the SHA-256 of the key authorization in a critical
    acmeIdentifier extension; key and certificate in PEM.
    """
    key_pem = new_key_pem()
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, hostname)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key_pem + certificate.public_bytes(serialization.Encoding.PEM)
