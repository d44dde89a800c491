"""
L{balancer.tlsfiles}: certificates, keys and CA files read for every user,
and errors that name the configuration key and the file.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SynchronousTestCase

from balancer.tlsfiles import TLSError, TLSErrors, load_certificates, load_certified_key, load_trust_root, read_file
from tests.support.certs import Authority, make_certificates
from tests.support.paths import scratch_directory


class TlsFilesTests(SynchronousTestCase):
    """What loads, and what each problem says."""

    def setUp(self) -> None:
        self.directory = scratch_directory(self)
        self.certs = make_certificates(self.directory)

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_certifiedKeyWithItsChain(self) -> None:
        intermediate = Authority("intermediate", issuer=Authority())
        pair = intermediate.issue(self.directory, "leaf")
        loaded = load_certified_key(pair.cert_path, pair.key_path, "tls.")
        self.assertEqual(loaded.certificate.get_subject().CN, "localhost")
        self.assertEqual([c.get_subject().CN for c in loaded.chain], ["intermediate"])

    def test_missingFileNamesKeyAndPath(self) -> None:
        missing = os.path.join(self.directory, "missing.pem")
        error = self.assertRaises(TLSError, read_file, missing, "docker_tls_cacert_path")
        self.assertEqual(str(error), f'docker_tls_cacert_path: cannot read "{missing}": No such file or directory')
        self.assertEqual(error.key, "docker_tls_cacert_path")

    def test_noCertificate(self) -> None:
        junk = self.write("junk.pem", b"not a certificate\n")
        error = self.assertRaises(TLSError, load_certificates, junk, "tls.cert_path")
        self.assertEqual(str(error), f'tls.cert_path: "{junk}" holds no PEM certificate')

    def test_noKey(self) -> None:
        error = self.assertRaises(TLSError, load_certified_key, self.certs.server.cert_path,
                                  self.certs.server.cert_path, "api.tls.")
        self.assertEqual(str(error), f'api.tls.key_path: "{self.certs.server.cert_path}" holds no PEM private key')

    def test_encryptedKey(self) -> None:
        with open(self.certs.server.key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        encrypted = self.write("encrypted.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret")))
        error = self.assertRaises(TLSError, load_certified_key, self.certs.server.cert_path, encrypted, "tls.")
        self.assertEqual(error.message, f'"{encrypted}" holds an encrypted key; give an unencrypted one')

    def test_keyOfAnotherCertificate(self) -> None:
        error = self.assertRaises(TLSError, load_certified_key, self.certs.server.cert_path,
                                  self.certs.client.key_path, "consul_tls_")
        self.assertEqual(str(error), f'consul_tls_key_path: "{self.certs.client.key_path}" is not the key '
                                     f'of the certificate in "{self.certs.server.cert_path}"')

    def test_bothUnusableAreBothReported(self) -> None:
        missing = os.path.join(self.directory, "missing.pem")
        error = self.assertRaises(TLSErrors, load_certified_key, missing, missing, "backends_tls.")
        self.assertEqual([p.key for p in error.problems], ["backends_tls.cert_path", "backends_tls.key_path"])
        self.assertEqual(error.key, "backends_tls.cert_path")

    def test_trustRootOfEveryCertificateInTheFile(self) -> None:
        with open(self.certs.ca_path, "rb") as f, open(self.certs.other_ca_path, "rb") as g:
            bundle = self.write("bundle.pem", f.read() + g.read())
        self.assertIsNotNone(load_trust_root(bundle, "backends_tls.root_ca_cert_path"))
        junk = self.write("junk.pem", b"junk")
        error = self.assertRaises(TLSError, load_trust_root, junk, "backends_tls.root_ca_cert_path")
        self.assertEqual(error.key, "backends_tls.root_ca_cert_path")
