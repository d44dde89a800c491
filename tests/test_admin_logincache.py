"""L{LoginCache}: successful logins for a minute, found by a keyed digest, never by the password."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from admin.logincache import LIFETIME, LoginCache


class LoginCacheTests(SynchronousTestCase):

    def test_rememberedForALifetimeFromTheCheck(self) -> None:
        clock = Clock()
        cache: LoginCache[str] = LoginCache(clock)
        cache.put(b"admin", b"secret", "matched")
        clock.advance(LIFETIME - 0.001)
        self.assertEqual(cache.get(b"admin", b"secret"), "matched")
        clock.advance(0.001)
        self.assertIsNone(cache.get(b"admin", b"secret"))
        self.assertEqual(len(cache), 0, "an expired entry is removed when found")

    def test_lifetimeIsAMinute(self) -> None:
        self.assertEqual(LIFETIME, 60.0)

    def test_otherCredentialsMiss(self) -> None:
        cache: LoginCache[str] = LoginCache(Clock())
        cache.put(b"admin", b"secret", "matched")
        for login, password in ((b"admin", b"secreT"), (b"admin", b""), (b"Admin", b"secret"),
                                (b"admins", b"ecret"), (b"admi", b"nsecret")):
            self.assertIsNone(cache.get(login, password), (login, password))

    def test_loginAndPasswordAreFramed(self) -> None:
        cache: LoginCache[str] = LoginCache(Clock())
        self.assertNotEqual(cache.digest(b"ab", b"c"), cache.digest(b"a", b"bc"))

    def test_digestIsKeyedPerCache(self) -> None:
        one: LoginCache[str] = LoginCache(Clock())
        two: LoginCache[str] = LoginCache(Clock())
        self.assertEqual(one.digest(b"admin", b"secret"), one.digest(b"admin", b"secret"))
        self.assertNotEqual(one.digest(b"admin", b"secret"), two.digest(b"admin", b"secret"))
        self.assertEqual(len(one.digest(b"admin", b"secret")), 32)

    def test_neitherPasswordNorLoginIsKept(self) -> None:
        cache: LoginCache[str] = LoginCache(Clock())
        password = b"correct horse battery staple"
        cache.put(b"administrator", password, "matched")
        held = repr(vars(cache)).encode()
        self.assertNotIn(repr(password)[2:-1].encode(), held)
        self.assertNotIn(b"administrator", held)

    def test_sizeIsBounded(self) -> None:
        clock = Clock()
        cache: LoginCache[int] = LoginCache(clock, max_entries=10)
        for i in range(100):
            cache.put(b"user", b"%d" % i, i)
        self.assertEqual(len(cache), 10)
        self.assertEqual(cache.get(b"user", b"99"), 99)
        self.assertIsNone(cache.get(b"user", b"0"))

    def test_expiredEntriesGoFirstWhenFull(self) -> None:
        clock = Clock()
        cache: LoginCache[int] = LoginCache(clock, max_entries=2)
        cache.put(b"user", b"old", 1)
        clock.advance(LIFETIME - 1)
        cache.put(b"user", b"new", 2)
        clock.advance(1)
        cache.put(b"user", b"newer", 3)
        self.assertEqual((cache.get(b"user", b"new"), cache.get(b"user", b"newer")), (2, 3))
