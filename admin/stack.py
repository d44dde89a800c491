"""
The API's resource stack, outermost first: the UTF-8 check
(L{admin.urlcheck}), the names it answers to (L{admin.hosts}), CORS
(L{admin.cors}), the write policy
(L{admin.writes}), the public routes (L{admin.app.PublicApp}), the login
gate (L{admin.auth.guard}) and the per-account app (L{admin.app.AdminApp}).
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import IResource

from admin.app import AdminApp, PublicApp
from admin.auth import Account, guard, run_inline
from admin.checks import RunBlocking
from admin.cors import CorsResource
from admin.hosts import HostCheck
from admin.origins import origin_set
from admin.redacted import RedactedControl
from admin.urlcheck import Utf8Resource
from admin.writes import WritePolicy
from balancer.config.schema import ApiConfig
from balancer.control.interface import IControl


def api_resource(
    control: IControl, api: ApiConfig, run_blocking: RunBlocking = run_inline, clock: IReactorTime | None = None
) -> IResource:
    """
    The whole API as one resource: C{/ping} public, every other route behind
    the accounts of C{api} (a C{basic} account sees secrets redacted), writes
    checked by L{WritePolicy} first, with CORS when C{api.cors} or C{api.cors_origins},
    every request to a name the API does not answer to refused by L{HostCheck}.

    @param run_blocking: runs bcrypt checks (see L{admin.auth.AccountChecker}).
    @param clock: times logins (see L{admin.auth.guard}).
    """

    def resource_for(account: Account) -> IResource:
        seen = control if account is Account.ADMIN else RedactedControl(control)
        return AdminApp(seen, account).app.resource()

    front: IResource = WritePolicy(PublicApp(guard(api, resource_for, run_blocking, clock)).app.resource(), api)
    if api.cors or api.cors_origins:
        front = CorsResource(front, api.cors, origin_set(api.cors_origins))
    return Utf8Resource(HostCheck(front, api))
