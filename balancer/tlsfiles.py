"""
TLS files: PEM certificates (a leaf and its chain, or trusted CAs) and
private keys, read for every user of them: listeners' C{[tls]} and
backends' C{[backends_tls]} (L{balancer.proxy.tls}), the API's
C{[api.tls]} (L{admin.listener}), and the discovery kinds' C{*_tls_*_path}
keys (L{balancer.discovery.http_client}).

Every problem is a L{TLSError} that names the configuration key and the
file: C{tls.cert_path: cannot read "/etc/x.pem": No such file or directory}.
"""

from __future__ import annotations

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import ssl


class TLSError(Exception):
    """
    A TLS setting or file that cannot be used.

    @ivar key: the dotted configuration key, e.g. C{"tls.cert_path"}.
    @ivar message: what is wrong, naming the bad value or file.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class TLSErrors(TLSError):
    """
    Several L{TLSError}s at once (a certificate and a key both unusable);
    it reads as the first of them.

    @ivar problems: each of them, in the order of their keys.
    """

    def __init__(self, problems: list[TLSError]) -> None:
        super().__init__(problems[0].key, problems[0].message)
        self.problems = problems


@attrs.frozen
class CertifiedKey:
    """
    A certificate, the private key it certifies, and the chain sent after it.

    @ivar chain: the intermediate certificates, in the file's order.
    """

    certificate: crypto.X509
    key: crypto.PKey
    chain: tuple[crypto.X509, ...]


def read_file(path: str, key: str) -> bytes:
    """
    The bytes of C{path}.

    @param key: the configuration key that names the file, for the error.
    @raise TLSError: naming C{key} and C{path} when the file cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSError(key, f'cannot read "{path}": {e.strerror}') from None


def load_certificates(path: str, key: str) -> list[x509.Certificate]:
    """
    The PEM certificates in C{path}, in order.

    @raise TLSError: when it cannot be read or holds no PEM certificate.
    """
    try:
        return x509.load_pem_x509_certificates(read_file(path, key))
    except ValueError:
        raise TLSError(key, f'"{path}" holds no PEM certificate') from None


def load_private_key(path: str, key: str) -> crypto.PKey:
    """
    The unencrypted PEM private key in C{path}.

    @raise TLSError: when it cannot be read, holds no key, an encrypted one,
        or one of a type TLS cannot use.
    """
    try:
        loaded = serialization.load_pem_private_key(read_file(path, key), password=None)
    except TypeError:
        raise TLSError(key, f'"{path}" holds an encrypted key; give an unencrypted one') from None
    except (ValueError, crypto.Error):
        raise TLSError(key, f'"{path}" holds no PEM private key') from None
    try:
        return crypto.PKey.from_cryptography_key(loaded)  # type: ignore[arg-type]
    except TypeError:
        raise TLSError(key, f'"{path}" holds a key of a type TLS cannot use') from None


def load_certified_key(cert_path: str, key_path: str, prefix: str) -> CertifiedKey:
    """
    A certificate file (the leaf first, then its chain) and the leaf's private key.

    @param prefix: the configuration keys' prefix: C{"tls."} names
        C{tls.cert_path} and C{tls.key_path}, C{"docker_tls_"}
        C{docker_tls_cert_path} and C{docker_tls_key_path}.
    @raise TLSErrors: when the certificate and the key are both unusable.
    @raise TLSError: when one of them is, or the key is not the certificate's.
    """
    problems: list[TLSError] = []
    certificates: list[x509.Certificate] = []
    key: crypto.PKey | None = None
    try:
        certificates = load_certificates(cert_path, prefix + "cert_path")
    except TLSError as e:
        problems.append(e)
    try:
        key = load_private_key(key_path, prefix + "key_path")
    except TLSError as e:
        problems.append(e)
    if len(problems) > 1:
        raise TLSErrors(problems)
    if problems:
        raise problems[0]
    assert key is not None
    leaf, *chain = (crypto.X509.from_cryptography(c) for c in certificates)
    if _spki(leaf.get_pubkey()) != _spki(key):
        raise TLSError(prefix + "key_path", f'"{key_path}" is not the key of the certificate in "{cert_path}"')
    return CertifiedKey(leaf, key, tuple(chain))


def load_trust_root(path: str, key: str) -> object:
    """
    The CA certificates in C{path} as a trust root for verifying peers (the
    C{trustRoot} of Twisted's C{optionsForClientTLS}).

    @raise TLSError: when it cannot be read or holds no PEM certificate.
    """
    certificates = load_certificates(path, key)
    return ssl.trustRootFromCertificates([ssl.Certificate(crypto.X509.from_cryptography(c)) for c in certificates])


def _spki(key: crypto.PKey) -> bytes:
    """The DER SubjectPublicKeyInfo of C{key}, to compare a private key with a certificate's public one."""
    return crypto.dump_publickey(crypto.FILETYPE_ASN1, key)
