"""
The layout of the runtime changes under a cluster's prefix
(L{balancer.cluster.records}): one key per resource, tombstones instead of
deletions, values that carry when and by whom.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from balancer.cluster import records
from balancer.cluster.records import Record
from balancer.state import RuntimeChanges


def sample() -> RuntimeChanges:
    """Changes of every kind."""
    return RuntimeChanges(
        servers={"web": {"bind": "127.0.0.1:3000", "protocol": "tcp"}},
        deleted={"old"},
        backends={"b1": {"address": "10.0.0.1", "port": 80, "services": ["web"]}},
        backend_states={"b1": "drain", "10.0.0.2:80": "maintenance"},
        overrides={"10.0.0.2:80": {"weight": 5}, "10.0.0.3:80": {}},
    )


def recorded(changes: RuntimeChanges) -> dict[str, Record]:
    """The records C{changes} would leave in the store."""
    return {key: Record(fields, 1, 0.0, "a") for key, fields in records.layout(changes).items()}


class LayoutTests(TestCase):
    """One key per resource, and back."""

    def test_everyKindOfChangeHasItsKey(self) -> None:
        keys = records.layout(sample())
        self.assertEqual(sorted(keys), [
            "backends/10.0.0.2:80", "backends/10.0.0.3:80", "backends/b1", "servers/old", "servers/web"])
        self.assertEqual(keys["backends/b1"], {
            "backend": {"address": "10.0.0.1", "port": 80, "services": ["web"]}, "state": "drain"})
        self.assertEqual(keys["servers/old"], {"deleted": True})
        self.assertEqual(keys["backends/10.0.0.3:80"], {"override": {}})

    def test_changesComeBackFromTheirRecords(self) -> None:
        self.assertEqual(records.changes_from(recorded(sample())), sample())

    def test_namesThatNeedQuotingAreQuoted(self) -> None:
        changes = RuntimeChanges(backend_states={"[::1]:80": "drain"}, servers={"a.b_c-d": {"x": 1}})
        self.assertEqual(sorted(records.layout(changes)), ["backends/[::1]:80", "servers/a.b_c-d"])
        self.assertEqual(records.changes_from(recorded(changes)), changes)

    @settings(max_examples=60, deadline=None)
    @given(st.dictionaries(st.text(min_size=1, max_size=8), st.sampled_from(["drain", "maintenance"]), max_size=4),
           st.dictionaries(st.text(min_size=1, max_size=8), st.dictionaries(
               st.sampled_from(["weight", "priority"]), st.integers(0, 1000)), max_size=4))
    def test_anyIdRoundTrips(self, states: dict[str, str], overrides: dict[str, dict[str, int]]) -> None:
        changes = RuntimeChanges(backend_states=states, overrides=overrides)
        self.assertEqual(records.changes_from(recorded(changes)), changes)


class WritesTests(TestCase):
    """What a change writes: the keys that differ, tombstones for what went."""

    def test_onlyTheKeysThatDifferAreWritten(self) -> None:
        old = sample()
        new = old.copy()
        new.backend_states["b1"] = "maintenance"
        self.assertEqual(records.writes(old, new), {
            "backends/b1": {"backend": old.backends["b1"], "state": "maintenance"}})

    def test_nothingChangedWritesNothing(self) -> None:
        self.assertEqual(records.writes(sample(), sample()), {})

    def test_whatWentLeavesATombstone(self) -> None:
        old = sample()
        new = old.copy()
        new.servers.pop("web")
        new.backend_states.pop("10.0.0.2:80")
        new.overrides.pop("10.0.0.2:80")
        self.assertEqual(records.writes(old, new), {"backends/10.0.0.2:80": {}, "servers/web": {"deleted": True}})

    def test_aConfiguredServerDeletedIsWritten(self) -> None:
        new = RuntimeChanges()
        new.removed("web", configured=True)
        self.assertEqual(records.writes(RuntimeChanges(), new), {"servers/web": {"deleted": True}})

    def test_aDeletedServerCreatedAgainIsWritten(self) -> None:
        old = sample()
        new = old.copy()
        new.created("old", {"bind": "127.0.0.1:1"})
        self.assertEqual(records.writes(old, new), {"servers/old": {"definition": {"bind": "127.0.0.1:1"}}})


class EncodingTests(TestCase):
    """A key's value: JSON with when and by whom."""

    def test_roundTrip(self) -> None:
        value = records.encode({"state": "drain"}, 1700000000.5, "lb-1")
        self.assertEqual(records.decode(value, 7), Record({"state": "drain"}, 7, 1700000000.5, "lb-1"))

    def test_badValuesAreNamed(self) -> None:
        for value, expected in [(b"\xff", "not UTF-8 JSON"), (b"[1]", "expected a JSON object"),
                                (b"{}", "changed_at"), (b'{"changed_at": "x"}', "changed_at"),
                                (b'{"changed_at": true}', "changed_at"), (b'{"changed_at": NaN}', "changed_at")]:
            with self.assertRaises(ValueError) as raised:
                records.decode(value, 1)
            self.assertIn(expected, str(raised.exception), value)
