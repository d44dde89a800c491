"""
Let's Encrypt's C{pebble} ACME test server, started on 127.0.0.1 for a
test: its TLS certificate from a test CA, and a DNS server of this process
(twisted.names) that answers 127.0.0.1 for every name, so pebble validates
challenges against the balancer on this machine.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import urllib.request
from typing import Any

from cryptography import x509
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThread
from twisted.names import common, dns, server
from twisted.trial.unittest import SynchronousTestCase

from tests.support.certs import Authority
from tests.support.ports import free_port
from tests.support.processes import WatchedProcess
from tests.support.tools import require_tool


class Loopback(common.ResolverBase):
    """Every name has the A record 127.0.0.1 and nothing else."""

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred[Any]:
        if type == dns.A:
            return succeed(([dns.RRHeader(name, dns.A, payload=dns.Record_A("127.0.0.1"), auth=True)], [], []))
        return succeed(([], [], []))


def loopback_dns(test: SynchronousTestCase) -> int:
    """Serve L{Loopback} over UDP on 127.0.0.1 until C{test} ends; return its port."""
    factory = server.DNSServerFactory(clients=[Loopback()])
    port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")  # type: ignore[attr-defined]
    test.addCleanup(port.stopListening)
    return int(port.getHost().port)


class Pebble:
    """
    A pebble to start in C{directory}: its port, TLS certificate and CA are
    chosen first, for the balancer's configuration, and L{start} runs it
    once the balancer's ports are known.

    @ivar directory_url: its ACME directory.
    @ivar ca_path: the CA file that verifies its TLS certificate.
    @ivar management_port: its management interface (C{/roots/0}: the root it issues under).
    @ivar process: the running pebble, once started.
    """

    def __init__(self, directory: str) -> None:
        self.executable = require_tool("pebble")
        self.directory = directory
        authority = Authority("pebble's listener test CA")
        self.ca_path = authority.write(directory, "pebble-ca")
        self._pair = authority.issue(directory, "pebble")
        # pebble cannot listen on port 0 and say which port it got.
        self.port = free_port()
        self.management_port = free_port()
        self.directory_url = f"https://127.0.0.1:{self.port}/dir"
        self.process: WatchedProcess | None = None

    def start(self, test: SynchronousTestCase, *, http_port: int, tls_port: int) -> Deferred[None]:
        """
        Start pebble (stopped when C{test} ends), validating HTTP-01 on
        C{http_port} and TLS-ALPN-01 on C{tls_port} of 127.0.0.1; fires once it listens.
        """
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.management_port}",
                "certificate": self._pair.cert_path,
                "privateKey": self._pair.key_path,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        config_path = os.path.join(self.directory, "pebble.json")
        with open(config_path, "w") as f:
            json.dump(config, f)
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
        process = self.process = WatchedProcess(b"istening on")
        argv = [self.executable, "-config", config_path, "-dnsserver", f"127.0.0.1:{loopback_dns(test)}"]
        reactor.spawnProcess(process, self.executable, argv, env=env, path=self.directory)
        test.addCleanup(process.stop)
        ready = process.wait_for(rb"[Ll]istening on: 127\.0\.0\.1:" + str(self.port).encode())
        return ready.addCallback(lambda _: None)


    def root_pem(self) -> Deferred[bytes]:
        """The root CA pebble issues under (a new one each run), from its management interface."""

        def fetch() -> bytes:
            context = ssl.create_default_context(cafile=self.ca_path)
            url = f"https://127.0.0.1:{self.management_port}/roots/0"
            with urllib.request.urlopen(url, context=context, timeout=10) as answer:
                return bytes(answer.read())

        return deferToThread(fetch)


def served_certificate(port: int, server_name: str, trusted: bytes | None = None) -> Deferred[x509.Certificate]:
    """
    The certificate a TLS server on 127.0.0.1:C{port} sends to a client
    that asks for C{server_name}; fails when the handshake does.

    @param trusted: PEM CA certificates: the server's chain must lead to one
        of them and its certificate name C{server_name} (else nothing is verified).
    """

    def handshake() -> x509.Certificate:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if trusted is not None:
            context.load_verify_locations(cadata=trusted.decode("ascii"))
        else:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=server_name) as tls:
                der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)

    return deferToThread(handshake)
