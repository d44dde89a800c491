"""L{FailureLimiter}: a token bucket of failed logins per client address, in a bounded table."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from admin.ratelimit import FailureLimiter, TooManyFailures, client_key


class FailureLimiterTests(SynchronousTestCase):

    def test_burstOfPerSecondThenRefusedWithRetryAfter(self) -> None:
        limiter = FailureLimiter(Clock(), per_second=5)
        for _ in range(5):
            limiter.take("10.0.0.1")
        with self.assertRaises(TooManyFailures) as raised:
            limiter.take("10.0.0.1")
        self.assertEqual((raised.exception.client, raised.exception.retry_after), ("10.0.0.1", 1))
        limiter.take("10.0.0.2")

    def test_refusalTakesNothing(self) -> None:
        clock = Clock()
        limiter = FailureLimiter(clock, per_second=2)
        limiter.take("a")
        limiter.take("a")
        for _ in range(100):
            self.assertRaises(TooManyFailures, limiter.take, "a")
        clock.advance(0.5)
        limiter.take("a")

    def test_tokensComeBackAtTheRateAndNoMoreThanTheBurst(self) -> None:
        clock = Clock()
        limiter = FailureLimiter(clock, per_second=5)
        for _ in range(5):
            limiter.take("a")
        clock.advance(0.199)
        self.assertRaises(TooManyFailures, limiter.take, "a")
        clock.advance(0.002)
        limiter.take("a")
        clock.advance(3600)
        for _ in range(5):
            limiter.take("a")
        self.assertRaises(TooManyFailures, limiter.take, "a")

    def test_retryAfterIsTheWaitForOneToken(self) -> None:
        limiter = FailureLimiter(Clock(), per_second=1)
        limiter.take("a")
        with self.assertRaises(TooManyFailures) as raised:
            limiter.take("a")
        self.assertEqual(raised.exception.retry_after, 1)

    def test_givenBackTokenCanBeTakenAgain(self) -> None:
        limiter = FailureLimiter(Clock(), per_second=1)
        for _ in range(10):
            limiter.take("a")
            limiter.give_back("a")
        self.assertEqual(len(limiter), 0, "a full bucket is not kept")

    def test_tableIsBounded(self) -> None:
        clock = Clock()
        limiter = FailureLimiter(clock, per_second=1, max_clients=100)
        for i in range(10_000):
            limiter.take(f"client-{i}")
            clock.advance(0.00001)
        self.assertEqual(len(limiter), 100)
        limiter.take("client-0")  # forgotten, so full again (0.1 s would have refilled a tenth)
        self.assertRaises(TooManyFailures, limiter.take, "client-9999")

    def test_refilledBucketsAreDropped(self) -> None:
        clock = Clock()
        limiter = FailureLimiter(clock, per_second=5)
        limiter.take("a")
        clock.advance(1)
        limiter.give_back("a")
        self.assertEqual(len(limiter), 0)


class ClientKeyTests(SynchronousTestCase):

    def test_ipv4IsItself(self) -> None:
        self.assertEqual(client_key("192.0.2.7"), "192.0.2.7")

    def test_ipv6IsCountedPerSlash64(self) -> None:
        self.assertEqual(client_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64")
        self.assertEqual(client_key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::/64")
        self.assertNotEqual(client_key("2001:db8:1:3::1"), client_key("2001:db8:1:2::1"))

    def test_ipv4MappedIsTheIpv4Address(self) -> None:
        self.assertEqual(client_key("::ffff:192.0.2.7"), "192.0.2.7")

    def test_anythingElseIsItself(self) -> None:
        self.assertEqual(client_key(""), "")
        self.assertEqual(client_key("/run/api.sock"), "/run/api.sock")
