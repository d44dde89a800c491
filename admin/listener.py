"""
The API's listener, a service of the balancer's tree: the resource stack
(L{admin.stack}) served by an L{ApiSite} on C{[api] bind}, over TLS when
C{[api.tls]} is set, with a spare descriptor (L{admin.reserve}) to answer
when the process has no other.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.ssl import CertificateOptions
from twisted.internet.threads import deferToThreadPool

from admin.auth import run_inline
from admin.checks import RunBlocking
from admin.reserve import keep_reserve
from admin.site import ApiSite
from admin.stack import api_resource
from balancer.config.schema import ApiConfig, ApiTlsConfig
from balancer.control.interface import IControl
from balancer.listening import ListeningService
from balancer.listening import BindError
from balancer.tlsfiles import TLSError, load_certified_key


def tls_options(tls: ApiTlsConfig) -> CertificateOptions:
    """
    The server TLS options of C{[api.tls]}: C{cert_path} holds the certificate,
    optionally followed by its chain; C{key_path} its private key (PEM).
    The TLS context is built here, so a key that cannot be used fails now.

    @raise BindError: naming the key and the file when either cannot be used.
    """
    try:
        pair = load_certified_key(tls.cert_path, tls.key_path, "api.tls.")
    except TLSError as e:
        raise BindError(str(e)) from e
    options = CertificateOptions(privateKey=pair.key, certificate=pair.certificate, extraCertChain=list(pair.chain))
    options.getContext()
    return options


class ApiService(ListeningService):
    """Listens on C{[api] bind} with the API's site; a bind failure is a L{BindError}."""

    name = "api"
    label = "api"

    def __init__(self, site: ApiSite, api: ApiConfig, reactor: Any) -> None:
        super().__init__()
        self._site = site
        self._api = api
        self._reactor = reactor

    def bind(self) -> Any:
        """Listen on C{[api] bind}, over TLS with C{[api.tls]}, keeping a spare descriptor."""
        bind = self._api.bind
        try:
            if self._api.tls is not None:
                port = self._reactor.listenSSL(
                    bind.port, self._site, tls_options(self._api.tls), interface=bind.listen_host
                )
            else:
                port = self._reactor.listenTCP(bind.port, self._site, interface=bind.listen_host)
        except CannotListenError as e:
            raise BindError(f"api: cannot listen on {bind}: {e.socketError}") from e
        keep_reserve(port, answer=self._api.tls is None)
        return port


def api_service(control: IControl, api: ApiConfig, reactor: Any) -> ApiService:
    """
    The admin API of C{control} as a service on C{reactor}: it listens on
    C{api.bind} (TLS with C{api.tls}) when started and logs
    C{api: listening on HOST:PORT} with the real port.
    """

    def run_blocking(function: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)

    return ApiService(api_site(control, api, reactor, run_blocking), api, reactor)


def api_site(control: IControl, api: ApiConfig, reactor: Any, run_blocking: RunBlocking = run_inline) -> ApiSite:
    """The HTTP site of the API: L{api_resource} served by an L{ApiSite} with the API's limits."""
    return ApiSite(api_resource(control, api, run_blocking, reactor), header_timeout=api.header_timeout,
                   max_connections=api.max_connections, reactor=reactor)
