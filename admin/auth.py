"""
Who may use the API: accounts from C{[api.basic_auth]} and C{[[api.users]]},
checked by a C{twisted.cred} portal behind C{HTTPAuthSessionWrapper} with
HTTP Basic credentials.

Passwords are never compared in variable time: plain ones with
C{hmac.compare_digest}, hashes with C{bcrypt.checkpw} (run off the reactor
thread by the injected C{run_blocking}).  A login that does not exist costs
the same check against a configured secret, and fails whatever its result.
With no account configured the API is open, as in gobetween.
"""

from __future__ import annotations

import enum
import hmac
import json
from typing import Any, Callable, Sequence

import attrs
import bcrypt
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.web._auth.wrapper import UnauthorizedResource
from twisted.web.guard import BasicCredentialFactory, HTTPAuthSessionWrapper
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from zope.interface import implementer

from admin.errors import Forbidden
from balancer.config.schema import ApiConfig

log = Logger()

#: The realm named in C{WWW-Authenticate: Basic realm="balancer"}.
REALM = b"balancer"

#: Runs a blocking function and fires with its result (a thread pool in production).
RunBlocking = Callable[..., "Deferred[Any]"]


class Account(enum.Enum):
    """What an account may do: C{admin} reads and writes, C{basic} only reads."""

    ADMIN = "admin"
    BASIC = "basic"


def require_admin(account: Account, action: str) -> None:
    """
    Allow C{action} to C{admin} accounts only.

    @raise Forbidden: naming the action, for any other account.
    """
    if account is not Account.ADMIN:
        raise Forbidden(f"{action} needs an admin account")


def run_inline(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """A L{RunBlocking} that runs C{function} at once, on the calling thread."""
    return maybeDeferred(function, *args)


@attrs.frozen
class Login:
    """
    One account: its login, what it may do, and its secret.

    @ivar password: a plain password, or None when C{password_hash} is given.
    @ivar password_hash: a bcrypt hash, or None.
    """

    login: bytes
    account: Account
    password: bytes | None = None
    password_hash: bytes | None = None

    def verify(self, password: bytes, run_blocking: RunBlocking) -> Deferred[bool]:
        """Whether C{password} is this account's, checked in constant time."""
        if self.password_hash is not None:
            return run_blocking(_bcrypt_matches, password, self.password_hash)
        assert self.password is not None
        return run_inline(hmac.compare_digest, password, self.password)


def _bcrypt_matches(password: bytes, password_hash: bytes) -> bool:
    """C{bcrypt.checkpw}, where a password bcrypt refuses (over 72 bytes) does not match."""
    try:
        return bcrypt.checkpw(password, password_hash)
    except ValueError:
        return False


def logins(api: ApiConfig) -> list[Login]:
    """The accounts C{api} configures: C{[api.basic_auth]} (an admin) and each C{[[api.users]]}."""
    found = []
    if api.basic_auth is not None:
        found.append(Login(api.basic_auth.login.encode(), Account.ADMIN, password=api.basic_auth.password.encode()))
    for user in api.users:
        found.append(
            Login(
                user.login.encode(),
                Account(user.account),
                password=user.password.encode() if user.password is not None else None,
                password_hash=user.password_hash.encode() if user.password_hash is not None else None,
            )
        )
    return found


@implementer(ICredentialsChecker)
class AccountChecker:
    """Checks HTTP Basic credentials against the configured accounts; the avatar id is the login."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, accounts: Sequence[Login], run_blocking: RunBlocking = run_inline) -> None:
        """
        @param accounts: at least one account.
        @param run_blocking: runs the bcrypt check (slow on purpose) off the reactor thread.
        """
        self._accounts = {a.login: a for a in accounts}
        self._decoy = accounts[0]
        self._run_blocking = run_blocking

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[bytes]:
        """Fire with the login, or fail with L{UnauthorizedLogin}."""
        login = credentials.username
        account = self._accounts.get(login)
        checked = (account or self._decoy).verify(credentials.password, self._run_blocking)

        def decide(matches: bool) -> bytes:
            if account is None or not matches:
                log.info("api: refused credentials for login {login!r}", login=login.decode("utf-8", "replace"))
                raise UnauthorizedLogin()
            return login

        return checked.addCallback(decide)


@implementer(IRealm)
class AccountRealm:
    """Hands each login the API as its account kind may use it."""

    def __init__(self, accounts: Sequence[Login], resource_for: Callable[[Account], IResource]) -> None:
        """@param resource_for: builds the API resource for one account kind."""
        self._kinds = {a.login: a.account for a in accounts}
        self._resource_for = resource_for

    def requestAvatar(self, avatarId: bytes, mind: object, *interfaces: Any) -> tuple[Any, IResource, Callable[[], None]]:
        """The L{IResource} avatar of C{avatarId}."""
        if IResource not in interfaces:
            raise NotImplementedError("the API realm only hands out web resources")
        return IResource, self._resource_for(self._kinds[avatarId]), lambda: None


class _Scheme(bytes):
    """
    C{b"Basic"}, equal to any capitalisation of itself.

    The guard matches a factory's C{scheme} against the lower-cased scheme of
    the C{Authorization} header, and writes it as is in challenges: this one
    matches C{basic} and is written C{Basic}, as clients expect.
    """

    def __eq__(self, other: object) -> bool:
        return isinstance(other, bytes) and self.lower() == other.lower()

    def __hash__(self) -> int:
        return hash(self.lower())


class BasicCredentials(BasicCredentialFactory):
    """HTTP Basic credentials; challenges read C{WWW-Authenticate: Basic realm="balancer"}."""

    scheme = _Scheme(b"Basic")


class _Unauthorized(UnauthorizedResource):
    """The 401 with its challenge; under C{/v1} the body is a JSON:API error document."""

    def render(self, request: IRequest) -> bytes:
        body: bytes = super().render(request)
        if request.method == b"HEAD" or not (request.path == b"/v1" or request.path.startswith(b"/v1/")):
            return body
        request.setHeader(b"Content-Type", b"application/json")
        detail = "credentials missing or not valid: use HTTP Basic authentication"
        return json.dumps({"errors": [{"detail": detail}]}, indent=4).encode("utf-8")


class _Guard(HTTPAuthSessionWrapper):
    """L{HTTPAuthSessionWrapper} whose refusals are L{_Unauthorized}."""

    def _authorizedResource(self, request: IRequest) -> IResource:
        return self._json(super()._authorizedResource(request))

    def _loginFailed(self, result: Any) -> IResource:
        return self._json(super()._loginFailed(result))

    def _json(self, resource: Any) -> Any:
        if type(resource) is UnauthorizedResource:
            return _Unauthorized(self._credentialFactories)
        return resource


def guard(api: ApiConfig, resource_for: Callable[[Account], IResource], run_blocking: RunBlocking = run_inline) -> IResource:
    """
    The API behind a login when C{api} configures accounts; open (as admin) otherwise.

    A request without valid credentials gets 401 and
    C{WWW-Authenticate: Basic realm="balancer"}.

    @param resource_for: builds the API resource for one account kind.
    @param run_blocking: runs bcrypt checks (see L{AccountChecker}).
    """
    accounts = logins(api)
    if not accounts:
        return resource_for(Account.ADMIN)
    portal = Portal(AccountRealm(accounts, resource_for), [AccountChecker(accounts, run_blocking)])
    return _Guard(portal, [BasicCredentials(REALM)])
