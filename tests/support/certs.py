"""
Test certificates made on the fly with C{cryptography}: a certificate
authority, server certificates for given names and addresses, and client
certificates, written as PEM files into a directory.

Keys are ECDSA P-256: quick to generate and accepted by every TLS version.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


@attrs.frozen
class Pair:
    """A certificate file and its private key file."""

    cert_path: str
    key_path: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def write_key(path: str, key: ec.EllipticCurvePrivateKey) -> str:
    """Write C{key} as unencrypted PKCS#8 PEM to C{path}; return C{path}."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with open(path, "wb") as f:
        f.write(pem)
    return path


def write_certificates(path: str, *certificates: x509.Certificate) -> str:
    """Write C{certificates} as PEM, in order, to C{path}; return C{path}."""
    with open(path, "wb") as f:
        for certificate in certificates:
            f.write(certificate.public_bytes(serialization.Encoding.PEM))
    return path


class Authority:
    """
    A test CA: self-signed, or an intermediate signed by another one.

    @ivar key: its private key.
    @ivar certificate: its certificate.
    @ivar chain: the intermediate certificates from this CA up to (not
        including) the root, which servers send after their own.
    """

    def __init__(self, common_name: str = "balancer test CA", issuer: Authority | None = None) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        signer = issuer if issuer is not None else self
        self.certificate: x509.Certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name) if issuer is None else issuer.certificate.subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(signer.key, hashes.SHA256())
        )
        self.chain: tuple[x509.Certificate, ...] = () if issuer is None else (self.certificate, *issuer.chain)

    def write(self, directory: str, name: str = "ca") -> str:
        """Write the CA certificate to C{directory/name.pem}; return its path."""
        return write_certificates(os.path.join(directory, f"{name}.pem"), self.certificate)

    def issue(
        self,
        directory: str,
        name: str,
        *,
        hostnames: Sequence[str] = ("localhost",),
        ips: Sequence[str] = ("127.0.0.1",),
        client: bool = False,
        also_client: bool = False,
    ) -> Pair:
        """
        Issue a leaf certificate and write C{directory/name.pem} (the leaf,
        then L{chain}) and C{name.key}.

        @param hostnames: DNS names in its subjectAltName (the first is also its CN).
        @param ips: IP addresses in its subjectAltName.
        @param client: a client certificate (clientAuth) instead of a server one (serverAuth).
        @param also_client: a server certificate that is a client one too (etcd dials itself with it).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(hostnames[0] if hostnames else name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([usage, ExtendedKeyUsageOID.CLIENT_AUTH] if also_client else [usage]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        return Pair(
            write_certificates(os.path.join(directory, f"{name}.pem"), certificate, *self.chain),
            write_key(os.path.join(directory, f"{name}.key"), key),
        )


@attrs.frozen
class CertificateSet:
    """
    A ready set: a CA, a server pair for C{localhost}/127.0.0.1 and a
    client pair it issued, and the certificate of another, unrelated CA.
    """

    directory: str
    ca_path: str
    server: Pair
    client: Pair
    other_ca_path: str


def make_certificates(directory: str) -> CertificateSet:
    """Write a L{CertificateSet} set into C{directory} (which must exist)."""
    authority = Authority()
    return CertificateSet(
        directory=directory,
        ca_path=authority.write(directory),
        server=authority.issue(directory, "server"),
        client=authority.issue(directory, "client", hostnames=("client.test",), ips=(), client=True),
        other_ca_path=Authority("another test CA").write(directory, "other-ca"),
    )



def self_signed(directory: str, name: str = "api") -> tuple[str, str, bytes]:
    """
    A self-signed server certificate for C{localhost} and 127.0.0.1 (its own
    trust root), written to C{directory/name.crt} and C{name.key}; returns
    (certificate path, key path, certificate PEM).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("balancer test"))
        .issuer_name(_name("balancer test"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _DAY)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = write_certificates(os.path.join(directory, f"{name}.crt"), certificate)
    key_path = write_key(os.path.join(directory, f"{name}.key"), key)
    return cert_path, key_path, certificate.public_bytes(serialization.Encoding.PEM)
