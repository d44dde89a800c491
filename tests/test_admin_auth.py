"""
The guard: accounts from C{[api.basic_auth]} and C{[[api.users]]}, HTTP Basic
challenges, constant-time checks, and what a C{basic} account may do.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Sequence

import bcrypt
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import IResource, Resource

from admin import auth
from admin.auth import Account, AccountChecker, Login, logins
from admin.checks import Busy, CheckQueue
from admin.gate import ClientPassword
from admin.logincache import LoginCache
from admin.ratelimit import FailureLimiter, TooManyFailures
from balancer.config.errors import ConfigError
from balancer.config.load import parse_config
from tests.support.reactors import ListeningReactor
from tests.support.root_api import CONFIG, NEW_SERVER, Api
from tests.support.runners import BlockingRunner, Runner

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
    return Api(parse_config(CONFIG.format(api="", extra=accounts).encode(), "test.toml"), ListeningReactor())


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
        api = Api(config, ListeningReactor())
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


def make_checker(accounts: Sequence[Login], run_blocking: Any = None, *, clock: Clock | None = None,
                 per_second: int = 5, cache: LoginCache[Login] | None = None, concurrency: int = 2,
                 queue: int | None = None) -> AccountChecker:
    clock = clock or Clock()
    return AccountChecker(accounts, CheckQueue(run_blocking or Runner(), concurrency, queue),
                          cache if cache is not None else LoginCache(clock), FailureLimiter(clock, per_second))


def from_client(login: bytes, password: bytes, client: str = "192.0.2.1") -> ClientPassword:
    return ClientPassword(login, password, client)


class CheckerTests(SynchronousTestCase):
    """L{AccountChecker}: constant-time comparisons, the same work for unknown logins, cache and limits."""

    def accounts(self) -> list[Login]:
        return logins(parse_config(CONFIG.format(api="", extra=ACCOUNTS).encode(), "t").api)

    def check(self, checker: AccountChecker, login: bytes, password: bytes, client: str = "192.0.2.1") -> Any:
        return checker.requestAvatarId(from_client(login, password, client))

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
        checker = make_checker(self.accounts())
        self.assertEqual(self.successResultOf(self.check(checker, b"admin", b"1111")), b"admin")
        self.failureResultOf(self.check(checker, b"admin", b"2222"), UnauthorizedLogin)
        self.assertEqual(compared, [(b"1111", b"1111"), (b"2222", b"1111")])

    def test_hashesCheckedWithBcryptThroughRunBlocking(self) -> None:
        runner = Runner()
        checker = make_checker(self.accounts(), runner)
        self.assertEqual(self.successResultOf(self.check(checker, b"viewer", b"viewer-secret")), b"viewer")
        self.failureResultOf(self.check(checker, b"viewer", b"nope"), UnauthorizedLogin)
        self.assertEqual([function for function, _ in runner.ran], [auth._bcrypt_matches] * 2)

    def test_credentialsWithoutAClientAddressAreCheckedToo(self) -> None:
        checker = make_checker(self.accounts())
        self.assertEqual(self.successResultOf(checker.requestAvatarId(UsernamePassword(b"admin", b"1111"))), b"admin")
        self.failureResultOf(checker.requestAvatarId(UsernamePassword(b"admin", b"x")), UnauthorizedLogin)

    def test_unknownLoginCostsACheckAndFailsEvenWithTheDecoysPassword(self) -> None:
        runner = Runner()
        hashed = [a for a in self.accounts() if a.password_hash is not None]
        checker = make_checker(hashed, runner)
        self.failureResultOf(self.check(checker, b"nobody", b"viewer-secret"), UnauthorizedLogin)
        self.failureResultOf(self.check(checker, b"nobody", b"operator-secret"), UnauthorizedLogin)
        self.assertEqual(len(runner.ran), 2)


class DecoyTests(SynchronousTestCase):
    """An unknown login is checked against the most expensive secret configured."""

    PLAIN_ADMIN = Login(b"admin", Account.ADMIN, password=b"1111")
    CHEAP = Login(b"cheap", Account.BASIC, password_hash=VIEWER_HASH.encode())
    DEAR = Login(b"dear", Account.BASIC, password_hash=bcrypt.hashpw(b"dear", bcrypt.gensalt(rounds=5)))

    def test_costIsTheBcryptCostOrMinusOneForPlain(self) -> None:
        self.assertEqual((self.PLAIN_ADMIN.cost(), self.CHEAP.cost(), self.DEAR.cost()), (-1, 4, 5))

    def test_plainAdminFirstAndABcryptViewer(self) -> None:
        runner = Runner()
        checker = make_checker([self.PLAIN_ADMIN, self.CHEAP], runner)
        self.failureResultOf(checker.requestAvatarId(from_client(b"nobody", b"1111")), UnauthorizedLogin)
        self.assertEqual(runner.hashes(), [VIEWER_HASH.encode()], "the decoy is the bcrypt hash, not the plain admin")

    def test_highestCostWhereverItIsListed(self) -> None:
        for accounts in ([self.PLAIN_ADMIN, self.CHEAP, self.DEAR], [self.DEAR, self.CHEAP, self.PLAIN_ADMIN],
                         [self.CHEAP, self.PLAIN_ADMIN, self.DEAR]):
            runner = Runner()
            checker = make_checker(accounts, runner)
            self.failureResultOf(checker.requestAvatarId(from_client(b"nobody", b"x")), UnauthorizedLogin)
            self.assertEqual(runner.hashes(), [self.DEAR.password_hash], [a.login for a in accounts])
            self.assertIs(auth.decoy(accounts), self.DEAR)

    def test_onlyPlainAccountsComparePlainly(self) -> None:
        runner = Runner()
        checker = make_checker([self.PLAIN_ADMIN, Login(b"other", Account.BASIC, password=b"2")], runner)
        self.failureResultOf(checker.requestAvatarId(from_client(b"nobody", b"1111")), UnauthorizedLogin)
        self.assertEqual(runner.ran, [])


class CacheTests(SynchronousTestCase):
    """A successful check is remembered for 60 s; the hash is not run again meanwhile."""

    VIEWER = Login(b"viewer", Account.BASIC, password_hash=VIEWER_HASH.encode())

    def test_cacheHitSkipsTheHash(self) -> None:
        runner = Runner()
        checker = make_checker([self.VIEWER], runner)
        for _ in range(20):
            self.assertEqual(self.successResultOf(checker.requestAvatarId(from_client(b"viewer", b"viewer-secret"))),
                             b"viewer")
        self.assertEqual(len(runner.ran), 1)

    def test_cacheExpiresAfterAMinute(self) -> None:
        clock, runner = Clock(), Runner()
        checker = make_checker([self.VIEWER], runner, clock=clock)
        self.successResultOf(checker.requestAvatarId(from_client(b"viewer", b"viewer-secret")))
        clock.advance(59.9)
        self.successResultOf(checker.requestAvatarId(from_client(b"viewer", b"viewer-secret")))
        self.assertEqual(len(runner.ran), 1)
        clock.advance(0.1)
        self.successResultOf(checker.requestAvatarId(from_client(b"viewer", b"viewer-secret")))
        self.assertEqual(len(runner.ran), 2)

    def test_failuresAreNotCached(self) -> None:
        runner = Runner()
        checker = make_checker([self.VIEWER], runner)
        for _ in range(3):
            self.failureResultOf(checker.requestAvatarId(from_client(b"viewer", b"wrong")), UnauthorizedLogin)
        self.assertEqual(len(runner.ran), 3)

    def test_cacheHitNeedsTheSamePassword(self) -> None:
        checker = make_checker([self.VIEWER])
        self.successResultOf(checker.requestAvatarId(from_client(b"viewer", b"viewer-secret")))
        self.failureResultOf(checker.requestAvatarId(from_client(b"viewer", b"viewer-secreT")), UnauthorizedLogin)

    def test_changedAccountInvalidatesTheCache(self) -> None:
        clock = Clock()
        cache: LoginCache[Login] = LoginCache(clock)
        make_checker([self.VIEWER], clock=clock, cache=cache).requestAvatarId(from_client(b"viewer", b"viewer-secret"))
        changed = [Login(b"viewer", Account.BASIC, password_hash=OPERATOR_HASH.encode()),
                   Login(b"viewer", Account.ADMIN, password_hash=VIEWER_HASH.encode())]
        for account in changed:
            runner = Runner()
            checker = make_checker([account], runner, clock=clock, cache=cache)
            result = checker.requestAvatarId(from_client(b"viewer", b"viewer-secret"))
            self.assertEqual(len(runner.ran), 1, f"{account} was checked again")
            if account.account is Account.ADMIN:
                self.assertEqual(self.successResultOf(result), b"viewer")
            else:
                self.failureResultOf(result, UnauthorizedLogin)

    def test_unknownLoginIsNeverACacheHit(self) -> None:
        clock = Clock()
        cache: LoginCache[Login] = LoginCache(clock)
        cache.put(b"gone", b"pw", Login(b"gone", Account.ADMIN, password=b"pw"))
        self.failureResultOf(make_checker([self.VIEWER], clock=clock, cache=cache).requestAvatarId(
            from_client(b"gone", b"pw")), UnauthorizedLogin)


class FailureLimitTests(SynchronousTestCase):
    """Failed checks per client address; past the limit, L{TooManyFailures} without a check."""

    VIEWER = Login(b"viewer", Account.BASIC, password_hash=VIEWER_HASH.encode())
    ADMIN = Login(b"admin", Account.ADMIN, password=b"1111")

    def test_pastTheLimitNoCheckRuns(self) -> None:
        clock, runner = Clock(), Runner()
        checker = make_checker([self.VIEWER], runner, clock=clock, per_second=5)
        for _ in range(5):
            self.failureResultOf(checker.requestAvatarId(from_client(b"viewer", b"wrong")), UnauthorizedLogin)
        for password in (b"wrong", b"viewer-secret"):
            failure = self.failureResultOf(checker.requestAvatarId(from_client(b"viewer", password)), TooManyFailures)
            self.assertEqual(failure.value.retry_after, 1)
        self.assertEqual(len(runner.ran), 5)
        self.failureResultOf(checker.requestAvatarId(from_client(b"viewer", b"wrong", "192.0.2.2")),
                             UnauthorizedLogin)
        clock.advance(0.2)
        self.successResultOf(checker.requestAvatarId(from_client(b"viewer", b"viewer-secret")))

    def test_plainPasswordsAreLimitedToo(self) -> None:
        checker = make_checker([self.ADMIN], per_second=2)
        for _ in range(2):
            self.failureResultOf(checker.requestAvatarId(from_client(b"admin", b"x")), UnauthorizedLogin)
        self.failureResultOf(checker.requestAvatarId(from_client(b"admin", b"1111")), TooManyFailures)

    def test_unknownLoginsCountAsFailures(self) -> None:
        checker = make_checker([self.VIEWER], per_second=1)
        self.failureResultOf(checker.requestAvatarId(from_client(b"nobody", b"x")), UnauthorizedLogin)
        self.failureResultOf(checker.requestAvatarId(from_client(b"someone", b"y")), TooManyFailures)

    def test_rightPasswordsCostNoToken(self) -> None:
        clock, runner = Clock(), Runner()
        checker = make_checker([self.VIEWER], runner, clock=clock, per_second=1,
                               cache=LoginCache(clock, lifetime=0))
        for _ in range(10):
            self.successResultOf(checker.requestAvatarId(from_client(b"viewer", b"viewer-secret")))
        self.assertEqual(len(runner.ran), 10, "no cache: every check ran, none was refused")

    def test_cachedLoginPassesWhileItsAddressIsLimited(self) -> None:
        checker = make_checker([self.VIEWER], per_second=1)
        self.successResultOf(checker.requestAvatarId(from_client(b"viewer", b"viewer-secret")))
        self.failureResultOf(checker.requestAvatarId(from_client(b"viewer", b"wrong")), UnauthorizedLogin)
        self.failureResultOf(checker.requestAvatarId(from_client(b"viewer", b"wrong")), TooManyFailures)
        self.assertEqual(self.successResultOf(checker.requestAvatarId(from_client(b"viewer", b"viewer-secret"))),
                         b"viewer")

    def test_busyCostsNoToken(self) -> None:
        runner = BlockingRunner()
        checker = make_checker([self.VIEWER], runner, per_second=2, concurrency=1, queue=0)
        first = checker.requestAvatarId(from_client(b"viewer", b"wrong"))
        for _ in range(5):
            self.failureResultOf(checker.requestAvatarId(from_client(b"viewer", b"wrong")), Busy)
        runner.finish()
        self.failureResultOf(first, UnauthorizedLogin)
        second = checker.requestAvatarId(from_client(b"viewer", b"wrong"))
        runner.finish()
        self.failureResultOf(second, UnauthorizedLogin)
        self.failureResultOf(checker.requestAvatarId(from_client(b"viewer", b"wrong")), TooManyFailures)


class RealmTests(SynchronousTestCase):
    """L{AccountRealm}: one API resource per account kind."""

    def accounts(self) -> list[Login]:
        return logins(parse_config(CONFIG.format(api="", extra=ACCOUNTS).encode(), "t").api)

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


class LimitConfigTests(SynchronousTestCase):
    """C{[api] auth_concurrency} and C{auth_failures_per_second}: defaults, bounds, one-line errors."""

    def parse(self, lines: str) -> Any:
        return parse_config(CONFIG.format(api=lines, extra="").encode(), "test.toml").api

    def test_defaults(self) -> None:
        api = self.parse("")
        self.assertEqual((api.auth_concurrency, api.auth_failures_per_second), (2, 5))

    def test_set(self) -> None:
        api = self.parse("auth_concurrency = 4\nauth_failures_per_second = 20")
        self.assertEqual((api.auth_concurrency, api.auth_failures_per_second), (4, 20))

    def test_outOfBoundsNamesTheKey(self) -> None:
        for line, expected in (
            ("auth_concurrency = 0", "api.auth_concurrency: expected an integer from 1 to 8, got 0"),
            ("auth_concurrency = 9", "api.auth_concurrency: expected an integer from 1 to 8, got 9"),
            ('auth_concurrency = "2"', 'api.auth_concurrency: expected an integer, got string "2"'),
            ("auth_failures_per_second = 0",
             "api.auth_failures_per_second: expected an integer from 1 to 10000, got 0"),
            ("auth_failures_per_second = 1.5", "api.auth_failures_per_second: expected an integer, got float 1.5"),
        ):
            with self.assertRaises(ConfigError) as raised:
                self.parse(line)
            self.assertEqual(raised.exception.lines(), [f"test.toml: {expected}"], line)
