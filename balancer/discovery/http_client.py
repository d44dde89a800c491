"""
HTTP for the discovery kinds that ask an HTTP API (plaintext, json, docker,
consul): a treq client per source (TCP, TLS with files, or a unix socket) and
one checked GET.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Protocol

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate, KeyPair, PrivateCertificate, optionsForClientTLS, platformTrust
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from balancer.discovery.base import DiscoveryError
from balancer.tlsfiles import TLSError, load_certified_key, load_trust_root

_SHOWN_BODY = 200


class HTTPGetter(Protocol):
    """What discovery needs of an HTTP client: L{HTTPClient}, or L{treq.testing.StubTreq} in tests."""

    def get(
        self,
        url: str,
        /,
        *,
        params: Mapping[str, str] | None = None,
        headers: dict[str | bytes, str | bytes] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> Deferred[Any]:
        """GET C{url} with treq's C{params}, C{headers} and basic C{auth}; fires with a treq response."""


@attrs.frozen
class TLSFiles:
    """
    PEM files for HTTPS to a source.

    @ivar cacert_path: the CA that signs the server's certificate; empty: the
        system's trusted roots.
    @ivar cert_path: a client certificate to present, with C{key_path}; empty: none.
    """

    cacert_path: str = ""
    cert_path: str = ""
    key_path: str = ""


@implementer(IPolicyForHTTPS)
class _FilesPolicy:
    """Checks the server against a given trust root and presents an optional client certificate."""

    def __init__(self, trust: Any, client: PrivateCertificate | None) -> None:
        self._trust = trust
        self._client = client

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        """Client TLS options for C{hostname} (a name or an IP address)."""
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._trust, clientCertificate=self._client)


def tls_policy(files: TLSFiles, prefix: str) -> IPolicyForHTTPS:
    """
    The HTTPS policy that C{files} describe, read now.

    @param prefix: the configuration keys' prefix (C{"docker_tls_"}), for messages.
    @raise DiscoveryError: when a file cannot be read or parsed, or only one
        of the certificate and its key is given.
    """
    if bool(files.cert_path) != bool(files.key_path):
        raise DiscoveryError(f"{prefix}cert_path and {prefix}key_path go together")
    try:
        trust = load_trust_root(files.cacert_path, prefix + "cacert_path") if files.cacert_path else platformTrust()
        client = None
        if files.cert_path:
            pair = load_certified_key(files.cert_path, files.key_path, prefix)
            client = PrivateCertificate.fromCertificateAndKeyPair(Certificate(pair.certificate), KeyPair(pair.key))
    except TLSError as e:
        raise DiscoveryError(str(e)) from None
    return _FilesPolicy(trust, client)


@implementer(IAgentEndpointFactory)
class _UnixSocket:
    """Connects every request to one unix socket, whatever the URL's host."""

    def __init__(self, reactor: Any, path: str) -> None:
        self._reactor = reactor
        self._path = path

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        """The socket's endpoint."""
        return UNIXClientEndpoint(self._reactor, self._path)


def http_client(reactor: Any, tls: IPolicyForHTTPS | None = None, unix_socket: str = "") -> HTTPClient:
    """
    A treq client that opens a new connection for each request.

    @param tls: how to check HTTPS servers; default: the system's roots.
    @param unix_socket: connect to this socket path instead of the URL's host.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    if unix_socket:
        agent = Agent.usingEndpointFactory(reactor, _UnixSocket(reactor, unix_socket), pool=pool)
    else:
        agent = Agent(reactor, contextFactory=tls or BrowserLikePolicyForHTTPS(), pool=pool)
    return HTTPClient(agent)


async def get_body(http: HTTPGetter, url: str, **kwargs: Any) -> bytes:
    """
    GET C{url} and return the body of a 2xx answer.

    @param kwargs: passed to treq's C{get} (C{params}, C{headers}, C{auth}).
    @raise DiscoveryError: on any other status, with the start of the body.
    """
    response = await http.get(url, **kwargs)
    body: bytes = await response.content()
    if not 200 <= response.code < 300:
        shown = body[:_SHOWN_BODY].decode("utf-8", "replace").strip()
        raise DiscoveryError(f"GET {url}: HTTP {response.code}" + (f": {shown}" if shown else ""))
    return body


def decode_json(body: bytes, what: str) -> Any:
    """
    The JSON document C{body}.

    @param what: names the document in the error message.
    @raise DiscoveryError: when C{body} is not UTF-8 JSON.
    """
    try:
        return json.loads(body)
    except ValueError as e:
        raise DiscoveryError(f"{what} is not JSON: {e}") from None
