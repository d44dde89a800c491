"""
A fake LXD server: the part of LXD's REST API that discovery uses, serving
documents of the shapes LXD's REST API documentation gives (the sync and
error envelopes, C{GET /1.0}, C{GET /1.0/containers[?recursion=1]},
C{GET /1.0/containers/<name>} and C{.../state}, C{POST /1.0/certificates}).

It listens on a unix socket (every client trusted, as LXD's local socket) or
over HTTPS with its own self-signed certificate, asking every client for a
certificate and accepting any in the handshake; as LXD does, only clients
whose certificate is in its trust store (added with the trust password) may
use anything but C{GET /1.0}, which tells them C{"auth": "untrusted"}.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet import reactor
from twisted.internet.interfaces import IOpenSSLContextFactory, IReactorSSL, IReactorUNIX
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from tests.support.certs import self_signed
from tests.support.paths import scratch_directory
from tests.support.tracked import served

SERVER_DOCUMENT: dict[str, Any] = {
    "api_extensions": ["storage", "etag", "container_full", "network"],
    "api_status": "stable",
    "api_version": "1.0",
    "auth_methods": ["tls"],
    "config": {"core.https_address": "127.0.0.1:8443"},
    "environment": {
        "addresses": ["127.0.0.1:8443"],
        "architectures": ["x86_64", "i686"],
        "driver": "lxc",
        "driver_version": "4.0.12",
        "kernel": "Linux",
        "kernel_architecture": "x86_64",
        "server": "lxd",
        "server_pid": 1234,
        "server_version": "4.0.9",
        "storage": "dir",
        "storage_version": "1",
    },
    "public": False,
}


@attrs.define
class FakeContainer:
    """
    One container: its name, status, configuration keys (C{user.*} and
    LXD's own) and addresses by interface: (family, address, scope) triples.
    """

    name: str
    status: str = "Running"
    config: dict[str, str] = attrs.Factory(dict)
    network: dict[str, list[tuple[str, str, str]]] = attrs.Factory(dict)

    def document(self) -> dict[str, Any]:
        """Its C{GET /1.0/containers/<name>} document."""
        config = {"image.os": "Debian", "volatile.base_image": "d2e0a9e3", "volatile.eth0.hwaddr": "00:16:3e:5a:1b:2c"}
        config.update(self.config)
        devices = {"root": {"path": "/", "pool": "default", "type": "disk"}}
        return {
            "architecture": "x86_64",
            "config": config,
            "devices": {},
            "ephemeral": False,
            "profiles": ["default"],
            "stateful": False,
            "description": "",
            "created_at": "2021-03-23T20:00:00.000000Z",
            "expanded_config": config,
            "expanded_devices": {"eth0": {"name": "eth0", "network": "lxdbr0", "type": "nic"}, **devices},
            "name": self.name,
            "status": self.status,
            "status_code": 103 if self.status == "Running" else 102,
            "last_used_at": "2021-03-23T20:00:05.000000Z",
            "location": "none",
            "type": "container",
            "project": "default",
        }

    def state(self) -> dict[str, Any]:
        """Its C{GET /1.0/containers/<name>/state} document."""
        network = {
            interface: {
                "addresses": [
                    {
                        "family": family,
                        "address": address,
                        "netmask": "24" if family == "inet" else "64",
                        "scope": scope,
                    }
                    for family, address, scope in addresses
                ],
                "counters": {"bytes_received": 1000, "bytes_sent": 2000, "packets_received": 10, "packets_sent": 20},
                "hwaddr": "00:16:3e:5a:1b:2c",
                "host_name": f"veth{self.name[:8]}",
                "mtu": 1500,
                "state": "up",
                "type": "loopback" if interface == "lo" else "broadcast",
            }
            for interface, addresses in self.network.items()
        }
        return {
            "status": self.status,
            "status_code": 103 if self.status == "Running" else 102,
            "disk": {"root": {"usage": 422330368}},
            "memory": {"usage": 51126272, "usage_peak": 70246400, "swap_usage": 0, "swap_usage_peak": 0},
            "network": network if self.status == "Running" else None,
            "pid": 13663 if self.status == "Running" else 0,
            "processes": 32 if self.status == "Running" else 0,
            "cpu": {"usage": 4986019722},
        }


def _sync(metadata: Any) -> bytes:
    envelope = {
        "type": "sync",
        "status": "Success",
        "status_code": 200,
        "operation": "",
        "error_code": 0,
        "error": "",
        "metadata": metadata,
    }
    return json.dumps(envelope).encode()


def _error(request: Any, code: int, message: str) -> bytes:
    request.setResponseCode(code)
    envelope = {
        "type": "error",
        "status": "",
        "status_code": 0,
        "operation": "",
        "error_code": code,
        "error": message,
        "metadata": None,
    }
    return json.dumps(envelope).encode()


class FakeLXD(Resource):
    """
    The API.  C{containers} may be changed between requests.

    @ivar password: the trust password C{POST /1.0/certificates} accepts.
    @ivar trusted: SHA-256 fingerprints of the trusted client certificates.
    @ivar requests: (method, path with query) of each request, in order.
    """

    isLeaf = True

    def __init__(self, containers: list[FakeContainer], password: str = "") -> None:
        super().__init__()
        self.containers = containers
        self.password = password
        self.trusted: set[str] = set()
        self.requests: list[tuple[str, str]] = []

    def _client_fingerprint(self, request: Any) -> str | None:
        """The fingerprint of the client's certificate; C{None} on the unix socket (always trusted)."""
        transport = request.channel.transport
        if not hasattr(transport, "getPeerCertificate"):
            return None
        certificate = transport.getPeerCertificate()
        if certificate is None:
            return ""
        return hashlib.sha256(crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate)).hexdigest()

    def _is_trusted(self, request: Any) -> bool:
        fingerprint = self._client_fingerprint(request)
        return fingerprint is None or fingerprint in self.trusted

    def render_GET(self, request: Any) -> bytes:
        self.requests.append(("GET", request.uri.decode()))
        path = request.path.decode().rstrip("/")
        if path == "/1.0":
            return _sync({**SERVER_DOCUMENT, "auth": "trusted" if self._is_trusted(request) else "untrusted"})
        if not self._is_trusted(request):
            return _error(request, 403, "not authorized")
        by_name = {c.name: c for c in self.containers}
        if path == "/1.0/containers":
            if request.args.get(b"recursion", [b"0"])[0] == b"1":
                return _sync([c.document() for c in self.containers])
            return _sync([f"/1.0/containers/{c.name}" for c in self.containers])
        parts = path.split("/")
        if len(parts) >= 4 and parts[:3] == ["", "1.0", "containers"] and parts[3] in by_name:
            if len(parts) == 4:
                return _sync(by_name[parts[3]].document())
            if parts[4:] == ["state"]:
                return _sync(by_name[parts[3]].state())
        return _error(request, 404, "not found")

    def render_POST(self, request: Any) -> bytes:
        self.requests.append(("POST", request.uri.decode()))
        if request.path.decode().rstrip("/") != "/1.0/certificates":
            return _error(request, 404, "not found")
        try:
            body = json.loads(request.content.read())
        except ValueError:
            return _error(request, 400, "invalid JSON")
        fingerprint = self._client_fingerprint(request)
        if fingerprint is None or fingerprint in self.trusted:
            return _sync({})
        good_password = bool(self.password) and body.get("password") == self.password
        if not fingerprint or body.get("type") != "client" or not good_password:
            return _error(request, 403, "not authorized")
        self.trusted.add(fingerprint)
        return _sync({})


