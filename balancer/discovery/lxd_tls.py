"""
The certificates of C{kind = "lxd"} over HTTPS, kept as gobetween's LXD
client keeps them in C{lxd_config_directory} (default C{~/.config/lxc}):

  - C{client.crt} and C{client.key}: the certificate this balancer presents;
    made (self-signed, EC P-384) when C{lxd_generate_client_certs} is true and
    C{client.crt} does not exist yet;
  - C{servercerts/<remote>.crt}: the LXD server's certificate, saved when
    C{lxd_accept_server_cert} is true and the server could not be reached
    with the system's trusted roots.  Once saved, it is the only certificate
    accepted from the server (pinned, as the C{lxc} client does).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import socket
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, KeyPair, PrivateCertificate, optionsForClientTLS, platformTrust
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from balancer.discovery.base import DiscoveryError
from balancer.tlsfiles import CertifiedKey, TLSError, load_certified_key, read_file

_VALIDITY = datetime.timedelta(days=3650)


def default_config_directory() -> str:
    """gobetween's default C{lxd_config_directory}: C{$HOME/.config/lxc}."""
    return os.path.join(os.path.expanduser("~"), ".config", "lxc")


@attrs.frozen
class LxdFiles:
    """
    Where the certificates of one remote live.

    @ivar directory: C{lxd_config_directory} (C{~} expanded).
    @ivar remote: C{lxd_server_remote_name}, the saved server certificate's name.
    """

    directory: str
    remote: str

    @property
    def client_cert(self) -> str:
        """The client certificate's path."""
        return os.path.join(self.directory, "client.crt")

    @property
    def client_key(self) -> str:
        """The client key's path."""
        return os.path.join(self.directory, "client.key")

    @property
    def server_cert(self) -> str:
        """The saved server certificate's path."""
        return os.path.join(self.directory, "servercerts", f"{self.remote}.crt")


def generate_client_certificate(files: LxdFiles) -> bool:
    """
    Make C{client.crt} and C{client.key} unless C{client.crt} exists.

    @return: whether they were made.
    @raise DiscoveryError: when they cannot be written.
    """
    if os.path.exists(files.client_cert):
        return False
    key = ec.generate_private_key(ec.SECP384R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "linuxcontainers.org"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"balancer@{socket.gethostname()}"),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA384())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        os.makedirs(files.directory, mode=0o750, exist_ok=True)
        descriptor = os.open(files.client_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as f:
            f.write(key_pem)
        with open(files.client_cert, "wb") as f:
            f.write(certificate.public_bytes(serialization.Encoding.PEM))
    except OSError as e:
        raise DiscoveryError(f"lxd_generate_client_certs: cannot write {e.filename}: {e.strerror}") from None
    return True


def load_client_certificate(files: LxdFiles) -> CertifiedKey | None:
    """
    The client certificate and key, or C{None} when C{client.crt} does not exist.

    @raise DiscoveryError: when they exist but cannot be used.
    """
    if not os.path.exists(files.client_cert):
        return None
    try:
        return load_certified_key(files.client_cert, files.client_key, "lxd_config_directory: client.crt/")
    except TLSError as e:
        raise DiscoveryError(str(e)) from None


def load_server_certificate(files: LxdFiles) -> bytes | None:
    """
    The saved server certificate (DER), or C{None} when none is saved.

    @raise DiscoveryError: when the file exists but holds no PEM certificate.
    """
    if not os.path.exists(files.server_cert):
        return None
    try:
        pem = read_file(files.server_cert, "lxd_config_directory")
        return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    except (TLSError, ValueError):
        raise DiscoveryError(f'lxd_config_directory: "{files.server_cert}" holds no PEM certificate') from None


def save_server_certificate(files: LxdFiles, der: bytes) -> None:
    """
    Save the server certificate C{der} as PEM in C{servercerts/<remote>.crt}.

    @raise DiscoveryError: when it cannot be written.
    """
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    try:
        os.makedirs(os.path.dirname(files.server_cert), mode=0o750, exist_ok=True)
        with open(files.server_cert, "wb") as f:
            f.write(pem)
    except OSError as e:
        raise DiscoveryError(f"lxd_accept_server_cert: cannot write {e.filename}: {e.strerror}") from None


def fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate, as C{lxc} shows it (hex)."""
    return hashlib.sha256(der).hexdigest()


@implementer(IPolicyForHTTPS)
class LxdTLSPolicy:
    """
    How to check an LXD server: against C{pinned} (the saved certificate),
    accepting any certificate (C{accept_any}, to fetch it), or, with
    neither, against the system's trusted roots.  The client certificate is
    presented in every case.

    @ivar seen: the DER certificate the server presented in the last
        handshake, when it was checked by pinning or accepted blindly.
    """

    def __init__(self, client: CertifiedKey | None, pinned: bytes | None = None, accept_any: bool = False) -> None:
        self._client = client
        self._pinned = pinned
        self._accept_any = accept_any
        self.seen: bytes | None = None

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        """Client TLS for one connection to C{hostname}."""
        if self._pinned is None and not self._accept_any:
            client = None
            if self._client is not None:
                client = PrivateCertificate.fromCertificateAndKeyPair(
                    Certificate(self._client.certificate), KeyPair(self._client.key)
                )
            return optionsForClientTLS(hostname.decode("ascii"), trustRoot=platformTrust(), clientCertificate=client)
        return _PinningCreator(self._context())

    @property
    def mismatch(self) -> bool:
        """Whether the last handshake failed because the server presented another certificate than the saved one."""
        return self._pinned is not None and self.seen is not None and self.seen != self._pinned

    def _context(self) -> SSL.Context:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        if self._client is not None:
            context.use_certificate(self._client.certificate)
            context.use_privatekey(self._client.key)
        context.set_verify(SSL.VERIFY_PEER, self._verify)
        return context

    def _verify(self, connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int) -> bool:
        if depth > 0:
            return True
        self.seen = crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate)
        return self._accept_any or self.seen == self._pinned


@implementer(IOpenSSLClientConnectionCreator)
class _PinningCreator:
    """Client connections on a ready context (the pinning or the accepting one)."""

    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """A client connection on the context."""
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        return connection
