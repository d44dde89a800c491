"""
The guard: accounts from C{[api.basic_auth]} and C{[[api.users]]}, HTTP Basic
challenges, constant-time checks, and what a C{basic} account may do.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Callable

import bcrypt
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import IResource, Resource

from admin import auth
from admin.auth import Account, AccountChecker, Login, logins
from balancer.config.load import parse_config
from tests.test_admin_root import CONFIG, NEW_SERVER, Api, Reactor

#: A cheap bcrypt cost keeps the tests fast; the check is the same at any cost.
VIEWER_HASH = bcrypt.hashpw(b"viewer-secret", bcrypt.gensalt(rounds=4)).decode()
OPERATOR_HASH = bcrypt.hashpw(b"operator-secret", bcrypt.gensalt(rounds=4)).decode()

ACCOUNTS = f"""
[api.basic_auth]
login = "admin"
password = "1111"

[[api.users]]
login = "viewer"
password_hash = "{VIEWER_HASH}"
account = "basic"

[[api.users]]
login = "operator"
password_hash = "{OPERATOR_HASH}"

[[api.users]]
login = "reader"
password = "plain-reader"
account = "basic"
"""

CHALLENGE = [b'Basic realm="balancer"']


def guarded_api(accounts: str = ACCOUNTS) -> Api:
    """An L{Api} whose C{[api]} section holds C{accounts}."""
    return Api(parse_config(CONFIG.format(api="", extra=accounts).encode(), "test.toml"), Reactor())


class GuardTests(SynchronousTestCase):
    """Who gets in."""

    def assertChallenged(self, api: Api, **kwargs: Any) -> None:
        response, _ = api.call(self, "GET", "/servers", **kwargs)
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers.getRawHeaders(b"WWW-Authenticate"), CHALLENGE)

    def test_noAccountsMeansOpen(self) -> None:
        api = guarded_api("")
        response, _ = api.call(self, "GET", "/servers")
        self.assertEqual(response.code, 200)
        response, _ = api.call(self, "POST", "/servers/new", json=NEW_SERVER)
        self.assertEqual(response.code, 200)

    def test_noCredentialsIs401WithBasicChallenge(self) -> None:
        self.assertChallenged(guarded_api())

    def test_wrongPasswordIs401(self) -> None:
        api = guarded_api()
        for login, password in (("admin", "1112"), ("viewer", "1111"), ("operator", ""), ("reader", "plain")):
            self.assertChallenged(api, auth=(login, password))

    def test_unknownLoginIs401(self) -> None:
        self.assertChallenged(guarded_api(), auth=("nobody", "1111"))

    def test_malformedAuthorizationIs401(self) -> None:
        api = guarded_api()
        for header in ("Basic !!!", "Basic " + "YWRtaW4=", "Bearer abc", "Digest x"):
            self.assertChallenged(api, headers={"Authorization": header})

    def test_everyAccountGetsInWithItsPassword(self) -> None:
        api = guarded_api()
        for login, password in (("admin", "1111"), ("viewer", "viewer-secret"),
                                ("operator", "operator-secret"), ("reader", "plain-reader")):
            response, _ = api.call(self, "GET", "/servers", auth=(login, password))
            self.assertEqual(response.code, 200, login)

    def test_schemeIsCaseInsensitive(self) -> None:
        response, _ = guarded_api().call(self, "GET", "/", headers={"Authorization": "bAsIc YWRtaW46MTExMQ=="})
        self.assertEqual(response.code, 200)

    def test_pingIsPublic(self) -> None:
        response, body = guarded_api().call(self, "GET", "/ping")
        self.assertEqual((response.code, body), (200, b'"OK"'))

    def test_corsPreflightNeedsNoCredentials(self) -> None:
        config = parse_config(CONFIG.format(api="cors = true", extra=ACCOUNTS).encode(), "test.toml")
        api = Api(config, Reactor())
        response, _ = api.call(self, "OPTIONS", "/servers/new", headers={"Access-Control-Request-Method": "POST"})
        self.assertEqual(response.code, 204)
        response, _ = api.call(self, "GET", "/servers")
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers.getRawHeaders(b"Access-Control-Allow-Origin"), [b"*"])

    def test_passwordOverBcryptLimitIs401(self) -> None:
        self.assertChallenged(guarded_api(), auth=("viewer", "x" * 100))


class AccountKindTests(SynchronousTestCase):
    """A C{basic} account reads; writes and C{/dump} are 403 and change nothing."""

    VIEWER = ("viewer", "viewer-secret")
    READER = ("reader", "plain-reader")

    def test_basicAccountReadsEverything(self) -> None:
        api = guarded_api()
        for path in ("/", "/servers", "/servers/web", "/servers/web/stats"):
            response, _ = api.call(self, "GET", path, auth=self.VIEWER)
            self.assertEqual(response.code, 200, path)

    def test_basicAccountWritesAre403(self) -> None:
        api = guarded_api()
        for account in (self.VIEWER, self.READER):
            for method, path in (("POST", "/servers/new"), ("DELETE", "/servers/web"), ("GET", "/dump"),
                                 ("GET", "/dump?format=json")):
                response, body = api.call(self, method, path, auth=account, json=NEW_SERVER)
                self.assertEqual((response.code, response.headers.getRawHeaders(b"Content-Type")),
                                 (403, [b"application/json"]), (method, path))
                self.assertIn("needs an admin account", json.loads(body))
        _, listed = api.call(self, "GET", "/servers", auth=self.VIEWER)
        self.assertEqual(list(json.loads(listed)), ["web", "db"])
        self.assertEqual(api.reactor.listening(), [3000, 3001])

    def test_adminAccountsWrite(self) -> None:
        api = guarded_api()
        response, _ = api.call(self, "POST", "/servers/new", json=NEW_SERVER, auth=("operator", "operator-secret"))
        self.assertEqual(response.code, 200)
        response, _ = api.call(self, "DELETE", "/servers/new", auth=("admin", "1111"))
        self.assertEqual(response.code, 200)
        response, body = api.call(self, "GET", "/dump", auth=("admin", "1111"))
        self.assertEqual(response.code, 200)
        self.assertIn(VIEWER_HASH, body.decode(), "hashes stay hashes in the dump")


class CheckerTests(SynchronousTestCase):
    """L{AccountChecker}: constant-time comparisons, and the same work for unknown logins."""

    def accounts(self) -> list[Login]:
        return logins(parse_config(CONFIG.format(api="", extra=ACCOUNTS).encode(), "t").api)

    def check(self, checker: AccountChecker, login: bytes, password: bytes) -> Any:
        return checker.requestAvatarId(UsernamePassword(login, password))

    def test_loginsFromConfig(self) -> None:
        found = {a.login: a.account for a in self.accounts()}
        self.assertEqual(found, {b"admin": Account.ADMIN, b"viewer": Account.BASIC,
                                 b"operator": Account.ADMIN, b"reader": Account.BASIC})

    def test_plainPasswordsComparedWithCompareDigest(self) -> None:
        compared: list[tuple[bytes, bytes]] = []
        original = hmac.compare_digest

        def compare_digest(a: bytes, b: bytes) -> bool:
            compared.append((a, b))
            return original(a, b)

        self.patch(auth.hmac, "compare_digest", compare_digest)
        checker = AccountChecker(self.accounts())
        self.assertEqual(self.successResultOf(self.check(checker, b"admin", b"1111")), b"admin")
        self.failureResultOf(self.check(checker, b"admin", b"2222"), UnauthorizedLogin)
        self.assertEqual(compared, [(b"1111", b"1111"), (b"2222", b"1111")])

    def test_hashesCheckedWithBcryptThroughRunBlocking(self) -> None:
        ran: list[Callable[..., Any]] = []

        def run_blocking(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
            ran.append(function)
            return maybeDeferred(function, *args)

        checker = AccountChecker(self.accounts(), run_blocking)
        self.assertEqual(self.successResultOf(self.check(checker, b"viewer", b"viewer-secret")), b"viewer")
        self.failureResultOf(self.check(checker, b"viewer", b"nope"), UnauthorizedLogin)
        self.assertEqual(ran, [auth._bcrypt_matches] * 2)

    def test_unknownLoginCostsACheckAndFailsEvenWithTheDecoysPassword(self) -> None:
        ran: list[tuple[Any, ...]] = []

        def run_blocking(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
            ran.append(args)
            return maybeDeferred(function, *args)

        hashed = [a for a in self.accounts() if a.password_hash is not None]
        checker = AccountChecker(hashed, run_blocking)
        self.failureResultOf(self.check(checker, b"nobody", b"viewer-secret"), UnauthorizedLogin)
        self.assertEqual(ran, [(b"viewer-secret", VIEWER_HASH.encode())])

    def test_realmRefusesOtherInterfaces(self) -> None:
        realm = auth.AccountRealm(self.accounts(), lambda account: Resource())
        with self.assertRaises(NotImplementedError):
            realm.requestAvatar(b"admin", None, IUsernamePassword)

    def test_resourceBuiltPerAccountKind(self) -> None:
        built: list[Account] = []

        def resource_for(account: Account) -> Resource:
            built.append(account)
            return Resource()

        realm = auth.AccountRealm(self.accounts(), resource_for)
        for login in (b"admin", b"viewer", b"operator", b"reader"):
            interface, _, _ = realm.requestAvatar(login, None, IResource)
            self.assertIs(interface, IResource)
        self.assertEqual(built, [Account.ADMIN, Account.BASIC, Account.ADMIN, Account.BASIC])