@implementer(IOpenSSLContextFactory)
class _AnyClientCertificate:
    """Server TLS that asks every client for a certificate and accepts any in the handshake, as LXD does."""

    def __init__(self, cert_path: str, key_path: str) -> None:
        self._context = SSL.Context(SSL.TLS_SERVER_METHOD)
        self._context.use_certificate_file(cert_path)
        self._context.use_privatekey_file(key_path)
        self._context.set_verify(SSL.VERIFY_PEER, lambda *args: True)
        self._context.set_session_id(b"fake-lxd")

    def getContext(self) -> SSL.Context:
        """The context of every connection."""
        return self._context


@attrs.frozen
class HTTPSLXD:
    """A fake LXD listening over HTTPS: its URL and its certificate (DER)."""

    url: str
    certificate: bytes


def _served(test: SynchronousTestCase, lxd: FakeLXD, listen: Any) -> Any:
    """Listen with C{listen(factory)} until the test ends (then wait for the connections to close); the port."""
    return served(test, Site(lxd), listen)


def serve_unix(test: SynchronousTestCase, lxd: FakeLXD, directory: str = "") -> str:
    """
    Serve C{lxd} on a new unix socket until the test ends; its path.

    @param directory: where the socket goes; default: a new directory in
        the test's (given as a relative path, since socket paths are short).
    """
    if not directory:
        directory = test.mktemp()
        os.makedirs(directory)
    path = os.path.join(directory, "lxd.sock")
    _served(test, lxd, lambda factory: IReactorUNIX(reactor).listenUNIX(path, factory))
    return path


def serve_https(test: SynchronousTestCase, lxd: FakeLXD) -> HTTPSLXD:
    """Serve C{lxd} over HTTPS on 127.0.0.1 port 0, with a self-signed certificate, until the test ends."""
    directory = scratch_directory(test)
    cert_path, key_path, pem = self_signed(directory, "lxd")
    tls = _AnyClientCertificate(cert_path, key_path)
    port = _served(test, lxd, lambda factory: IReactorSSL(reactor).listenSSL(0, factory, tls, interface="127.0.0.1"))
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return HTTPSLXD(f"https://127.0.0.1:{port.getHost().port}", der)
