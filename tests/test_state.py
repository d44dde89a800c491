"""
The state file (L{balancer.state}) against crafted and broken files (issue
14): temporary files that interrupted writes left are removed at start, what
is written reads back the same (escapes included), and a property-based
test feeds random and mutated files to the reader: a state or a clear
one-line error, never another exception.
"""

from __future__ import annotations

import os
import tomllib
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase

from balancer.config import ConfigError
from balancer.config.load import parse_config
from balancer.control.effective import load_effective
from balancer.state import RuntimeChanges, StateCleanup, StateFile
from tests.support.api_process import ApiProcessTestCase
from tests.support.mutations import paths, replaced
from tests.support.paths import scratch_directory

CONFIG = """
[state]
path = "{path}"

[servers.web]
bind = "127.0.0.1:0"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:9001"]
"""

#: A state file as the API writes it.
SAVED = {
    "deleted": ["old"],
    "servers": {"dns": {"bind": "127.0.0.1:0", "protocol": "udp", "discovery": {"kind": "static", "static_list": ["127.0.0.1:53"]},
                        "healthcheck": {"kind": "probe", "interval": "1s", "probe_protocol": "udp",
                                        "probe_send": "\\x00\\x01\\n", "probe_recv": "\\x41\x7f\x01"}}},
    "backends": {"mine": {"address": "127.0.0.1", "port": 9100, "weight": 1, "priority": 1, "max_connections": 0,
                          "services": ["web"]}},
    "backend_states": {"mine": "drain"},
}


class LeftoverTests(SynchronousTestCase):
    """Temporary files of interrupted writes."""

    def setUp(self) -> None:
        self.directory = scratch_directory(self)
        self.path = os.path.join(self.directory, "state.toml")

    def touch(self, *names: str) -> None:
        for name in names:
            with open(os.path.join(self.directory, name), "w") as f:
                f.write("partial")

    def test_writesAreNamedAfterTheStateFile(self) -> None:
        state = StateFile(self.path)
        self.assertEqual(state.temporary_prefix(), ".state-state.toml-")
        state.save(RuntimeChanges(deleted={"x"}))
        self.assertEqual(os.listdir(self.directory), ["state.toml"])

    def test_leftoversAreRemovedAtStartAndNothingElse(self) -> None:
        mine = [".state-state.toml-k2j4h5g6", ".state-state.toml-0", ".state-ab_cd9xz"]
        others = [".state-other.toml-k2j4h5g6", ".state-ABCDEFGH", ".state-toolongname", "state.toml.bak", "notes"]
        self.touch(*mine, *others)
        cleanup = StateCleanup(self.path)
        cleanup.startService()
        self.assertEqual(sorted(os.listdir(self.directory)), sorted(others))

    def test_noDirectoryIsNoError(self) -> None:
        self.assertEqual(StateFile(os.path.join(self.directory, "missing", "state.toml")).remove_leftovers(), [])


class RoundTripTests(SynchronousTestCase):
    """What is saved reads back the same."""

    def test_escapesAndControlCharactersSurvive(self) -> None:
        """The toml package wrote C{"\\\\x41"} so that it read back as C{"A"}, and failed on C{"\\x7f"}."""
        path = os.path.abspath(self.mktemp())
        changes = RuntimeChanges(servers=SAVED["servers"], deleted={"old"}, backends=SAVED["backends"],
                                 backend_states=SAVED["backend_states"])
        StateFile(path).save(changes)
        loaded = StateFile(path).load()
        self.assertEqual(loaded.servers, SAVED["servers"])
        self.assertEqual((loaded.deleted, loaded.backends, loaded.backend_states),
                         ({"old"}, SAVED["backends"], SAVED["backend_states"]))


class IntegrationTests(ApiProcessTestCase):
    """A real twistd removes the leftovers beside its state file when it starts."""

    @inlineCallbacks
    def test_leftoversOfKilledWritesAreGoneAfterStart(self) -> Any:
        leftovers = [f".state-state.toml-{i:08d}" for i in range(25)] + [".state-x1y2z3w4"]
        for name in [*leftovers, "keep.txt"]:
            with open(os.path.join(self.directory, name), "w") as f:
                f.write("servers = {")
        process, api = yield self.start(self.write_config())
        yield process.wait_for(rb"state: removed 26 temporary files left by interrupted writes")
        self.assertEqual(sorted(os.listdir(self.directory)), ["balancer.toml", "keep.txt"])
        response, body = yield self.call(api, "POST", "/servers/new", json={
            "bind": "127.0.0.1:0", "discovery": {"kind": "static", "static_list": ["127.0.0.1:9"]}})
        self.assertEqual(response.code, 200, body)
        self.assertEqual(sorted(os.listdir(self.directory)), ["balancer.toml", "keep.txt", "state.toml"])


# Property-based: random and mutated state files through the reader.

_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=15)
_LEAVES = st.one_of(st.booleans(), st.integers(-(10**40), 10**40), st.floats(allow_nan=False), _TEXT,
                    st.sampled_from(["drain", "maintenance", "web", "127.0.0.1:0", "static"]))
_VALUES = st.recursive(_LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(_TEXT, inner, max_size=3)), max_leaves=10)




@st.composite
def mutated_files(draw: Any) -> bytes:
    """L{SAVED} with values replaced, written as TOML; or raw bytes spliced into it."""
    document: Any = SAVED
    for _ in range(draw(st.integers(1, 3))):
        document = replaced(document, draw(st.sampled_from(paths(document))), draw(_VALUES))
    if not isinstance(document, dict):
        document = {"servers": document}
    try:
        text = tomli_w.dumps(document).encode("utf-8")
    except (TypeError, ValueError):
        text = tomli_w.dumps(SAVED).encode("utf-8")
    at = draw(st.integers(0, len(text)))
    return text[:at] + draw(st.one_of(st.just(b""), st.binary(max_size=40), st.sampled_from(
        [b"[" * 2000, b"9" * 5000, b"\x00", b'"\\ud800"', b"\n[servers.x]\n", b"\n[[backends]]\n"]))) + text[at:]


class ReaderFuzzTests(SynchronousTestCase):
    """A state, or a ConfigError of one-line problems: never another exception."""

    def setUp(self) -> None:
        self.directory = scratch_directory(self)
        self.path = os.path.join(self.directory, "state.toml")
        self.config = parse_config(CONFIG.format(path=self.path).encode(), "balancer.toml")

    def assertStateOrError(self, data: bytes) -> None:
        with open(self.path, "wb") as f:
            f.write(data)
        try:
            effective, changes = load_effective(self.config, "balancer.toml")
        except ConfigError as e:
            self.assertTrue(e.problems)
            for line in e.lines():
                self.assertTrue(line.startswith(self.path + ": "), line)
                self.assertNotIn("\n", line)
        else:
            self.assertIsInstance(changes, RuntimeChanges)
            for record in changes.backends.values():
                self.assertEqual(set(record) - {"sni"},
                                 {"address", "port", "weight", "priority", "max_connections", "services"})

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(mutated_files())
    def test_mutatedFiles(self, data: bytes) -> None:
        self.assertStateOrError(data)

    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=500))
    def test_randomBytes(self, data: bytes) -> None:
        self.assertStateOrError(data)

    def test_savedFileLoads(self) -> None:
        self.assertStateOrError(tomli_w.dumps(SAVED).encode())
        self.assertEqual(tomllib.loads(tomli_w.dumps(SAVED))["backend_states"], {"mine": "drain"})
