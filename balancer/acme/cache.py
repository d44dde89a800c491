"""
C{[acme] cache_dir}: one file per host name, holding its private key and
then its certificate chain in PEM, and the account key in
C{acme_account+key}, as Go's C{autocert.DirCache} (gobetween) writes them,
so a gobetween cache directory is reused as it is.
"""

from __future__ import annotations

import datetime
import os

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import crypto

from balancer.tlsfiles import CertifiedKey

#: The account key's file name in C{cache_dir} (C{autocert}'s).
ACCOUNT_FILE = "acme_account+key"


class CacheError(Exception):
    """A cached file that cannot be used; the message names it."""


@attrs.frozen
class Issued:
    """
    A host's certificate as TLS serves it, with its validity.

    @ivar pem: the key and the chain, as cached.
    """

    pair: CertifiedKey
    not_before: datetime.datetime
    not_after: datetime.datetime
    pem: bytes


def parse(pem: bytes, source: str) -> Issued:
    """
    A private key followed by a certificate chain (leaf first) in PEM.

    @raise CacheError: naming C{source} when either is missing or unusable.
    """
    begin = pem.find(b"-----BEGIN CERTIFICATE-----")
    try:
        if begin < 0:
            raise ValueError("no certificate")
        key = serialization.load_pem_private_key(pem[:begin], password=None)
        certificates = x509.load_pem_x509_certificates(pem[begin:])
        leaf, *chain = (crypto.X509.from_cryptography(c) for c in certificates)
        pair = CertifiedKey(leaf, crypto.PKey.from_cryptography_key(key), tuple(chain))  # type: ignore[arg-type]
    except (ValueError, TypeError) as e:
        raise CacheError(f'"{source}" is not a private key and certificate chain in PEM: {e}') from None
    first = certificates[0]
    return Issued(pair, first.not_valid_before_utc, first.not_valid_after_utc, pem)


class CertificateCache:
    """The files of one C{cache_dir}."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def path(self, hostname: str) -> str:
        """The file of C{hostname}'s key and certificates."""
        return os.path.join(self.directory, hostname)

    def load(self, hostname: str) -> Issued | None:
        """
        C{hostname}'s cached certificate, if there is one.

        @raise CacheError: when its file cannot be read or used.
        """
        path = self.path(hostname)
        try:
            with open(path, "rb") as f:
                pem = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise CacheError(f'cannot read "{path}": {e.strerror}') from None
        return parse(pem, path)

    def store(self, hostname: str, pem: bytes) -> None:
        """Write C{hostname}'s key and chain (readable by the owner only), replacing the old file at once."""
        self._write(self.path(hostname), pem)

    def account_key(self) -> bytes:
        """The account's private key in PEM: the cached one, or a new P-256 key written now."""
        path = os.path.join(self.directory, ACCOUNT_FILE)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            pem = new_key_pem()
            self._write(path, pem)
            return pem

    def _write(self, path: str, data: bytes) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        partial = path + ".partial"
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as f:
            f.write(data)
        os.replace(partial, path)


def new_key_pem() -> bytes:
    """A new ECDSA P-256 private key in PEM (as C{autocert} makes)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
