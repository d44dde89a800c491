"""
TLS session resumption on real sockets (127.0.0.1, port 0): a client that
comes back resumes its session with a TLS listener of the balancer (session
tickets, TLS 1.2 and 1.3), and the balancer resumes its sessions with
backends that speak TLS (L{balancer.proxy.tls.ResumingCreator}).

pyOpenSSL does not say whether a session was resumed; the standard
library's C{ssl} does (C{session_reused}), so most peers that check it are
blocking C{ssl} sockets in threads, with timeouts; L{OpenSslClient} tells
a resumed session by the certificate chain it did not get.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
from typing import Any

from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from balancer.config.schema import BackendsTlsConfig, TlsConfig
from balancer.proxy.engine import splice
from balancer.proxy.tls_path import TlsEnginePath
from balancer.proxy.tls import ResumingCreator, backend_context
from tests.support.balancers import start_balancer
from tests.support.certs import CertificateSet, make_certificates
from tests.support.peers import Peer, open_client
from tests.support.waiting import until

#: Seconds a blocking peer waits on its socket before failing the test.
PEER_TIMEOUT = 10.0


class Client:
    """A TLS client (standard library) that offers its last session when it connects again."""

    def __init__(self, ca_path: str) -> None:
        self.context = ssl.create_default_context(cafile=ca_path)
        self.session: ssl.SSLSession | None = None

    def ping(self, port: int) -> bool:
        """Connect, send a ping, read it back, close; whether the session was resumed."""
        with socket.create_connection(("127.0.0.1", port), timeout=PEER_TIMEOUT) as raw:
            with self.context.wrap_socket(raw, server_hostname="127.0.0.1", session=self.session) as tls:
                tls.sendall(b"ping")
                received = b""
                while len(received) < 4:
                    chunk = tls.recv(4 - len(received))
                    if not chunk:
                        raise ConnectionError(f"closed after {received!r}")
                    received += chunk
                self.session = tls.session
                return tls.session_reused


class OpenSslClient:
    """
    The same with pyOpenSSL, which does not say whether a session was
    resumed; but a resumed handshake carries no certificate, so the client
    never passes through OpenSSL's state of reading one (watched with an
    info callback).
    """

    def __init__(self, ca_path: str, version: int) -> None:
        self.context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self.context.set_min_proto_version(version)
        self.context.set_max_proto_version(version)
        self.context.load_verify_locations(ca_path)
        self.context.set_verify(SSL.VERIFY_PEER)
        self.context.set_info_callback(lambda connection, where, ret: self.states.append(connection.get_state_string()))
        self.states: list[bytes] = []
        self.session: SSL.Session | None = None

    def ping(self, port: int) -> bool:
        """Connect, send a ping, read it back, close; whether the session was resumed."""
        self.states.clear()
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(PEER_TIMEOUT), 0))
            tls = SSL.Connection(self.context, raw)
            tls.set_connect_state()
            if self.session is not None:
                tls.set_session(self.session)
            tls.do_handshake()
            tls.sendall(b"ping")
            received = b""
            while len(received) < 4:
                received += tls.recv(4 - len(received))
            self.session = tls.get_session()  # after a read: TLS 1.3 tickets come after the handshake
            tls.shutdown()  # else OpenSSL holds the session for one not to resume
            return _READ_CERTIFICATE not in self.states


#: OpenSSL's state while a client reads the server's certificate, in a full handshake only.
_READ_CERTIFICATE = b"SSLv3/TLS read server certificate"


class EchoServer:
    """
    A TLS echo server (standard library) in a thread, one connection at a
    time; C{reused} says, per connection, whether its session was resumed.
    """

    def __init__(self, certs: CertificateSet, maximum: ssl.TLSVersion | None = None) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certs.server.cert_path, certs.server.key_path)
        if maximum is not None:
            self.context.maximum_version = maximum
        self.reused: list[bool] = []
        self.listening = socket.create_server(("127.0.0.1", 0))
        self.listening.settimeout(0.1)
        self.port = self.listening.getsockname()[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(PEER_TIMEOUT)
        self.listening.close()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                raw, _ = self.listening.accept()
            except socket.timeout:
                continue
            raw.settimeout(PEER_TIMEOUT)
            try:
                with self.context.wrap_socket(raw, server_side=True) as tls:
                    self.reused.append(tls.session_reused)
                    while data := tls.recv(65536):
                        tls.sendall(data)
            except (OSError, ssl.SSLError):
                pass
            finally:
                raw.close()


class PlainEcho(Protocol):
    """Echoes."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class ResumptionTestCase(TestCase):
    """Certificates made for each test."""

    timeout = 60

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.certs: CertificateSet = make_certificates(directory)

    def tls_config(self, **options: Any) -> TlsConfig:
        return TlsConfig(cert_path=self.certs.server.cert_path, key_path=self.certs.server.key_path, **options)

    def echo_server(self, maximum: ssl.TLSVersion | None = None) -> EchoServer:
        server = EchoServer(self.certs, maximum)
        self.addCleanup(server.stop)
        return server


