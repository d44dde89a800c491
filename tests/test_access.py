"""Tests for L{balancer.proxy.access}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from balancer.config.schema import AccessConfig
from balancer.proxy.access import AccessRules, compile_rule


def rules(*lines: str, default: str = "allow") -> AccessRules:
    """Rules compiled from an C{[access]} section with C{lines}."""
    return AccessRules.from_config(AccessConfig(default=default, rules=lines))


class DefaultTests(SynchronousTestCase):
    """Without a matching rule the default decides."""

    def test_noRulesDefaultAllow(self) -> None:
        self.assertTrue(rules().allows("10.0.0.1"))

    def test_noRulesDefaultDeny(self) -> None:
        self.assertFalse(rules(default="deny").allows("10.0.0.1"))

    def test_unmatchedClientGetsDefault(self) -> None:
        access = rules("allow 10.0.0.0/8", default="deny")
        self.assertFalse(access.allows("192.168.1.1"))

    def test_notAnIpGetsDefault(self) -> None:
        self.assertTrue(rules("deny 0.0.0.0/0").allows("localhost"))
        self.assertFalse(rules("allow 0.0.0.0/0", default="deny").allows("not-an-ip"))


class MatchTests(SynchronousTestCase):
    """Single addresses, networks, and the first match winning."""

    def test_singleAddress(self) -> None:
        access = rules("deny 1.2.3.4")
        self.assertFalse(access.allows("1.2.3.4"))
        self.assertTrue(access.allows("1.2.3.5"))

    def test_network(self) -> None:
        access = rules("allow 10.0.0.0/8", default="deny")
        self.assertTrue(access.allows("10.0.0.1"))
        self.assertTrue(access.allows("10.255.255.255"))
        self.assertFalse(access.allows("11.0.0.0"))
        self.assertFalse(access.allows("9.255.255.255"))

    def test_firstMatchWins(self) -> None:
        access = rules("deny 10.1.0.0/16", "allow 10.0.0.0/8", default="deny")
        self.assertFalse(access.allows("10.1.2.3"))
        self.assertTrue(access.allows("10.2.2.3"))
        reversed_order = rules("allow 10.0.0.0/8", "deny 10.1.0.0/16", default="deny")
        self.assertTrue(reversed_order.allows("10.1.2.3"))

    def test_hostBitsOfACidrAreIgnored(self) -> None:
        access = rules("deny 10.1.2.3/8")
        self.assertFalse(access.allows("10.200.0.1"))

    def test_zeroPrefixMatchesEveryIpv4(self) -> None:
        access = rules("deny 0.0.0.0/0")
        self.assertFalse(access.allows("203.0.113.9"))
        self.assertTrue(access.allows("2001:db8::1"))


class IPv6Tests(SynchronousTestCase):
    """IPv6 rules and clients, and IPv4-mapped IPv6 clients."""

    def test_ipv6Network(self) -> None:
        access = rules("allow 2001:db8::/32", default="deny")
        self.assertTrue(access.allows("2001:db8:1::5"))
        self.assertFalse(access.allows("2001:db9::5"))

    def test_ipv6SingleAddress(self) -> None:
        access = rules("deny ::1")
        self.assertFalse(access.allows("::1"))
        self.assertFalse(access.allows("0:0:0:0:0:0:0:1"))
        self.assertTrue(access.allows("::2"))

    def test_ipv6ScopeIsIgnored(self) -> None:
        self.assertFalse(rules("deny fe80::/10").allows("fe80::1%eth0"))

    def test_ipv4RuleDoesNotMatchIpv6Client(self) -> None:
        access = rules("deny 0.0.0.0/0")
        self.assertTrue(access.allows("2001:db8::1"))

    def test_ipv6RuleDoesNotMatchIpv4Client(self) -> None:
        access = rules("deny ::/0")
        self.assertTrue(access.allows("10.0.0.1"))
        self.assertFalse(access.allows("2001:db8::1"))

    def test_mappedClientMatchesIpv4Rules(self) -> None:
        access = rules("deny 10.0.0.0/8", "allow 1.2.3.4", default="deny")
        self.assertFalse(access.allows("::ffff:10.0.0.1"))
        self.assertTrue(access.allows("::ffff:1.2.3.4"))
        self.assertFalse(access.allows("::ffff:1.2.3.5"))

    def test_mappedRuleMatchesIpv4Client(self) -> None:
        access = rules("deny ::ffff:10.0.0.0/104")
        self.assertFalse(access.allows("10.9.9.9"))
        self.assertFalse(access.allows("::ffff:10.9.9.9"))
        self.assertTrue(access.allows("11.0.0.1"))


class CompileTests(SynchronousTestCase):
    """L{compile_rule} refuses what is not a rule."""

    def test_badRules(self) -> None:
        for bad in ("permit 1.2.3.4", "allow", "allow 1.2.3.4 extra", "deny 1.2.3", "allow 10.0.0.0/33", ""):
            self.assertRaises(ValueError, compile_rule, bad)

    def test_compiledForm(self) -> None:
        self.assertEqual(compile_rule("deny 10.0.0.0/8"), (False, 4, 0x0A000000, 0xFF000000))
        self.assertEqual(compile_rule("allow ::ffff:10.0.0.0/104"), (True, 4, 0x0A000000, 0xFF000000))
