"""
Who may use the API: accounts from C{[api.basic_auth]} and C{[[api.users]]},
checked by a C{twisted.cred} portal behind L{admin.gate.Gate} with HTTP Basic
credentials.

Passwords are never compared in variable time: plain ones with
C{hmac.compare_digest}, hashes with C{bcrypt.checkpw}, run off the reactor by
a L{CheckQueue} (C{[api] auth_concurrency} at once, a short queue, then 503).
A login that does not exist costs a check against the most expensive secret
configured (the bcrypt hash of highest cost), and fails whatever its result.
Failed checks are limited per client address (C{[api] auth_failures_per_second},
then 429), and a login that succeeded is remembered for a minute
(L{LoginCache}), so its client does not pay for the hash on every request.
With no account configured the API answers reads from anyone, as in gobetween, and
writes from loopback clients only (L{admin.writes.WritePolicy}).
"""

from __future__ import annotations

import enum
import hmac
from typing import Any, Callable, Sequence

import attrs
import bcrypt
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from zope.interface import implementer

from admin.checks import Busy, CheckQueue, RunBlocking
from admin.clients import ByClient
from admin.errors import Forbidden
from admin.gate import ClientPassword, Gate
from admin.logincache import LoginCache
from admin.ratelimit import FailureLimiter, TooManyFailures
from balancer.config.schema import ApiConfig

log = Logger()

#: The realm named in C{WWW-Authenticate: Basic realm="balancer"}.
REALM = b"balancer"

#: The limiter's key for credentials that carry no client address.
NO_ADDRESS = ""


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

    def cost(self) -> int:
        """What a check costs: the bcrypt cost of the hash, or -1 for a plain password."""
        if self.password_hash is None:
            return -1
        return int(self.password_hash.split(b"$")[2])

    def verify(self, password: bytes, checks: CheckQueue) -> Deferred[bool]:
        """
        Whether C{password} is this account's, checked in constant time: a
        hash through C{checks} (which may fail with L{Busy}), a plain password at once.
        """
        if self.password_hash is not None:
            return checks.submit(_bcrypt_matches, password, self.password_hash)
        assert self.password is not None
        return succeed(hmac.compare_digest(password, self.password))


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


def decoy(accounts: Sequence[Login]) -> Login:
    """The account an unknown login is checked against: the most expensive one (the first of them)."""
    return max(accounts, key=Login.cost)


@implementer(ICredentialsChecker)
class AccountChecker:
    """
    Checks HTTP Basic credentials against the configured accounts; the avatar id is the login.

    In order: a login remembered in C{cache} for this account as it is
    configured now gets in at once; else the client (L{ClientPassword.client})
    must have a token in C{limiter} (else L{TooManyFailures}), and the password
    is verified (a hash through C{checks}, which may fail with L{Busy}).
    A success gives the token back and is remembered.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self, accounts: Sequence[Login], checks: CheckQueue, cache: LoginCache[Login], limiter: FailureLimiter
    ) -> None:
        """@param accounts: at least one account."""
        self._accounts = {a.login: a for a in accounts}
        self._decoy = decoy(accounts)
        self._checks = checks
        self._cache = cache
        self._limiter = limiter

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[bytes | tuple[()]]:
        """Fire with the login, or fail with L{UnauthorizedLogin}, L{TooManyFailures} or L{Busy}."""
        login, password = credentials.username, credentials.password
        account = self._accounts.get(login)
        if account is not None and self._cache.get(login, password) == account:
            return succeed(login)
        client = credentials.client if isinstance(credentials, ClientPassword) else NO_ADDRESS
        try:
            self._limiter.take(client)
        except TooManyFailures as e:
            return fail(e)

        def decide(matches: bool) -> bytes:
            if account is None or not matches:
                log.info("api: refused credentials for login {login!r} from {client}",
                         login=login.decode("utf-8", "replace"), client=client)
                raise UnauthorizedLogin()
            self._limiter.give_back(client)
            self._cache.put(login, password, account)
            return login

        def busy(failure: Failure) -> Failure:
            failure.trap(Busy)
            self._limiter.give_back(client)
            return failure

        return (account or self._decoy).verify(password, self._checks).addCallbacks(decide, busy)


@implementer(IRealm)
class AccountRealm:
    """Hands each login the API as its account kind may use it."""

    def __init__(self, accounts: Sequence[Login], resource_for: Callable[[Account], IResource]) -> None:
        """@param resource_for: builds the API resource for one account kind."""
        self._kinds = {a.login: a.account for a in accounts}
        self._resource_for = resource_for

    def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: object, *interfaces: Any
    ) -> tuple[Any, IResource, Callable[[], None]]:
        """The L{IResource} avatar of C{avatarId}, a login (never anonymous: L{AccountChecker} gives logins)."""
        if not isinstance(avatarId, bytes):
            raise NotImplementedError("the API realm has no anonymous avatar")
        if IResource not in interfaces:
            raise NotImplementedError("the API realm only hands out web resources")
        return IResource, self._resource_for(self._kinds[avatarId]), lambda: None


def guard(
    api: ApiConfig,
    resource_for: Callable[[Account], IResource],
    run_blocking: RunBlocking = run_inline,
    clock: IReactorTime | None = None,
) -> IResource:
    """
    The API behind a login when C{api} configures accounts; otherwise open:
    as admin to this host's clients, as a basic account to others (L{ByClient}).

    A request without valid credentials gets 401 and
    C{WWW-Authenticate: Basic realm="balancer"} (see L{Gate} for 429 and 503).

    @param resource_for: builds the API resource for one account kind.
    @param run_blocking: runs bcrypt checks, C{api.auth_concurrency} at a time.
    @param clock: times the login cache and the failure limit; the global reactor by default.
    """
    accounts = logins(api)
    if not accounts:
        return ByClient(resource_for(Account.ADMIN), resource_for(Account.BASIC))
    timer = clock if clock is not None else _global_reactor()
    checker = AccountChecker(
        accounts,
        CheckQueue(run_blocking, api.auth_concurrency),
        LoginCache(timer),
        FailureLimiter(timer, api.auth_failures_per_second),
    )
    return Gate(Portal(AccountRealm(accounts, resource_for), [checker]), REALM)


def _global_reactor() -> IReactorTime:
    """The global reactor, for a guard built without a clock."""
    from twisted.internet import reactor

    return IReactorTime(reactor)