class ListenerResumptionTests(ResumptionTestCase):
    """
    A client coming back to a C{protocol = "tls"} server resumes its session
    (session tickets, on by default): here with TLS terminated on the relay
    engine (L{balancer.proxy.tls_path}), where there is one.
    """

    #: C{[defaults] splice}: the relay engine where there is one.
    splice = True

    @inlineCallbacks
    def three_pings(self, client: Any, **tls: Any) -> Any:
        """Three connections of C{client} through a TLS server of C{tls} on this path; fires with whether each resumed."""
        backend = reactor.listenTCP(0, Factory.forProtocol(PlainEcho), interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        server = start_balancer(
            self, (f"127.0.0.1:{backend.getHost().port}",), splice=self.splice, protocol="tls", tls=self.tls_config(**tls)
        )
        self.assertEqual(isinstance(server.path, TlsEnginePath), self.splice and splice.AVAILABLE)
        reused = []
        for _ in range(3):
            reused.append((yield deferToThread(client.ping, server.port)))
        yield until(lambda: not server.relays)
        self.assertEqual(server.counters.tls_failures, 0)
        return reused

    def pings(self, **tls: Any) -> Any:
        """L{three_pings} of the standard library's client."""
        return self.three_pings(Client(self.certs.ca_path), **tls)

    def openssl_pings(self, version: int, **tls: Any) -> Any:
        """L{three_pings} of a pyOpenSSL client speaking TLS C{version}."""
        return self.three_pings(OpenSslClient(self.certs.ca_path, version), **tls)

    @inlineCallbacks
    def test_tls13ClientResumes(self) -> None:
        self.assertEqual((yield self.pings()), [False, True, True])

    @inlineCallbacks
    def test_tls12ClientResumes(self) -> None:
        self.assertEqual((yield self.pings(max_version="tls1.2")), [False, True, True])

    @inlineCallbacks
    def test_withoutTicketsNoResumption(self) -> None:
        """C{session_tickets = false} turns resumption off (no session cache is kept either)."""
        self.assertEqual((yield self.pings(session_tickets=False)), [False, False, False])

    @inlineCallbacks
    def test_withoutTicketsNoTls12Resumption(self) -> None:
        """The same for a TLS 1.2 client: no ticket, and no session kept by its id."""
        self.assertEqual((yield self.pings(session_tickets=False, max_version="tls1.2")), [False, False, False])

    @inlineCallbacks
    def test_openSslTls13ClientResumes(self) -> None:
        """A pyOpenSSL client resumes too (TLS 1.3)."""
        self.assertEqual((yield self.openssl_pings(SSL.TLS1_3_VERSION)), [False, True, True])

    @inlineCallbacks
    def test_openSslTls12ClientResumes(self) -> None:
        """A pyOpenSSL client resumes too (TLS 1.2, by ticket)."""
        self.assertEqual((yield self.openssl_pings(SSL.TLS1_2_VERSION)), [False, True, True])

    @inlineCallbacks
    def test_openSslTls12WithoutTicketsNoResumption(self) -> None:
        """Nor is a pyOpenSSL TLS 1.2 client resumed with C{session_tickets = false}."""
        self.assertEqual((yield self.openssl_pings(SSL.TLS1_2_VERSION, session_tickets=False)), [False, False, False])


class TwistedListenerResumptionTests(ListenerResumptionTests):
    """The same on Twisted's TLS transports (C{[defaults] splice = false})."""

    splice = False


class BackendResumptionTests(ResumptionTestCase):
    """With C{[backends_tls]}, the balancer's next connection to a backend resumes the last session."""

    @inlineCallbacks
    def through_balancer(self, backend: EchoServer, **tls: Any) -> Any:
        server = start_balancer(
            self,
            (f"127.0.0.1:{backend.port}",),
            backends_tls=BackendsTlsConfig(root_ca_cert_path=self.certs.ca_path, **tls),
        )
        for _ in range(3):
            client = Peer()
            yield open_client(server.port, client)
            client.transport.write(b"ping")
            self.assertEqual((yield client.expect(4)), b"ping")
            client.transport.loseConnection()
            yield client.closed
            yield until(lambda: not server.relays)
        yield until(lambda: len(backend.reused) == 3)
        return backend.reused

    @inlineCallbacks
    def test_tls13BackendResumed(self) -> None:
        self.assertEqual((yield self.through_balancer(self.echo_server())), [False, True, True])

    @inlineCallbacks
    def test_tls12BackendResumed(self) -> None:
        backend = self.echo_server(ssl.TLSVersion.TLSv1_2)
        self.assertEqual((yield self.through_balancer(backend)), [False, True, True])

    @inlineCallbacks
    def test_unverifiedBackendResumed(self) -> None:
        self.assertEqual((yield self.through_balancer(self.echo_server(), ignore_verify=True)), [False, True, True])

    def test_creatorKeptPerHostResumes(self) -> None:
        """What a backend host's connections are made with is a L{ResumingCreator}, kept per host."""
        creator = backend_context(BackendsTlsConfig(root_ca_cert_path=self.certs.ca_path), "127.0.0.1")
        self.assertIsInstance(creator, ResumingCreator)
