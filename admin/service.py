"""
The API as a service of the balancer's tree: the resource stack (CORS, the
public routes, the guard, the per-account app) served by a L{Site} of
L{BoundedRequest}s on C{[api] bind}, over TLS when C{[api.tls]} is set.
"""

from __future__ import annotations

import re
from typing import Any

from OpenSSL.crypto import FILETYPE_PEM
from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.ssl import Certificate, CertificateOptions, KeyPair
from twisted.internet.threads import deferToThreadPool
from twisted.web.resource import IResource
from twisted.web.server import Site

from admin.app import AdminApp, PublicApp
from admin.auth import Account, RunBlocking, guard, run_inline
from admin.cors import CorsResource
from admin.request import BoundedChannel, BoundedRequest
from admin.urlcheck import Utf8Resource
from balancer.config.schema import ApiConfig, ApiTlsConfig
from balancer.control import IControl
from balancer.listening import ListeningService
from balancer.server import BindError

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def api_resource(control: IControl, api: ApiConfig, run_blocking: RunBlocking = run_inline) -> IResource:
    """
    The whole API as one resource: C{/ping} public, every other route behind
    the accounts of C{api}, with CORS when C{api.cors}.

    @param run_blocking: runs bcrypt checks (see L{admin.auth.AccountChecker}).
    """

    def resource_for(account: Account) -> IResource:
        return AdminApp(control, account).app.resource()

    front = PublicApp(guard(api, resource_for, run_blocking)).app.resource()
    return Utf8Resource(CorsResource(front) if api.cors else front)


def tls_options(tls: ApiTlsConfig) -> CertificateOptions:
    """
    The server TLS options of C{[api.tls]}: C{cert_path} holds the certificate,
    optionally followed by its chain; C{key_path} its private key (PEM).
    The TLS context is built here, so a key that does not match fails now.

    @raise BindError: naming the file and the reason when either cannot be used.
    """
    try:
        with open(tls.cert_path, "rb") as f:
            certificates = _PEM_CERTIFICATE.findall(f.read())
        with open(tls.key_path, "rb") as f:
            key = KeyPair.load(f.read(), FILETYPE_PEM).original
        if not certificates:
            raise ValueError(f"no PEM certificate in {tls.cert_path}")
        leaf, *chain = (Certificate.loadPEM(c).original for c in certificates)
        options = CertificateOptions(privateKey=key, certificate=leaf, extraCertChain=chain)
        options.getContext()
        return options
    except OSError as e:
        raise BindError(f"api: cannot read [api.tls] {e.filename}: {e.strerror}") from e
    except Exception as e:
        raise BindError(f"api: cannot use [api.tls] cert_path/key_path: {e}") from e


class ApiService(ListeningService):
    """Listens on C{[api] bind} with the API's site; a bind failure is a L{BindError}."""

    name = "api"
    label = "api"

    def __init__(self, site: Site, api: ApiConfig, reactor: Any) -> None:
        super().__init__()
        self._site = site
        self._api = api
        self._reactor = reactor

    def bind(self) -> Any:
        """Listen on C{[api] bind}, over TLS with C{[api.tls]}."""
        bind = self._api.bind
        try:
            if self._api.tls is not None:
                return self._reactor.listenSSL(
                    bind.port, self._site, tls_options(self._api.tls), interface=bind.listen_host
                )
            return self._reactor.listenTCP(bind.port, self._site, interface=bind.listen_host)
        except CannotListenError as e:
            raise BindError(f"api: cannot listen on {bind}: {e.socketError}") from e


def api_service(control: IControl, api: ApiConfig, reactor: Any) -> IService:
    """
    The admin API of C{control} as a service on C{reactor}: it listens on
    C{api.bind} (TLS with C{api.tls}) when started and logs
    C{api: listening on HOST:PORT} with the real port.
    """

    def run_blocking(function: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)

    return ApiService(api_site(control, api, reactor, run_blocking), api, reactor)


def api_site(control: IControl, api: ApiConfig, reactor: Any, run_blocking: RunBlocking = run_inline) -> Site:
    """The HTTP site of the API: L{api_resource} served with the API's request and channel classes."""
    site = Site(api_resource(control, api, run_blocking), requestFactory=BoundedRequest, reactor=reactor)
    site.protocol = BoundedChannel
    return site
