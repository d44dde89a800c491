"""
The API as a service of the balancer's tree: the resource stack (CORS, the
The API as a service of the balancer's tree: the resource stack (CORS, the
write policy, the public routes, the guard, the per-account app) served by an
L{ApiSite} on C{[api] bind}, over TLS when C{[api.tls]} is set, with a spare
descriptor (L{admin.reserve}) to answer when the process has no other.
"""

from __future__ import annotations

import re
from typing import Any

from OpenSSL.crypto import FILETYPE_PEM
from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.ssl import Certificate, CertificateOptions, KeyPair
from twisted.internet.threads import deferToThreadPool
from twisted.web.resource import IResource

from admin.app import AdminApp, PublicApp
from admin.auth import Account, guard, run_inline
from admin.checks import RunBlocking
from admin.cors import CorsResource
from admin.origins import origin_set
from admin.redacted import RedactedControl
from admin.reserve import keep_reserve
from admin.site import ApiSite
from admin.urlcheck import Utf8Resource
from admin.writes import WritePolicy
from balancer.config.schema import ApiConfig, ApiTlsConfig
from balancer.control import IControl
from balancer.listening import ListeningService
from balancer.server_service import BindError

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def api_resource(
    control: IControl, api: ApiConfig, run_blocking: RunBlocking = run_inline, clock: IReactorTime | None = None
) -> IResource:
    """
    The whole API as one resource: C{/ping} public, every other route behind
    the accounts of C{api} (a C{basic} account sees secrets redacted), writes
    checked by L{WritePolicy} first, with CORS when C{api.cors} or C{api.cors_origins}.

    @param run_blocking: runs bcrypt checks (see L{admin.auth.AccountChecker}).
    @param clock: times logins (see L{admin.auth.guard}).
    """

    def resource_for(account: Account) -> IResource:
        seen = control if account is Account.ADMIN else RedactedControl(control)
        return AdminApp(seen, account).app.resource()

    front = WritePolicy(PublicApp(guard(api, resource_for, run_blocking, clock)).app.resource(), api)
    if api.cors or api.cors_origins:
        front = CorsResource(front, api.cors, origin_set(api.cors_origins))
    return Utf8Resource(front)


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


def api_service(control: IControl, api: ApiConfig, reactor: Any) -> IService:
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
