"""
L{Admission.take}: a listener's admission of a new client in one call
(the refusal, if any, else the client counted as taken).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from balancer.proxy.access import AccessRules, compile_rule
from balancer.proxy.admission import Admission
from balancer.proxy.finished import DENIED, OVER_LIMIT
from balancer.stats import ServerCounters


class TakeTests(SynchronousTestCase):
    """L{Admission.take} refuses as L{Admission.refusal} does, and counts a client taken as live and in the total."""

    def test_everyoneTaken(self) -> None:
        """Without rules or a limit, every client is taken and counted."""
        counters = ServerCounters()
        admission = Admission(counters, "web")
        self.assertEqual([admission.take("192.0.2.1") for _ in range(3)], [None] * 3)
        self.assertEqual((counters.active_connections, counters.total_connections), (3, 3))

    def test_overLimit(self) -> None:
        """At the limit, a client is refused as over it, counted in C{over_limit}, not taken."""
        counters = ServerCounters()
        admission = Admission(counters, "web", limit=1)
        self.assertIsNone(admission.take("192.0.2.1"))
        self.assertEqual(admission.take("192.0.2.2"), OVER_LIMIT)
        self.assertEqual((counters.active_connections, counters.total_connections, counters.over_limit), (1, 1, 1))
        admission.ended()
        self.assertIsNone(admission.take("192.0.2.2"))

    def test_denied(self) -> None:
        """A client the access rules refuse is denied, counted in C{denied}, not taken."""
        counters = ServerCounters()
        rules = AccessRules([compile_rule("deny 192.0.2.0/24")], default=True)
        admission = Admission(counters, "web", access=rules)
        self.assertEqual(admission.take("192.0.2.9"), DENIED)
        self.assertIsNone(admission.take("198.51.100.1"))
        self.assertEqual((counters.active_connections, counters.total_connections, counters.denied), (1, 1, 1))
