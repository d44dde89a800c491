"""
Whatever the API accepts reads back identical from the state file and from
C{GET /dump} (issue 16): a property-based test sends server definitions
whose free-text fields are any text (escapes, quotes, backslashes, control
characters, non-ASCII) and whose numbers span their whole range, through
C{POST /servers/<name>}; for every definition the API takes, the state file
on disk and the TOML and JSON dumps hold the same definition.
"""

from __future__ import annotations

import os
import re
import tomllib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from balancer.config.fields import MAX_CONNECTIONS, MAX_COUNT
from balancer.config.load import parse_config, server_from_mapping
from balancer.config.schema import ServerConfig
from balancer.state import StateFile
from tests.support.reactors import ListeningReactor
from tests.support.root_api import CONFIG, Api

#: Text as an operator may type it: anything but NUL and surrogates (which JSON bodies cannot carry as UTF-8).
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
#: What C{probe_send} may hold besides: NUL too (a binary probe).
TEXT_WITH_NUL = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@st.composite
def discoveries(draw: st.DrawFn) -> dict[str, Any]:
    """A static list with numbers over their whole range, or a plaintext discovery with a pattern of any text."""
    if draw(st.booleans()):
        weight = draw(st.integers(1, MAX_COUNT))
        priority = draw(st.integers(1, MAX_COUNT))
        limit = draw(st.integers(0, MAX_CONNECTIONS))
        return {"kind": "static",
                "static_list": [f"127.0.0.1:9001 weight={weight} priority={priority} max_connections={limit}"]}
    return {
        "kind": "plaintext",
        "plaintext_endpoint": "http://127.0.0.1:1/" + re.sub(r"[^A-Za-z0-9._~-]", "", draw(TEXT)),
        "plaintext_regex_pattern": re.escape(draw(TEXT)) + r"(?P<host>\S+):(?P<port>\d+)",
    }


@st.composite
def definitions(draw: st.DrawFn) -> dict[str, Any]:
    """A valid server definition with every kind of free text and number the schema has."""
    return {
        "bind": "127.0.0.1:0",
        "max_connections": draw(st.integers(0, MAX_CONNECTIONS)),
        "client_idle_timeout": draw(st.sampled_from(["0", "1ms", "90s", "1h2m3s", "8760h"])),
        "discovery": draw(discoveries()),
        "healthcheck": {
            "kind": "probe",
            "interval": "1s",
            "probe_send": draw(TEXT_WITH_NUL),
            "probe_recv": draw(TEXT) or "x",
            "probe_recv_len": draw(st.integers(0, 1 << 20)),
            "fails": draw(st.integers(1, 100)),
            "passes": draw(st.integers(1, 100)),
        },
    }


def as_server(name: str, definition: object, test: SynchronousTestCase) -> ServerConfig:
    """C{definition} read as a server of L{CONFIG}: the value every reader of it must agree on."""
    return server_from_mapping(name, definition, "test", test.base)


class RoundTripTests(SynchronousTestCase):
    """POST a definition; the state file and both dumps give it back."""

    def setUp(self) -> None:
        self.path = os.path.join(os.path.abspath(self.mktemp()), "state.toml")
        os.makedirs(os.path.dirname(self.path))
        config = CONFIG.format(api="", extra=f'[state]\npath = "{self.path}"\n')
        self.base = parse_config(config.encode(), "test.toml")
        self.api = Api(self.base, ListeningReactor())
        self.count = 0

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(definitions())
    def test_acceptedDefinitionsReadBackIdentical(self, definition: dict[str, Any]) -> None:
        self.count += 1
        name = f"s{self.count}"
        response, body = self.api.call(self, "POST", f"/servers/{name}", json=definition)
        self.assertEqual(response.code, 200, body)
        sent = as_server(name, definition, self)
        saved = StateFile(self.path).load().servers[name]
        self.assertEqual(as_server(name, saved, self), sent, "the state file")
        _, toml_dump = self.api.call(self, "GET", "/dump?format=toml")
        self.assertEqual(parse_config(toml_dump, "dump.toml").servers[name], sent, "the TOML dump")
        _, json_dump = self.api.call(self, "GET", "/dump?format=json")
        self.assertEqual(parse_config(json_dump, "dump.json", as_json=True).servers[name], sent, "the JSON dump")
        self.assertEqual(tomllib.loads(toml_dump.decode("utf-8"))["servers"][name]["healthcheck"].get("probe_send", ""),
                         definition["healthcheck"]["probe_send"])
